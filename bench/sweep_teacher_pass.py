"""Teacher work in a sweep: is the teacher fine-tuned and run for its logits once per sweep?

Runs the README's 3x3 logit-KD grid through the real command line,

    python -m distillkit -m loss.temperature=1,4,8 loss.alpha=0.2,0.5,0.8 [overrides]

into one sweep directory, then reads every job's ``metrics.json`` ``stages`` (where its teacher
and teacher logits came from: fine-tuned / computed, or the cache) and its wall time from its
``distillkit.log`` (first to last timestamp), and prints: teacher fine-tunes, teacher logit
passes (target: exactly 1 on a fresh cache) and the first job's time against the others'.

    python bench/sweep_teacher_pass.py --fresh-cache teacher=tiny student=tiny data=tiny \\
        trainer=debug                                    # tiny models (about a minute)
    python bench/sweep_teacher_pass.py --fresh-cache trainer.max_steps=50    # the real teacher
    python bench/sweep_teacher_pass.py trainer.max_steps=50   # the user's (warm) cache
    python bench/sweep_teacher_pass.py --analyze outputs/multirun/<date>/<time>

``--fresh-cache`` points ``DISTILLKIT_CACHE`` at a new temporary directory, so the first job
fine-tunes the teacher and computes its logits and the others should read both from it; the
downloaded assets (``assets/``: teacher weights, SNLI) are linked in from the user's cache, so
nothing is fetched again. Without it the sweep uses the user's cache, where earlier runs may
already hold the teacher and its logits (then 0 fine-tunes and 0 logit passes are right).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from distillkit.reporting.report import collect
from distillkit.runtime.assets import CACHE_ENV, cache_root

GRID = ["loss.temperature=1,4,8", "loss.alpha=0.2,0.5,0.8"]
LOG_NAME = "distillkit.log"
_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
# log lines of the teacher stage and the teacher-outputs stage (for jobs without metrics.json)
_TEACHER = {"fine-tuned teacher eval accuracy": "fine-tuned",
            "reusing fine-tuned teacher from cache": "cache"}
_LOGITS = re.compile(r"teacher logits for '([^']+)' .*(computed in|read from cache)")


def fresh_cache() -> Path:
    """A new, empty cache directory with the user's downloaded assets linked in."""
    root = Path(tempfile.mkdtemp(prefix="distillkit-cache-"))
    assets = cache_root() / "assets"
    if assets.is_dir():
        (root / "assets").symlink_to(assets.resolve(), target_is_directory=True)
    return root


def run_sweep(sweep_dir: Path, overrides: list[str], cache: Path, quiet: bool) -> dict:
    """Runs the grid through ``python -m distillkit -m``; returns command, exit code, seconds."""
    command = [sys.executable, "-m", "distillkit", "-m", *GRID, *overrides,
               f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, CACHE_ENV: str(cache)}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if quiet:
        with open(sweep_dir / "cli.log", "w") as out:
            code = subprocess.call(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    else:
        code = subprocess.call(command, env=env)
    shown = ["python", *command[1:]]
    return {"command": " ".join(shown), "exit_code": code,
            "seconds": round(time.perf_counter() - start, 1)}


def _log_facts(log_path: Path) -> dict[str, Any]:
    """First and last timestamp of a job log, and the teacher work its lines report."""
    stamps: list[datetime] = []
    teacher, logits = None, {}
    if log_path.is_file():
        for line in log_path.read_text(errors="replace").splitlines():
            match = _STAMP.match(line)
            if match:
                stamps.append(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f"))
            teacher = next((v for k, v in _TEACHER.items() if k in line), teacher)
            found = _LOGITS.search(line)
            if found:
                logits[found.group(1)] = "computed" if found.group(2) == "computed in" else "cache"
    return {"start": stamps[0] if stamps else None, "end": stamps[-1] if stamps else None,
            "teacher": teacher, "logits": logits}


def analyze(sweep_dir: Path) -> dict[str, Any]:
    """Teacher work and job times of every job in ``sweep_dir`` (ordered by start time)."""
    jobs = []
    for job in collect(sweep_dir):
        facts = _log_facts(sweep_dir / job.name / LOG_NAME)
        # metrics.json's stages; a job without one (failed, unfinished): what its log says
        stages = job.stages or {}
        teacher = stages.get("teacher") or facts["teacher"] or "unknown"
        logits = (stages.get("teacher_targets") or stages.get("teacher_logits") or facts["logits"]
                  or "unknown")
        computed = (sorted(k for k, v in logits.items() if v == "computed")
                    if isinstance(logits, dict) else [])
        seconds = ((facts["end"] - facts["start"]).total_seconds()
                   if facts["start"] and facts["end"] else None)
        jobs.append({
            "job": job.name, "status": job.status,
            "swept": {k: job.overrides.get(k) for k in ("loss.temperature", "loss.alpha")},
            "teacher": teacher, "teacher_logits": logits,
            "logits_computed": computed, "seconds": seconds,
            "started": facts["start"].isoformat(sep=" ") if facts["start"] else None,
        })
    jobs.sort(key=lambda j: (j["started"] is None, j["started"] or "", j["job"]))
    timed = [j["seconds"] for j in jobs if j["seconds"] is not None]
    others = [j["seconds"] for j in jobs[1:] if j["seconds"] is not None]
    first = jobs[0]["seconds"] if jobs else None
    return {
        "sweep_dir": str(sweep_dir), "jobs": jobs,
        "finished": sum(j["status"] == "ok" for j in jobs),
        "failed": sum(j["status"] == "failed" for j in jobs),
        "teacher_finetunes": sum(j["teacher"] == "fine-tuned" for j in jobs),
        "teacher_from_cache": sum(j["teacher"] == "cache" for j in jobs),
        "logit_pass_jobs": sum(bool(j["logits_computed"]) for j in jobs),
        "logit_passes": sum(len(j["logits_computed"]) for j in jobs),
        "first_job_seconds": first,
        "other_jobs_seconds": {
            "mean": statistics.mean(others) if others else None,
            "min": min(others) if others else None, "max": max(others) if others else None,
            "count": len(others)},
        "total_job_seconds": sum(timed) if timed else None,
    }


def _fmt(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.1f} s"


def report(result: dict[str, Any], fresh: bool | None) -> str:
    """The printed report; ``fresh``: whether the sweep ran on a fresh cache (None: unknown)."""
    jobs = result["jobs"]
    lines = [f"sweep {result['sweep_dir']}: {len(jobs)} job(s), {result['finished']} finished, "
             f"{result['failed']} failed"]
    if "run" in result:
        run = result["run"]
        lines += [f"command: {run['command']}",
                  f"cache: {result['cache']} ({'fresh' if fresh else 'the user cache'})",
                  f"multirun wall time: {run['seconds']:.1f} s (exit code {run['exit_code']})"]
    lines += ["", f"{'#':>2}  {'T':>4} {'alpha':>5}  {'status':8} {'teacher':11} "
              f"{'teacher logits':24} {'job time':>9}"]
    for i, j in enumerate(jobs, 1):
        logits = j["teacher_logits"]
        logits = logits if isinstance(logits, str) else ", ".join(
            f"{k} {v}" for k, v in sorted(logits.items()))
        lines.append(f"{i:>2}  {j['swept']['loss.temperature'] or '?':>4} "
                     f"{j['swept']['loss.alpha'] or '?':>5}  {j['status']:8} "
                     f"{j['teacher']:11} {logits:24} {_fmt(j['seconds']):>9}")
    passes = result["logit_pass_jobs"]
    if passes == 1:
        target = "met"
    elif passes == 0 and not fresh:
        target = "not measurable, the cache already held the logits (use --fresh-cache)"
    else:
        target = "NOT met"
    finetune_note = {True: "; 1 expected on a fresh cache when the teacher needs fine-tuning",
                     False: "; 0 when the cache already held the teacher"}.get(fresh, "")
    splits = sorted({s for j in jobs for s in j["logits_computed"]})
    other = result["other_jobs_seconds"]
    lines += [
        "",
        f"teacher fine-tunes: {result['teacher_finetunes']} "
        f"(reused from the cache in {result['teacher_from_cache']} job(s){finetune_note})",
        f"teacher logit passes: {passes} job(s) computed teacher logits"
        f"{' (' + ', '.join(splits) + ')' if splits else ''} (target exactly 1: {target})",
    ]
    if result["first_job_seconds"] is not None and other["mean"] is not None:
        lines.append(
            f"job time: first job {_fmt(result['first_job_seconds'])}, the other "
            f"{other['count']}: mean {_fmt(other['mean'])} (min {_fmt(other['min'])}, "
            f"max {_fmt(other['max'])}); first/others {result['first_job_seconds'] / other['mean']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs (or, with ``--analyze``, only reads) the sweep and prints the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("overrides", nargs="*",
                        help="extra Hydra overrides for every job, e.g. trainer.max_steps=50")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--fresh-cache", action="store_true",
                       help="run on a new temporary DISTILLKIT_CACHE (assets linked in)")
    cache.add_argument("--cache", type=Path,
                       help="run on this DISTILLKIT_CACHE (default: the user's cache)")
    parser.add_argument("--keep-cache", action="store_true",
                        help="keep the --fresh-cache directory afterwards")
    parser.add_argument("--sweep-dir", type=Path,
                        help="default: outputs/bench/sweep_teacher_pass/<date>_<time>")
    parser.add_argument("--analyze", type=Path, metavar="SWEEP_DIR",
                        help="only read an existing sweep directory")
    parser.add_argument("--quiet", action="store_true",
                        help="the CLI's output goes to <sweep-dir>/cli.log")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)

    if args.analyze is not None:
        result = analyze(args.analyze)
        fresh = None
    else:
        sweep_dir = args.sweep_dir or Path("outputs/bench/sweep_teacher_pass") / \
            time.strftime("%Y-%m-%d_%H-%M-%S")
        fresh = args.fresh_cache
        cache_dir = fresh_cache() if fresh else (args.cache or cache_root())
        try:
            run = run_sweep(sweep_dir.resolve(), args.overrides, cache_dir, args.quiet)
            result = analyze(sweep_dir)
        finally:
            if fresh and not args.keep_cache:
                shutil.rmtree(cache_dir, ignore_errors=True)  # the assets link, not its target
        result.update(run=run, cache=str(cache_dir), fresh_cache=fresh)
    print(report(result, fresh))  # noqa: T201 - the benchmark's report
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")  # noqa: T201
    return 0 if result["jobs"] else 1


if __name__ == "__main__":
    sys.exit(main())
