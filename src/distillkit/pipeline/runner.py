"""Runs a list of stages: every ``prepare`` first, then every ``run``, recording origins."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

from distillkit.pipeline.context import RunContext
from distillkit.pipeline.stage import Stage

log = logging.getLogger(__name__)


def describe(stages: Sequence[Stage]) -> str:
    """The run graph on one line, e.g. ``build -> teacher -> student -> teacher_targets``."""
    return " -> ".join(stage.name for stage in stages)


def run_stages(stages: Sequence[Stage], ctx: RunContext,
               around: Callable[[Stage], AbstractContextManager] | None = None) -> RunContext:
    """Executes ``stages`` on ``ctx``.

    Every stage's ``prepare`` runs before the first ``run`` (a stage whose checks need what an
    earlier stage builds does them at the start of its ``run``, before its own work). Each
    stage's origin lands in ``ctx.origins`` under its name, and its wall time in
    ``ctx.stage_seconds``. ``around(stage)`` gives a context each stage's ``run`` runs in (the
    run uses it to run the teacher stages on rank 0 first in a data-parallel run).

    Returns:
        ``ctx``, as the last stage left it.
    """
    log.info("run graph (task=%s, mode=%s): %s", ctx.task.name, ctx.mode, describe(stages))
    for stage in stages:
        stage.prepare(ctx)
    for stage in stages:
        log.info("== stage: %s", stage.name)
        start = time.perf_counter()
        with (around or (lambda _: nullcontext()))(stage):
            origin = stage.run(ctx)
        ctx.stage_seconds[stage.name] = round(time.perf_counter() - start, 3)
        ctx.origins[stage.name] = origin
        log.info("stage %s: %s (%.1fs)", stage.name,
                 origin if isinstance(origin, str) else
                 ", ".join(f"{k} {v}" for k, v in origin.items()) or "-",
                 ctx.stage_seconds[stage.name])
    return ctx
