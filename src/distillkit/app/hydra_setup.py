"""Failures of Hydra's own set-up of a run as one ``error:`` line and exit code 2.

Before the task function runs, Hydra creates the run directory, configures logging
(``hydra.job_logging``), applies ``hydra.job.env_set`` and instantiates ``hydra.callbacks``. A
setting of those that fails (a log file in a directory that does not exist, a callback that
takes other arguments, a run directory that cannot be created) would end with Hydra's
traceback and exit code 1. While :func:`reported` is active it ends like every other user
error instead: one line naming what failed, and exit code 2. Failures after the task started
are left to the task's own handling (:mod:`distillkit.app.cli`) and to Hydra, as before; with
``HYDRA_FULL_ERROR=1`` Hydra reports everything itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import hydra._internal.utils as hydra_utils

log = logging.getLogger("distillkit")
EXIT_CODE = 2
_STATE = {"task_started": False}
FIX = ("fix the hydra setting it names (logging: hydra.job_logging / hydra.hydra_logging, "
       "callbacks: hydra.callbacks, the run directory: hydra.run.dir / hydra.sweep.dir)")


def task_started() -> None:
    """Called by the task function: from now on failures are the task's, not the set-up's."""
    _STATE["task_started"] = True


def describe(exc: BaseException) -> str:
    """One line: the first line of the exception and of each cause, without repeats."""
    parts: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        text = "; ".join(line.rstrip(":") for line in lines[:3]) or type(exc).__name__
        if text not in parts:
            parts.append(text)
        exc = exc.__cause__ or exc.__context__
    return ": ".join(parts[:3])


@contextmanager
def reported() -> Iterator[None]:
    """Reports a failure of Hydra's set-up as one line (see the module docstring)."""
    original: Callable[[Any], Any] = hydra_utils.run_and_report

    def run_and_report(func: Callable[[], Any]) -> Any:
        try:
            return func()
        except Exception as exc:
            failure = exc
            if _STATE["task_started"] or os.environ.get("HYDRA_FULL_ERROR") == "1":
                def again() -> Any:
                    raise failure
                return original(again)  # Hydra's own report, as before
            log.error("error: Hydra could not set up the run: %s; %s", describe(failure), FIX)
            raise SystemExit(EXIT_CODE) from None

    hydra_utils.run_and_report = run_and_report
    try:
        yield
    finally:
        hydra_utils.run_and_report = original
