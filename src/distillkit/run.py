"""The top-level run: one run graph, declared by the task, executed stage by stage.

    build → teacher → student → teacher_targets → distil → evaluate → export   (mode=distil)
    build → teacher → export_logits                                  (mode=export_logits)

``conf/task/<task>.yaml`` names the task object and its pipeline per mode; the stages
(:mod:`distillkit.stages`) are the same for every task, the task
(:mod:`distillkit.tasks`) supplies what differs (data, teacher training, targets, metric).
Only the task and the stages call ``hydra.utils.instantiate``; the engine receives built
objects.

In a data-parallel run (``torchrun``, ``accelerate launch``, submitit tasks: see
:mod:`distillkit.runtime.distributed`) every rank runs this graph: rank 0 runs the build and
teacher stages first (so the teacher is fine-tuned and its outputs computed once, and the
others read the caches), every rank trains and evaluates its share of the data, and rank 0
alone writes into the run directory.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from distillkit.engine import EngineSettings
from distillkit.pipeline import RunContext, run_stages
from distillkit.reporting import provenance
from distillkit.runtime import distributed
from distillkit.runtime.io import write_file, write_json
from distillkit.security.safety import OptIns, check_config, opt_ins
from distillkit.stages import stages_named
from distillkit.stages.distil import KILL_AT_STEP_ENV
from distillkit.tasks import Task

__all__ = ["KILL_AT_STEP_ENV", "build", "engine_settings", "run"]
log = logging.getLogger(__name__)


def engine_settings(trainer_cfg: DictConfig) -> EngineSettings:
    """The loop settings from the ``trainer`` group (optimizer and scheduler left out)."""
    names = {f.name for f in dataclasses.fields(EngineSettings)}
    values = OmegaConf.to_container(trainer_cfg, resolve=True)
    settings = EngineSettings(**{k: v for k, v in values.items() if k in names})
    settings.validate()
    return settings


def context(cfg: DictConfig, out_dir: Path, launch: dict[str, Any] | None = None) -> RunContext:
    """The run's context before its first stage: config, engine settings, ranks, task."""
    dist = distributed.current()
    settings = engine_settings(cfg.trainer)
    settings = dataclasses.replace(settings, device=dist.device_for(settings.device))
    task: Task = instantiate(cfg.task, _convert_="all")
    return RunContext(cfg=cfg, out_dir=out_dir, settings=settings, dist=dist, task=task,
                      mode=str(cfg.get("mode", "distil")), launch=launch or {})


def run(cfg: DictConfig, out_dir: Path, launch: dict[str, Any] | None = None,
        opted: OptIns | None = None) -> dict[str, Any]:
    """Executes one run and writes its output under ``out_dir``.

    Writes ``resolved_config.yaml``, ``provenance.json``, ``mapping.json``, ``tb/``
    (TensorBoard scalars and an HParams session), ``checkpoints/`` (when enabled),
    ``student/`` (``save_pretrained`` model + tokenizer) and, last, ``metrics.json`` (the run
    record: :mod:`distillkit.reporting.record`).

    Args:
        cfg: the composed run config.
        out_dir: the run directory.
        launch: how Hydra launched the run (``overrides``, ``choices``, ``mode``), recorded
            in ``provenance.json`` and the HParams session.
        opted: the command line's opt-ins (the CLI's, :mod:`distillkit.security.compose_guard`);
            None takes them from ``launch["overrides"]`` and the environment.

    Returns:
        The run record (also written to ``metrics.json``); ``metrics["objective"]["value"]``
        is what a sweeper optimises.

    Raises:
        UnsafeConfigError: before anything is built or written, when the config names code
            outside the allow-list (:mod:`distillkit.security.safety`).
    """
    launch = launch or {}
    # the CLI checked the composed config already; this covers a config handed to run()
    # directly, before anything is built or written
    check_config(cfg, opted if opted is not None else opt_ins(launch.get("overrides", ())))
    ctx = context(cfg, out_dir, launch)
    stages = stages_named(ctx.task.stages_for(ctx.mode))
    out_dir.mkdir(parents=True, exist_ok=True)
    if ctx.dist.is_main:
        resolved = OmegaConf.to_yaml(cfg, resolve=True)
        write_file(out_dir / "resolved_config.yaml", lambda fh: fh.write(resolved.encode()))
        write_json(out_dir / "provenance.json", provenance.collect(ctx.settings.seed, launch))
    if ctx.mode != "distil" and not ctx.dist.is_main:  # one teacher pass; the others wait
        ctx.dist.barrier()
        return {}
    try:
        run_stages(stages, ctx, lambda stage: ctx.dist.main_first()
                   if ctx.mode == "distil" and stage.main_first else nullcontext())
    finally:
        if ctx.writer is not None:
            ctx.writer.close()
    if ctx.mode != "distil":
        ctx.dist.barrier()
    return ctx.metrics


def build(cfg: DictConfig, settings: EngineSettings) -> dict[str, Any]:
    """The run's objects as the distil stage receives them, for benchmarks: data, teacher
    after its stage, student, bound loss, layer mapping, and whether batches carry cached
    teacher logits (runs the build, teacher, student and teacher_targets stages)."""
    ctx = context(cfg, Path("."))
    ctx.settings = settings
    run_stages(stages_named(["build", "teacher", "student", "teacher_targets"]), ctx)
    return {"data": ctx.data, "teacher": ctx.teacher, "student": ctx.student,
            "pairs": ctx.pairs, "loss": ctx.loss, "cached_logits": ctx.cached_logits,
            "logits_sources": ctx.origins.get("teacher_targets"),
            "teacher_features": ctx.details.get("teacher_features")}
