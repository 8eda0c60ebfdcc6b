"""The causal-LM quality table: distillation against cross-entropy alone, the divergences and
the top-k sizes, at equal student steps, through the real CLI.

Each row is one ``python -m distillkit experiment=smollm2_kd <overrides>`` run (one at a time;
rows already run in ``--out`` are read again, not rerun). Prints a markdown table of the
student's held-out perplexity, top-1 agreement with the teacher and KL to it, the gain over
cross-entropy alone (``ppl(ce) - ppl``), each top-k row's share of dense KD's gain, the top-k
entry's bytes per token, and the run's seconds (wall, and the distil stage alone). The
``k24+s8`` (the experiment's own setting) and ``k32+s8`` rows replace the top-k's rest mass by 8
draws from the teacher's other tokens (``trainer.teacher_topk_samples``); ``k8``, ``k32`` and
``k128`` are plain top-k.

    python bench/causal_quality.py --out outputs/causal_quality            # every row
    python bench/causal_quality.py --out outputs/causal_quality --rows ce,dense,k32
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

EXPERIMENT = "experiment=smollm2_kd"
PLAIN_32 = ["trainer.teacher_topk=32", "trainer.teacher_topk_samples=0"]
# name -> overrides on top of the experiment (which reads the teacher's top-24 targets plus 8
# sampled tail slots: 32 slots per token)
ROWS = {
    "ce": ["loss=causal_ce"],
    "k24+s8": [],
    "dense": ["trainer.teacher_topk=0"],
    "k8": ["trainer.teacher_topk=8", "trainer.teacher_topk_samples=0"],
    "k32": PLAIN_32,
    "k128": ["trainer.teacher_topk=128", "trainer.teacher_topk_samples=0"],
    "k32+s8": ["trainer.teacher_topk=32"],
    # the other divergences read plain top-32 targets (a sampled tail is for forward KL only)
    "jsd": [*PLAIN_32, "loss.divergence=jsd"],
    "rkl": [*PLAIN_32, "loss.divergence=rkl"],
    "tvd": [*PLAIN_32, "loss.divergence=tvd"],
    "skl": [*PLAIN_32, "loss.divergence=skl"],
    "alpha0.2": ["loss.alpha=0.2"],
}
TOPK_ROWS = ("k8", "k32", "k128", "k24+s8", "k32+s8")


def run(name: str, overrides: list[str], out: Path, extra: list[str]) -> dict:
    """Runs one row (unless its metrics exist) and returns its metrics and seconds."""
    run_dir = out / name
    metrics_path = run_dir / "metrics.json"
    seconds_path = run_dir / "wall_seconds.txt"
    if not metrics_path.exists():
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "distillkit", EXPERIMENT, *overrides, *extra,
               "trainer.progress=false", f"hydra.run.dir={run_dir}"]
        with open(out / f"{name}.log", "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
        seconds_path.write_text(f"{time.perf_counter() - start:.1f}\n")
    metrics = json.loads(metrics_path.read_text())
    wall = float(seconds_path.read_text()) if seconds_path.exists() else None
    return {"metrics": metrics, "wall": wall}


def _val(metrics: dict) -> float | None:
    """The validation perplexity at the last evaluation during training."""
    evals = metrics["train"]["evals"]
    return -evals[-1]["neg_perplexity"] if evals else None


def _share(gain: float | None, dense: float | None) -> str:
    return "" if gain is None or not dense or dense <= 0 else f"{gain / dense:.1%}"


def table(results: dict[str, dict], extra: list[str]) -> str:
    """The markdown table; gains are against the ``ce`` row, shares against ``dense``."""
    def value(name: str, get) -> float | None:
        return get(results[name]["metrics"]) if name in results else None

    ppl = lambda m: m["student"]["perplexity"]  # noqa: E731
    kl = lambda m: m["student"]["kl"]  # noqa: E731
    ce_ppl, ce_val, ce_kl = value("ce", ppl), value("ce", _val), value("ce", kl)
    dense_gain = {k: None if c is None or value("dense", f) is None else c - value("dense", f)
                  for k, c, f in (("ppl", ce_ppl, ppl), ("val", ce_val, _val),
                                  ("kl", ce_kl, kl))}
    lines = ["| row | overrides | test ppl | val ppl | agreement | KL | test ppl gain over CE | "
             "val ppl gain over CE | test ppl gain: share of dense | KL gain: share of dense | "
             "B/token | distil s | wall s |",
             "|" + "---|" * 13]
    for name, r in results.items():
        m = r["metrics"]
        s = m["student"]
        gains = {"ppl": None if ce_ppl is None else ce_ppl - s["perplexity"],
                 "val": None if ce_val is None or _val(m) is None else ce_val - _val(m),
                 "kl": None if ce_kl is None else ce_kl - s["kl"]}
        topk = m.get("teacher_topk") or {}
        own = name == "ce"
        cells = [name, " ".join(ROWS[name] + extra) or "(none)", f"{s['perplexity']:.3f}",
                 "" if _val(m) is None else f"{_val(m):.3f}",
                 f"{s['agreement']:.4f}", f"{s['kl']:.4f}",
                 "" if own or gains["ppl"] is None else f"{gains['ppl']:+.3f}",
                 "" if own or gains["val"] is None else f"{gains['val']:+.3f}",
                 "" if own or name not in TOPK_ROWS else _share(gains["ppl"], dense_gain["ppl"]),
                 "" if own or name not in TOPK_ROWS else _share(gains["kl"], dense_gain["kl"]),
                 f"{topk['bytes_per_token']:.0f}" if topk.get("bytes_per_token") else
                 ("" if own else "98304 (dense, not stored)"),
                 f"{m['train']['seconds']:.0f}", "" if r["wall"] is None else f"{r['wall']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(results.values()))["metrics"]
    lines += ["", f"Teacher perplexity {first['teacher']['perplexity']:.3f} on "
                  f"{first['eval_split']} ({first['student']['tokens']} tokens)."]
    tuned = first.get("teacher_finetune")
    if tuned:
        lines[-1] += (f" The teacher was fine-tuned on the train split (key {tuned['key']}, "
                      f"{tuned['train_tokens']} learnt tokens, {tuned['seconds']:.0f} s): "
                      f"validation perplexity {tuned['eval_as_given']['perplexity']:.3f} as "
                      f"given, {tuned['eval']['perplexity']:.3f} fine-tuned.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/causal_quality"))
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows")
    parser.add_argument("overrides", nargs="*", help="more overrides for every row")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; pick from {', '.join(ROWS)}")
    results = {n: run(n, ROWS[n], args.out, args.overrides) for n in names}
    sys.stdout.write(table(results, args.overrides) + "\n")


if __name__ == "__main__":
    main()
