"""Sweeps that survive failing jobs and summarise themselves.

* :func:`record_failure` / :func:`clear_failure`: a job that fails inside a multirun writes
  ``error.json`` (its error line) into its directory instead of stopping the sweep;
* :class:`SweepSummary`: a Hydra callback (``hydra.callbacks.sweep_summary`` in
  ``conf/config.yaml``) that writes ``summary.csv``, ``summary.md`` and ``summary.png`` into
  the sweep directory when the multirun ends (see :mod:`distillkit.reporting.report`).
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from distillkit.reporting.report import ERROR_FILE
from distillkit.runtime.io import write_json

log = logging.getLogger(__name__)

# The last summary written in this process (the CLI exits non-zero when a job failed).
LAST_SUMMARY: dict[str, Any] | None = None


def clear_failure(job_dir: Path) -> None:
    """Removes a stale ``error.json`` (a job that is run again)."""
    (job_dir / ERROR_FILE).unlink(missing_ok=True)


def record_failure(job_dir: Path, error_line: str, exc: BaseException,
                   overrides: list[str]) -> None:
    """Writes the failed job's ``error.json``: its error line, type, overrides and traceback."""
    write_json(job_dir / ERROR_FILE, {
        "error": error_line,
        "type": type(exc).__name__,
        "overrides": list(overrides),
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "traceback": "".join(traceback.format_exception(exc)),
    })


class SweepSummary(Callback):
    """Writes the sweep summary into ``hydra.sweep.dir`` at the end of every multirun."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Summarises the finished sweep (a failure to summarise never fails the sweep)."""
        global LAST_SUMMARY
        from distillkit.reporting.report import write_report
        from distillkit.runtime import distributed

        if not distributed.current().is_main:  # a torchrun sweep: rank 0 summarises
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            LAST_SUMMARY = write_report(sweep_dir)
        except Exception as exc:  # the jobs' own output is what matters; keep it and say so
            log.error("could not write the sweep summary in %s: %s; run `distillkit report "
                      "%s` to retry", sweep_dir, exc, sweep_dir)
            LAST_SUMMARY = None
