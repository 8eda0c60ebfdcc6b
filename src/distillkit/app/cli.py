"""Command line: ``python -m distillkit [overrides]`` (a Hydra app) and its subcommands.

``distillkit fetch`` (offline assets), ``distillkit report <sweep-dir>`` (sweep summary),
``distillkit reproduce <run-dir>`` (re-run a saved run from its ``.hydra/config.yaml`` and
compare the metrics) and ``distillkit predict <run-dir> <file>`` (the student on new text).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig

from distillkit.app import help as help_text
from distillkit.app.hydra_setup import reported, task_started
from distillkit.app.schemas import register_schemas
from distillkit.errors import DistillkitError
from distillkit.runtime import distributed_hydra  # noqa: F401 - registers ${distillkit.rank0:...}
from distillkit.security.compose_guard import current_opt_ins, guarded, install_sweep_guard

log = logging.getLogger("distillkit")
JOB_NAME = "distillkit"
# The output directory of the last run in this process (``distillkit reproduce`` reads it).
LAST_RUN_DIR: Path | None = None
# Hydra's flag that re-runs a job from its pickled config (unpickling runs code): refused.
RERUN = "--experimental-rerun"


def config_dir() -> str:
    """The built-in config directory: inside the installed package, or the repo's ``conf/``."""
    package = Path(__file__).resolve().parents[1]  # src/distillkit (or the installed package)
    for candidate in (package / "conf", package.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"distillkit's conf/ directory was not found near {package}")


# Every sweep job's config is checked where it is composed: here, or in a joblib worker or a
# SLURM task, which import this module when they unpickle the task function.
install_sweep_guard(config_dir())
help_text.register(Path(config_dir()))


def _user_error(exc: BaseException) -> DistillkitError | None:
    """The DistillkitError behind ``exc`` (Hydra wraps errors raised during instantiate)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DistillkitError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _error_line(exc: BaseException) -> str:
    """One line describing a failed run."""
    user = _user_error(exc)
    if user is not None:
        return str(user)
    if isinstance(exc, InstantiationException):
        return str(exc).replace("\n", " ")
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")


def _sweeper_records_failures(hc: DictConfig) -> bool:
    """Whether the sweeper takes a job's exception as a failed trial and goes on.

    The Optuna sweeper does (with ``max_failure_rate: 1.0``, conf/hparams_search/optuna.yaml)
    and rejects a NaN objective; Hydra's basic sweeper raises after the jobs when any raised,
    which would skip the summary, so a failed job returns NaN there instead.
    """
    return "optuna" in str(hc.sweeper.get("_target_", "")).lower()


def _task(cfg: DictConfig) -> float:
    """One run (or sweep job); returns the objective (``metrics.json`` ``objective.value``;
    NaN for ``mode=export_logits``).

    Inside a multirun a failing job writes ``error.json`` into its directory and returns NaN
    (or raises, for a sweeper that records failed trials itself), so the other jobs still run
    and the summary lists it; a single run exits non-zero.
    """
    global LAST_RUN_DIR
    task_started()  # Hydra's set-up is done: failures from here on are the run's
    from distillkit.reporting.sweep import clear_failure, record_failure
    from distillkit.run import run  # heavy imports only once the config composed
    from distillkit.runtime.distributed_hydra import prepare_job

    main_rank = prepare_job().is_main  # a data-parallel run: rank 0 alone writes files
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    LAST_RUN_DIR = out_dir
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = list(hc.overrides.task)
    launch = {"mode": hc.mode.name, "overrides": overrides,
              "choices": {k: v for k, v in hc.runtime.choices.items()
                          if not k.startswith("hydra")}}
    if main_rank:
        clear_failure(out_dir)
    try:
        metrics = run(cfg, out_dir, launch, current_opt_ins())
    except KeyboardInterrupt:
        log.error("interrupted: run stopped; what was written so far stays in %s "
                  "(no metrics.json means the run did not finish)", out_dir)
        sys.exit(130)
    except Exception as exc:
        line = _error_line(exc)
        if main_rank:
            record_failure(out_dir, line, exc, overrides)
        expected = _user_error(exc) is not None or isinstance(exc, InstantiationException)
        if multirun:
            log.error("error: sweep job #%s failed: %s (%s); the sweep goes on", hc.job.num,
                      line, out_dir / "error.json", exc_info=None if expected else exc)
            if _sweeper_records_failures(hc):
                raise  # the sweeper marks the trial failed and goes on
            return float("nan")  # Hydra's basic sweeper would stop the sweep on an exception
        if not expected:
            raise
        log.error("error: %s", line)
        user = _user_error(exc)
        sys.exit(user.exit_code if user is not None else 2)
    # mode=export_logits distils nothing, so it has no objective
    return float(metrics.get("objective", {}).get("value", float("nan")))


def _sweep_failures() -> int:
    """Exit code after a multirun: 2 when a job failed (the summary lists it), else 0."""
    from distillkit.reporting import sweep

    summary = sweep.LAST_SUMMARY
    if not summary or not summary["failed"]:
        return 0
    first = summary["failed"][0]
    log.error("error: %d of %d sweep jobs failed (first: %s: %s); the others finished; see %s",
              len(summary["failed"]), summary["jobs"], first.name, first.error,
              summary["files"][1])
    return 2


def _app(argv: list[str]) -> None:
    """Runs the Hydra app with ``argv`` as its command line.

    A config that does not compose, or names code outside the allow-list
    (:mod:`distillkit.security.safety`), ends it with one ``error:`` line and exit code 2 before Hydra
    creates anything (:mod:`distillkit.security.compose_guard`).
    """
    if any(a in ("--config-path", "-cp") or a.startswith("--config-path=") for a in argv) \
            and not any(a.startswith("hydra.job.name=") for a in argv):
        # a saved run's .hydra/config.yaml carries no hydra settings: keep the log name
        argv = [*argv, f"hydra.job.name={JOB_NAME}"]
    if any(a == RERUN or a.startswith(RERUN + "=") for a in argv):
        log.error("error: %s loads a pickle (config.pickle), which can run any code; re-run a "
                  "saved run with: distillkit reproduce <run dir>", RERUN)
        raise SystemExit(2)
    register_schemas()
    sys.argv = [sys.argv[0], *argv]
    # every composed config is checked before Hydra uses it; a failure of Hydra's own set-up
    # (logging, callbacks, run directory) is one error line like any other
    with guarded(argv, config_dir()), reported():
        hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")(_task)()


def main() -> None:
    """Console entry point."""
    command = sys.argv[1] if len(sys.argv) > 1 else None
    if command == "fetch":
        from distillkit.runtime.assets import main as fetch_main

        sys.exit(fetch_main(sys.argv[1:]))
    if command == "report":
        from distillkit.reporting.report import main as report_main

        sys.exit(report_main(sys.argv[2:]))
    if command == "predict":
        from distillkit.app.predict import main as predict_main

        sys.exit(predict_main(sys.argv[2:]))
    if command == "reproduce":
        from distillkit.app.reproduce import main as reproduce_main

        sys.exit(reproduce_main(sys.argv[2:], _app, lambda: LAST_RUN_DIR))
    from distillkit.runtime import distributed

    try:
        _app(sys.argv[1:])
    finally:
        distributed.shutdown()  # leaves the process group of a data-parallel run, if any
    sys.exit(_sweep_failures())
