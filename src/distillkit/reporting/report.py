"""Sweep summaries: one table (csv + markdown) and one plot over every job of a sweep directory.

A sweep directory (``outputs/multirun/<date>/<time>/``) holds one subdirectory per job, named by
its overrides. :func:`write_report` reads each job's ``.hydra/overrides.yaml``, ``metrics.json``
(finished) or ``error.json`` (failed) and writes into the sweep directory:

* ``summary.csv``: every job, every override key, the metrics, status and error line;
* ``summary.md``: the same, sorted best first, swept keys only (fixed ones listed above it),
  plus where the teacher came from in each job and the failed jobs' error lines;
* ``summary.png``: student accuracy over the swept keys (a heatmap over temperature x alpha,
  see :mod:`distillkit.reporting.plots`).

It runs at the end of every multirun (:class:`distillkit.reporting.sweep.SweepSummary`) and as
``distillkit report <sweep-dir>`` at any time, also while the sweep is still running.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from distillkit.errors import DistillkitError
from distillkit.reporting.jobs import Job, number, split_keys
from distillkit.reporting.record import headline
from distillkit.runtime.io import write_file

log = logging.getLogger(__name__)

ERROR_FILE = "error.json"
# Override keys that say how to run, not what to run (left out of summaries and HParams).
IGNORED_OVERRIDES = frozenset({"resume", "trainer.progress", "trainer.num_workers",
                               "trainer.keep_freed_memory"})
# (column, label in summary.md, getter from metrics.json); {metric}: the run's headline metric
# (metrics.json "metric": accuracy for classification, exact_match/bleu/chrf for seq2seq)
METRICS = (
    ("student_{metric}", "student {short}", lambda m, k: m["student"][k]),
    ("teacher_{metric}", "teacher {short}", lambda m, k: m["teacher"][k]),
    ("retention", "retention", lambda m, k: m["retention"]),
    ("student_loss", "student loss", lambda m, k: m["student"].get("loss")),
    ("train_loss", "train loss", lambda m, k: m["train"]["last_losses"].get("total")),
    ("objective", "objective", lambda m, k: m.get("objective", {}).get("value",
                                                                      m["student"][k])),
    ("steps", "steps", lambda m, k: m["train"]["steps"]),
    ("train_seconds", "train s", lambda m, k: m["train"]["seconds"]),
)
# More columns for one headline metric: a causal LM's agreement with the teacher and KL to it
TASK_METRICS = {
    "neg_perplexity": (
        ("student_agreement", "agreement", lambda m, k: m["student"]["agreement"]),
        ("student_kl", "KL to teacher", lambda m, k: m["student"]["kl"]),
    ),
}
SHORT = {"accuracy": "acc", "exact_match": "EM", "bleu": "BLEU", "chrf": "chrF",
         "neg_perplexity": "-ppl"}


def _getters(metric: str) -> tuple:
    return METRICS + TASK_METRICS.get(metric, ())


def columns(metric: str) -> list[tuple[str, str]]:
    """The metric columns (name, summary.md label) of a sweep whose headline is ``metric``."""
    short = SHORT.get(metric, metric)
    return [(c.format(metric=metric), label.format(short=short))
            for c, label, _ in _getters(metric)]


def sweep_metric(jobs: list[Job]) -> str:
    """The headline metric of a sweep's finished jobs (one task per sweep)."""
    return next((j.metric for j in jobs if j.status == "ok"), "accuracy")


class ReportError(DistillkitError):
    """The sweep directory cannot be summarised (missing, or holds no jobs)."""


def _overrides(job_dir: Path) -> dict[str, str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    out = {}
    for item in OmegaConf.to_container(OmegaConf.load(path)) or []:
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~")
        if not key.startswith("hydra.") and key not in IGNORED_OVERRIDES:
            out[key] = value
    return out


def read_job(job_dir: Path) -> Job | None:
    """The job in ``job_dir`` (None for a directory that is not a job)."""
    metrics_path, error_path = job_dir / "metrics.json", job_dir / ERROR_FILE
    if not ((job_dir / ".hydra").is_dir() or metrics_path.is_file() or error_path.is_file()):
        return None
    job = Job(name=job_dir.name, status="unfinished", overrides=_overrides(job_dir))
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        job.status = "ok"
        job.metric = headline(metrics)
        for column, _, get in _getters(job.metric):
            column = column.format(metric=job.metric)
            try:
                job.values[column] = get(metrics, job.metric)
            except (KeyError, TypeError):
                job.values[column] = None
        job.stages = metrics.get("stages", {})
    elif error_path.is_file():
        job.status = "failed"
        job.error = json.loads(error_path.read_text()).get("error", "unknown error")
    return job


def collect(sweep_dir: Path) -> list[Job]:
    """Every job under ``sweep_dir`` (one level of subdirectories), by directory name."""
    if not sweep_dir.is_dir():
        raise ReportError(f"sweep directory {sweep_dir} does not exist; pass the directory "
                          "that holds the jobs, e.g. outputs/multirun/<date>/<time>")
    jobs = [read_job(p) for p in sorted(sweep_dir.iterdir()) if p.is_dir()]
    return [j for j in jobs if j is not None]


def ranked(jobs: list[Job]) -> list[Job]:
    """Finished jobs best objective first, then unfinished, then failed."""
    def key(job: Job):
        order = {"ok": 0, "unfinished": 1, "failed": 2}[job.status]
        value = job.values.get("objective")
        value = value if isinstance(value, int | float) and math.isfinite(value) else -math.inf
        return order, -value, job.name
    return sorted(jobs, key=key)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def _short(value: str) -> str:
    """An override value for the markdown table (long floats from a search cut to 4 digits)."""
    parsed = number(value)
    if parsed is None or len(value) <= 8:
        return value
    return f"{parsed:.4g}"


def to_csv(jobs: list[Job]) -> str:
    """Every job with every override key and metric (full precision)."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    metric_columns = [c for c, _ in columns(sweep_metric(jobs))]
    header = ["job", "status", *keys, *metric_columns, "teacher_source", "error"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for job in ranked(jobs):
        writer.writerow([job.name, job.status, *(job.overrides.get(k, "") for k in keys),
                         *("" if job.values.get(c) is None else job.values[c]
                           for c in metric_columns),
                         job.stages.get("teacher", ""), job.error or ""])
    return buf.getvalue()


def _stage_line(jobs: list[Job]) -> str | None:
    """Where the finished jobs' teachers and teacher logits came from (teacher work reuse)."""
    done = [j for j in jobs if j.status == "ok" and j.stages]
    if not done:
        return None
    teacher = Counter(_teacher_origin(j.stages.get("teacher")) for j in done)
    targets = Counter(_targets_origin(j.stages.get("teacher_targets",
                                                   j.stages.get("teacher_logits")))
                      for j in done)

    def say(counts: Counter) -> str:
        return ", ".join(f"{k} in {n} job(s)" for k, n in sorted(counts.items()))
    return f"Teacher: {say(teacher)}. Teacher targets: {say(targets)}."


def _teacher_origin(origin: Any) -> str:
    """One job's teacher stage in words (an ensemble: its members' origins)."""
    words = {"cache": "reused from the cache", "fine-tuned": "fine-tuned",
             "as given": "used as given", "offline": "an offline logits file"}
    if isinstance(origin, dict):
        return "ensemble: " + "/".join(words.get(o, "unknown") for o in origin.values())
    return words.get(origin, "unknown")


def _targets_origin(origin: Any) -> str:
    """One job's teacher-targets stage in words (per split, or one origin)."""
    values = set(origin.values()) if isinstance(origin, dict) else {origin}
    if values & {"skipped", "not used", None}:
        return "not used"
    return ("computed" if "computed" in values else "read from a file" if "file" in values
            else "read from the cache")


def to_markdown(jobs: list[Job], sweep_dir: Path) -> str:
    """The sorted summary table with the fixed keys, teacher reuse and failures."""
    swept, fixed = split_keys(jobs)
    counts = Counter(j.status for j in jobs)
    lines = [f"# Sweep summary: {sweep_dir}", "",
             f"{len(jobs)} job(s): {counts['ok']} finished, {counts['failed']} failed, "
             f"{counts['unfinished']} unfinished (running or killed). Best objective first."]
    if fixed:
        lines += ["", "Same in every job: " + ", ".join(f"`{k}={v}`" for k, v in fixed.items())]
    stage = _stage_line(jobs)
    if stage:
        lines += ["", stage]
    metric_columns = columns(sweep_metric(jobs))
    header = ["#", *swept, *(label for _, label in metric_columns), "status"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, job in enumerate(ranked(jobs), 1):
        cells = [str(rank), *(_short(job.overrides.get(k, "")) for k in swept),
                 *(_fmt(job.values.get(c)) for c, _ in metric_columns),
                 job.status if job.status != "failed" else "**failed**"]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [j for j in jobs if j.status == "failed"]
    if failed:
        lines += ["", "## Failed jobs", ""]
        lines += [f"- `{j.name}`: {j.error}" for j in failed]
    return "\n".join(lines) + "\n"


def write_report(sweep_dir: Path) -> dict[str, Any]:
    """Writes ``summary.csv``, ``summary.md`` and ``summary.png`` into ``sweep_dir``.

    Returns:
        ``{"jobs": N, "ok": N, "failed": [Job, ...], "unfinished": N, "files": [paths]}``.

    Raises:
        ReportError: the directory is missing or holds no job.
    """
    from distillkit.reporting.plots import plot_summary  # matplotlib only when plotting

    sweep_dir = Path(sweep_dir)
    jobs = collect(sweep_dir)
    if not jobs:
        raise ReportError(f"no jobs in {sweep_dir} (no subdirectory with .hydra/, metrics.json "
                          "or error.json); pass a sweep directory, e.g. "
                          "outputs/multirun/<date>/<time>")
    files = [sweep_dir / "summary.csv", sweep_dir / "summary.md", sweep_dir / "summary.png"]
    csv_text, md_text = to_csv(jobs), to_markdown(jobs, sweep_dir)
    write_file(files[0], lambda fh: fh.write(csv_text.encode()))
    write_file(files[1], lambda fh: fh.write(md_text.encode()))
    plot_summary(jobs, files[2], title=sweep_dir.name)
    counts = Counter(j.status for j in jobs)
    log.info("sweep summary (%d jobs: %d finished, %d failed, %d unfinished): %s",
             len(jobs), counts["ok"], counts["failed"], counts["unfinished"],
             ", ".join(str(f) for f in files))
    stage = _stage_line(jobs)
    if stage:
        log.info("%s", stage)
    return {"jobs": len(jobs), "ok": counts["ok"], "unfinished": counts["unfinished"],
            "failed": [j for j in jobs if j.status == "failed"], "files": files,
            "markdown": md_text}


def main(argv: list[str]) -> int:
    """``distillkit report <sweep-dir>``: (re)writes the sweep's summary files."""
    parser = argparse.ArgumentParser(
        prog="distillkit report",
        description="Summarise a sweep directory: summary.csv, summary.md and summary.png "
                    "from its jobs' metrics.json / error.json (also while it runs).")
    parser.add_argument("sweep_dir", type=Path, help="e.g. outputs/multirun/<date>/<time>")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = write_report(args.sweep_dir)
    except DistillkitError as exc:
        log.error("error: %s", exc)
        return exc.exit_code
    sys.stdout.write(summary["markdown"])
    return 0
