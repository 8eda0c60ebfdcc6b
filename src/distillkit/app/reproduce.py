"""``distillkit reproduce <run-dir> [overrides]``: re-run a saved run and check its numbers.

The short form of ``python -m distillkit --config-path <run>/.hydra --config-name config``: it
composes the run's saved ``.hydra/config.yaml`` (the complete job config, so no defaults are
recomposed), starts fresh (``resume=null``) in ``outputs/reproduce/<date>/<time>/`` (or
``hydra.run.dir=...``), warns when the code or library versions differ from the run's
``provenance.json``, and finally compares the new ``metrics.json`` with the saved one:
accuracies and step counts must be equal, losses equal to within 1e-6. Exit code 0 when they
match, 1 when they differ.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distillkit.errors import DistillkitError
from distillkit.reporting import provenance
from distillkit.reporting.record import headline

log = logging.getLogger("distillkit")

LOSS_TOLERANCE = 1e-6
DEFAULT_DIR = "outputs/reproduce/${now:%Y-%m-%d}/${now:%H-%M-%S}"


class ReproduceError(DistillkitError):
    """The run to reproduce is missing its saved config."""


def hydra_args(run_dir: Path, overrides: list[str]) -> list[str]:
    """The Hydra command line that re-runs ``run_dir`` from its ``.hydra/config.yaml``."""
    config = run_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        raise ReproduceError(f"{config} not found: {run_dir} is not a distillkit run directory "
                             "(every run saves .hydra/config.yaml); pass the run's directory, "
                             "e.g. outputs/<date>/<time>")
    args = ["--config-path", str(config.parent.resolve()), "--config-name", "config"]
    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        args.append(f"hydra.run.dir={DEFAULT_DIR}")
    if not any(o.lstrip("+").startswith("resume=") for o in overrides):
        args.append("++resume=null")
    return args + list(overrides)


def _close(a: Any, b: Any, tol: float) -> bool:
    if a is None and b is None:  # e.g. the teacher accuracy of a teacher=offline run
        return True
    return (isinstance(a, int | float) and isinstance(b, int | float)
            and (math.isclose(a, b, rel_tol=0, abs_tol=tol)
                 or (math.isnan(a) and math.isnan(b))))


def compare(original: dict[str, Any], new: dict[str, Any],
            tol: float = LOSS_TOLERANCE) -> list[str]:
    """Differences between two ``metrics.json``: accuracies/steps exact, losses within ``tol``.

    Returns:
        One line per difference (empty when the run was reproduced).
    """
    checks: list[tuple[str, Any, Any, float]] = []
    if original.get("mode") == "export_logits":  # no student: the exported file's summary
        checks = [("export.rows", original["export"]["rows"], new["export"]["rows"], 0.0),
                  ("teacher.accuracy", original["teacher"]["accuracy"],
                   new["teacher"]["accuracy"], 0.0)]
        return [f"{k}: {a} -> {b}" for k, a, b, t in checks if not _close(a, b, t)]
    metric = headline(original)
    for who in ("teacher", "student"):
        for name, value in original[who].items():  # every metric the task reports
            if name != "seconds" and (value is None or isinstance(value, int | float)):
                checks.append((f"{who}.{name}", value, new[who].get(name),
                               tol if name == "loss" else 0.0))
    checks.append(("train.steps", original["train"]["steps"], new["train"]["steps"], 0.0))
    old_losses, new_losses = original["train"]["last_losses"], new["train"]["last_losses"]
    for name in sorted(set(old_losses) | set(new_losses)):
        checks.append((f"train.last_losses.{name}", old_losses.get(name),
                       new_losses.get(name), tol))
    old_evals = original["train"].get("evals", [])
    new_evals = new["train"].get("evals", [])
    if len(old_evals) != len(new_evals):
        return [f"train.evals: {len(old_evals)} evaluations -> {len(new_evals)}"] + [
            f"{k}: {a} -> {b}" for k, a, b, t in checks if not _close(a, b, t)]
    for i, (a, b) in enumerate(zip(old_evals, new_evals, strict=True)):
        checks.append((f"train.evals[{i}].{metric}", a[metric], b.get(metric), 0.0))
        if "loss" in a:
            checks.append((f"train.evals[{i}].loss", a["loss"], b.get("loss"), tol))
    return [f"{k}: {a} -> {b}" for k, a, b, t in checks if not _close(a, b, t)]


def main(argv: list[str], app: Callable[[list[str]], None],
         last_run_dir: Callable[[], Path | None]) -> int:
    """Runs ``distillkit reproduce``; ``app`` runs the Hydra app with a command line."""
    parser = argparse.ArgumentParser(
        prog="distillkit reproduce",
        description="Re-run a saved run from its .hydra/config.yaml and compare the metrics "
                    "(metrics equal, losses within 1e-6).")
    parser.add_argument("run_dir", type=Path, help="the saved run, e.g. outputs/<date>/<time>")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (hydra.run.dir=...)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    try:
        hydra_argv = hydra_args(args.run_dir, args.overrides)
    except DistillkitError as exc:
        log.error("error: %s", exc)
        return exc.exit_code
    saved_prov = args.run_dir / "provenance.json"
    if saved_prov.is_file():
        diffs = provenance.differences(json.loads(saved_prov.read_text()),
                                       {"git": provenance.git_state(),
                                        "versions": provenance.library_versions()})
        for line in diffs:
            log.warning("differs from the saved run: %s", line)
    app(hydra_argv)
    new_dir = last_run_dir()
    original = args.run_dir / "metrics.json"
    if new_dir is None or not (new_dir / "metrics.json").is_file():
        log.error("error: the re-run wrote no metrics.json")
        return 2
    if not original.is_file():
        log.warning("%s has no metrics.json (the saved run did not finish): nothing to compare; "
                    "the re-run is in %s", args.run_dir, new_dir)
        return 0
    diffs = compare(json.loads(original.read_text()),
                    json.loads((new_dir / "metrics.json").read_text()))
    if diffs:
        log.error("error: the re-run in %s differs from %s: %s", new_dir, args.run_dir,
                  "; ".join(diffs))
        return 1
    log.info("reproduced %s in %s: same metrics and step count, losses within %g",
             args.run_dir, new_dir, LOSS_TOLERANCE)
    return 0
