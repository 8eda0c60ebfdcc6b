"""Training-speed benchmark: distillkit's training paths and TextBrewer, on identical batches.

Models, data and batches are built from the same Hydra config as a run (composed with the
overrides given, through ``distillkit.run.build``: teacher stage, student, bound loss, cached
teacher logits); every case trains a fresh copy of the same student on the same batches, all
in this one process, and its steps are timed after a warm-up.

  (a) student alone (``loss=hard``)
  (b) logit KD, live teacher: the teacher runs every step (the ``trainer.teacher_cache=false``
      path: batches without ``teacher_logits``, the engine given the teacher)
  (c) logit KD from the cache: batches carry the teacher's cached ``teacher_logits`` and the
      engine gets ``teacher=None``, exactly as ``distillkit.run`` does for a logit-only loss
  (d) ``loss=mmd`` online: logit KD + ``hidden_mse`` + ``mmd`` over the uniform mapping
  (e) TextBrewer's ``GeneralDistiller`` on (d)'s teacher, student, matches and batches, as
      shipped: fp32 (it has no bf16 option; its mixed precision is apex fp16 on GPUs), and the
      optimizer a TextBrewer script writes, ``torch.optim.AdamW`` with the run's lr and weight
      decay in torch's default implementation (a per-parameter loop on a CPU)
  (f) the same given everything of the run's that a TextBrewer script could set by hand: the
      run's ``torch.autocast`` and its optimizer as configured (``fused=true``) (skipped in an
      fp32 run, where it would be (e))
  (g) ``loss=mmd`` from the teacher-feature cache: what a run does (batches read the mapped
      layers' cached hidden states and the cached logits, the engine gets ``teacher=None``);
      the features are read from the memory-mapped cache as each batch is handed to the
      engine, inside the timed steps
  (h) (d)'s student alone (``loss=hard``), the baseline of (g)
  (i) (g) with every batch's cached features read before the timer starts: the loss's own
      cost over (h), without the cache reads ((g)/(i) is what the reads add; information)

(a)-(c) share one build and one list of batches (``loss=kd``; (a) trains on them with
``loss=hard``, transfer-set rows included, where their hidden labels weigh nothing), (d)-(i)
another (``loss=mmd``). Targets: (c)/(a) step time <= 1.10; (d)/(e) steps/s >= 1.5; (g)/(h)
step time <= 1.15; (g) steps/s >= 1.5x TextBrewer's at equal precision: (g)/(e) in an fp32 run
(TextBrewer as shipped), (g)/(f) in a bf16 run (TextBrewer given the run's autocast and
optimizer). ``--precision fp32`` on a bf16 CPU measures the fp32 rows there.

    python bench/speed.py                        # tiny models and data (seconds; make bench-tiny)
    python bench/speed.py --real                 # make bench: MiniLM-L6 teacher, SNLI,
                                                 #   copy3 student for (a)-(c), bert4l for (d)-(e)
    python bench/speed.py --real --markdown --json bench/speed.json
    python bench/speed.py --real --cases c,a --precision bf16 trainer.batch_size=64

The real setting reuses the cached fine-tuned teacher and teacher logits (a first run on a
machine computes them: see the README's default run). A precision other than the cached one
(e.g. ``--precision bf16`` on a CPU) is a different teacher cache entry, fine-tuned once.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import transformers
from _common import (
    TINY,
    Setup,
    Timing,
    loss_for,
    machine,
    prepare,
    textbrewer_version,
    train_distillkit,
    without_teacher_logits,
)
from _speed_report import format_markdown, format_text
from _textbrewer import train_textbrewer

from distillkit.engine.settings import EngineSettings, cpu_has_native_bf16
from distillkit.runtime.memory import keep_freed_memory

CASES = {
    "a": "student alone (loss=hard)",
    "b": "logit KD, live teacher every step",
    "c": "logit KD, cached teacher logits",
    "d": "loss=mmd online (KD+hidden_mse+mmd)",
    "e": "TextBrewer GeneralDistiller, as (d)",
    "f": "TextBrewer as (e), run's autocast+optimizer",
    "g": "loss=mmd from the teacher-feature cache",
    "h": "(d)'s student alone (loss=hard)",
    "i": "(g), features read before timing",
}
TARGET_C_OVER_A = "1.10"  # (c)/(a) step time, at most
TARGET_D_OVER_E = "1.50"  # (d)/(e) steps/s, at least
TARGET_G_OVER_H = "1.15"  # (g)/(h) step time, at most
TARGET_G_OVER_TB = "1.50"  # (g) steps/s over TextBrewer's at equal precision, at least
SKIP_E = ('(e) skipped: textbrewer is not installed (pip install -e ".[bench]", i.e. '
          "textbrewer==0.2.1.post1)")


def configs(real: bool, user: list[str]) -> dict[str, list[str]]:
    """The overrides of the (a)-(c) build (``kd``), (a)'s loss (``hard``) and the (d)-(e) build."""
    base = [] if real else list(TINY)
    # bert4l is 312 wide against MiniLM's 384; the tiny student is narrowed to 16 (teacher 32)
    # so that (d)/(e) train the hidden_mse projections on tiny models too
    student = ["student=bert4l"] if real else ["student.hidden_size=16"]
    return {"kd": [*base, "loss=kd", *user], "hard": [*base, "loss=hard", *user],
            "mmd": [*base, *student, "loss=mmd", *user],
            "hard_mmd": [*base, *student, "loss=hard", *user]}


def _case(key: str, timings: list[Timing]) -> dict[str, Any]:
    """One case's results: the median round's step time; the largest memory increase."""
    per_step = sorted(t.seconds_per_step for t in timings)
    median = statistics.median(per_step)
    first = timings[0]
    memory = max(timings, key=lambda t: t.memory.rss_increase_mib or 0.0).memory
    return {"case": key, "name": CASES[key], "s_per_step": median,
            "steps_per_s": 1.0 / median, "tokens_per_s": first.tokens / (median * first.steps),
            "timed_steps": first.steps, "tokens": first.tokens,
            "rounds_s_per_step": [t.seconds_per_step for t in timings],
            "case_seconds": [round(t.total_seconds, 3) for t in timings],
            "memory": memory.as_dict()}


def _build_info(name: str, setup: Setup) -> dict[str, Any]:
    built = setup.built
    return {"group": name, "seconds": round(setup.build_seconds, 2),
            "memory": setup.build_memory.as_dict(),
            "teacher": built["teacher"].name, "teacher_origin": getattr(
                built["teacher"], "origin", "as given"),
            "student": built["student"].name, "cached_logits": built["cached_logits"],
            "teacher_logits": built["logits_sources"] or "not used",
            "pairs": [f"{p.student}-{p.teacher}" for p in built["pairs"]],
            "teacher_features": built["teacher_features"]}


def _rounds(cases: dict[str, Callable[[int, int], Timing]], warmup: int, steps: int,
            rounds: int) -> list[dict[str, Any]]:
    """Runs every case ``rounds`` times, interleaved (a, b, c, a, b, c, ...), so that a load
    change on the machine spreads over the cases instead of landing on one.

    Each case is called as ``train(warmup, steps)``. One-time costs (lazy initialisation,
    allocator growth, kernel caches for new shapes) would land in the first case's time and
    memory, so a throwaway 2-step run of the first case pays them before anything is timed.
    """
    if not cases:
        return []
    log = logging.getLogger("bench")
    next(iter(cases.values()))(0, 1)
    timings: dict[str, list[Timing]] = {key: [] for key in cases}
    for r in range(rounds):
        for key, train in cases.items():
            log.info("round %d/%d: case (%s) %s", r + 1, rounds, key, CASES[key])
            timings[key].append(train(warmup, steps))
    return [_case(key, t) for key, t in timings.items()]


def run_kd_group(setup: Setup, hard_overrides: list[str], wanted: list[str], warmup: int,
                 steps: int, rounds: int) -> list[dict[str, Any]]:
    """Cases (a)-(c) on one build with ``loss=kd`` (and its cached teacher logits); (a)'s loss
    is composed from ``hard_overrides``. Every case trains a fresh copy of the same student."""
    built = setup.built
    student, teacher = built["student"].model, built["teacher"].model
    live = without_teacher_logits(setup.batches)
    if "c" in wanted and not (built["cached_logits"] and "teacher_logits" in setup.batches[0]):
        raise SystemExit("(c) needs the cached teacher logits, which this config does not use "
                         "(trainer.teacher_cache=false in the overrides?)")
    cases = {
        # (a): no teacher; the live batches (teacher_logits dropped)
        "a": lambda w, n: train_distillkit(setup, copy.deepcopy(student), None,
                                           loss_for(hard_overrides, setup), live, w, n),
        # (b): the teacher_cache=false path: no teacher_logits, the engine runs the teacher
        "b": lambda w, n: train_distillkit(setup, copy.deepcopy(student), teacher,
                                           copy.deepcopy(built["loss"]), live, w, n),
        # (c): run.py's cached path: teacher_logits in every batch, teacher=None
        "c": lambda w, n: train_distillkit(setup, copy.deepcopy(student), None,
                                           copy.deepcopy(built["loss"]), setup.batches, w, n),
    }
    return _rounds({k: v for k, v in cases.items() if k in wanted}, warmup, steps, rounds)


def run_mmd_group(setup: Setup, hard_overrides: list[str], wanted: list[str], warmup: int,
                  steps: int, rounds: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Cases (d)-(i) on one build with ``loss=mmd``; (e), (f) skipped without textbrewer."""
    built = setup.built
    student, teacher = built["student"].model, built["teacher"].model
    live = without_teacher_logits(setup.batches)

    def read_ahead() -> list[dict]:
        """(g)'s batches with their features already read (outside the timed steps); read
        again each round rather than kept, so the other cases do not run beside them in
        memory."""
        return [setup.features.add_features(dict(b)) for b in setup.batches]

    if set(wanted) & {"g", "i"} and setup.features is None:
        raise SystemExit("(g) and (i) need the teacher-feature cache, which this config does "
                         "not use (trainer.teacher_cache=false or feature_cache_max_gb too "
                         "small?)")
    cases = {
        "d": lambda w, n: train_distillkit(setup, copy.deepcopy(student), teacher,
                                           copy.deepcopy(built["loss"]), live, w, n),
        "e": lambda w, n: train_textbrewer(setup, copy.deepcopy(student), live, w, n),
        "f": lambda w, n: train_textbrewer(setup, copy.deepcopy(student), live, w, n,
                                           autocast=True),
        "g": lambda w, n: train_distillkit(setup, copy.deepcopy(student), None,
                                           copy.deepcopy(built["loss"]), setup.batches, w, n,
                                           materialise=setup.features.add_features),
        "h": lambda w, n: train_distillkit(setup, copy.deepcopy(student), None,
                                           loss_for(hard_overrides, setup), live, w, n),
        "i": lambda w, n: train_distillkit(setup, copy.deepcopy(student), None,
                                           copy.deepcopy(built["loss"]), read_ahead(), w, n),
    }
    skipped = []
    if set(wanted) & {"e", "f"} and textbrewer_version() is None:
        skipped.append(SKIP_E)
        wanted = [k for k in wanted if k not in "ef"]
    if "f" in wanted and setup.settings.autocast_dtype(setup.settings.resolve_device()) is None:
        skipped.append("(f) skipped: the run has no autocast (fp32), so (f) would be (e)")
        wanted = [k for k in wanted if k != "f"]
    return (_rounds({k: v for k, v in cases.items() if k in wanted}, warmup, steps, rounds),
            skipped)


def memory_setting(settings: EngineSettings) -> str:
    """Applies the run's CPU memory setting (``trainer.keep_freed_memory``) to the whole
    process before the first case, as a run's training loop does, so that every case runs
    under it, TextBrewer's included; says which setting the cases ran under."""
    if settings.resolve_device().type != "cpu":
        return "the device's own allocator (trainer.keep_freed_memory is a CPU setting)"
    if not settings.keep_freed_memory:
        return "glibc's default (trainer.keep_freed_memory=false)"
    if keep_freed_memory():
        return ("glibc keeps freed memory for reuse (trainer.keep_freed_memory, on by default "
                "on a CPU), set before the first case: every case runs under it, TextBrewer's "
                "included")
    return "the C library's default (not glibc, or it refused the setting)"


def ratios(cases: dict[str, dict[str, Any]], fp32: bool) -> dict[str, dict[str, Any]]:
    """The target ratios (None when a case is missing); ``fp32``: the run had no autocast, so
    TextBrewer at equal precision is (e), else (f)."""
    def ratio(num: str, den: str, key: str) -> float | None:
        if num in cases and den in cases:
            return cases[num][key] / cases[den][key]
        return None

    def rounds(num: str, den: str, key: str) -> list[float]:
        """The ratio within each interleaved round (the spread the verdict's medians hide)."""
        if num not in cases or den not in cases:
            return []
        pairs = zip(cases[num]["rounds_s_per_step"], cases[den]["rounds_s_per_step"],
                    strict=True)
        return [n / d if key == "s_per_step" else d / n for n, d in pairs]

    def entry(num: str, den: str, key: str, at_most: bool, target: str) -> dict[str, Any]:
        value = ratio(num, den, key)
        met = None if value is None else (value <= float(target) if at_most
                                          else value >= float(target))
        return {"value": value, "target": f"{'<=' if at_most else '>='} {target}", "met": met,
                "needs": f"{num} and {den}", "rounds": rounds(num, den, key)}

    def info(num: str, den: str, key: str, note: str) -> dict[str, Any]:
        return {"value": ratio(num, den, key), "target": "(information)", "met": None,
                "needs": f"{num} and {den}", "note": note, "rounds": rounds(num, den, key)}
    equal = "e" if fp32 else "f"
    return {
        "c_over_a_step_time": entry("c", "a", "s_per_step", True, TARGET_C_OVER_A),
        "d_over_e_steps_per_s": entry("d", "e", "steps_per_s", False, TARGET_D_OVER_E),
        "g_over_h_step_time": entry("g", "h", "s_per_step", True, TARGET_G_OVER_H),
        f"g_over_{equal}_steps_per_s": entry("g", equal, "steps_per_s", False,
                                             TARGET_G_OVER_TB),
        # for information: TextBrewer given the run's autocast and optimizer (what it leaves to
        # the user's script); the loss's own cost over the student alone, its features already
        # in memory; what reading them from the cache inside the steps adds
        "d_over_f_steps_per_s": info("d", "f", "steps_per_s",
                                     "TextBrewer given the run's autocast and optimizer"),
        "i_over_h_step_time": info("i", "h", "s_per_step",
                                   "the loss's own cost: (g) with its features already read"),
        "g_over_i_step_time": info("g", "i", "s_per_step",
                                   "what reading the features inside the steps adds"),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark; prints the report and returns the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("overrides", nargs="*",
                        help="extra Hydra overrides for every case, e.g. trainer.batch_size=64")
    parser.add_argument("--real", action="store_true",
                        help="MiniLM-L6 teacher and SNLI; copy3 (a-c) and bert4l (d-e) students")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of the cases, interleaved; the median round is reported")
    parser.add_argument("--cases", default="a,b,c,d,e,f,g,h,i",
                        help="comma-separated subset of a-i")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                        help="trainer.precision for every case (default: the config's)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--markdown", action="store_true",
                        help="print a markdown section for bench/RESULTS.md")
    parser.add_argument("-v", "--verbose", action="store_true", help="distillkit's log too")
    args = parser.parse_args(argv)
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(wanted) - set(CASES))
    if unknown or not wanted:
        parser.error(f"--cases: unknown {unknown}; pick from {', '.join(CASES)}")
    if args.steps < 1 or args.warmup < 0 or args.repeat < 1:
        parser.error("--steps and --repeat must be >= 1, --warmup >= 0")
    wanted = sorted(set(wanted))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    if not args.verbose:
        datasets.disable_progress_bars()  # tokenisation bars of every build
        transformers.logging.set_verbosity_error()
    user = [*args.overrides, *([f"trainer.precision={args.precision}"] if args.precision
                               else [])]
    overrides = configs(args.real, user)
    total_steps = args.warmup + args.steps + 1
    cases, builds, skipped, settings, memory = [], [], [], None, None
    kd_cases = [c for c in wanted if c in "abc"]
    if kd_cases:
        setup = prepare(overrides["kd"], total_steps)
        settings = setup.settings
        memory = memory_setting(settings)
        builds.append(_build_info("kd", setup))
        cases += run_kd_group(setup, overrides["hard"], kd_cases, args.warmup, args.steps,
                              args.repeat)
        del setup
        gc.collect()
    mmd_cases = [c for c in wanted if c in "defghi"]
    if mmd_cases and set(mmd_cases) <= {"e", "f"} and textbrewer_version() is None:
        skipped.append(SKIP_E)  # nothing left to build for
    elif mmd_cases:
        setup = prepare(overrides["mmd"], total_steps)
        settings = settings or setup.settings
        memory = memory or memory_setting(setup.settings)
        builds.append(_build_info("mmd", setup))
        out, skip = run_mmd_group(setup, overrides["hard_mmd"], mmd_cases, args.warmup,
                                  args.steps, args.repeat)
        cases += out
        skipped += skip
        del setup
        gc.collect()

    by_key = {c["case"]: c for c in cases}
    device = str(settings.resolve_device()) if settings else "n/a"
    dtype = settings.autocast_dtype(settings.resolve_device()) if settings else None
    result = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "real": args.real,
            "steps": args.steps, "warmup": args.warmup, "repeat": args.repeat,
            "batch_size": settings.batch_size if settings else None,
            "grad_accum_steps": settings.grad_accum_steps if settings else None,
            "device": device,
            "precision": f"{str(dtype).removeprefix('torch.')} autocast" if dtype else "fp32",
            "command": " ".join(["python", *sys.argv]),
            "cpu_bf16": cpu_has_native_bf16(), "memory": memory,
            "overrides": {b["group"]: overrides[b["group"]] for b in builds},
        },
        "builds": builds, "cases": cases, "skipped": skipped,
        "ratios": ratios(by_key, dtype is None),
    }
    report = format_markdown(result) if args.markdown else format_text(result)
    print(report)  # noqa: T201 - the benchmark's report
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")  # noqa: T201
    return result


if __name__ == "__main__":
    main()
