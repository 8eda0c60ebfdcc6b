"""The causal-LM quality table: distillation against cross-entropy alone, the divergences and
the top-k sizes, at equal student steps, through the real CLI.

Each row is one ``python -m distillkit experiment=smollm2_kd <overrides>`` run (one at a time;
rows already run in ``--out`` are read again, not rerun). Prints a markdown table of the
student's held-out perplexity, top-1 agreement with the teacher and KL to it, the gain over
cross-entropy alone (``ppl(ce) - ppl``), each top-k row's share of dense KD's gain, the top-k
entry's bytes per token, and the run's seconds (wall, and the distil stage alone).

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
# name -> overrides on top of the experiment (which reads the teacher's top-32 targets)
ROWS = {
    "ce": ["loss=causal_ce"],
    "k32": [],
    "dense": ["trainer.teacher_topk=0"],
    "k8": ["trainer.teacher_topk=8"],
    "k128": ["trainer.teacher_topk=128"],
    "jsd": ["loss.divergence=jsd"],
    "rkl": ["loss.divergence=rkl"],
    "tvd": ["loss.divergence=tvd"],
    "skl": ["loss.divergence=skl"],
}
TOPK_ROWS = ("k8", "k32", "k128")


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


def table(results: dict[str, dict], extra: list[str]) -> str:
    ce = results.get("ce")
    dense = results.get("dense")
    ce_ppl = ce["metrics"]["student"]["perplexity"] if ce else None
    gain_dense = (ce_ppl - dense["metrics"]["student"]["perplexity"]) if ce and dense else 0.0
    lines = ["| row | overrides | student ppl | agreement | KL | gain over CE | share of dense "
             "gain | B/token | distil s | wall s |", "|" + "---|" * 10]
    for name, r in results.items():
        m = r["metrics"]
        s = m["student"]
        gain = ce_ppl - s["perplexity"] if ce_ppl is not None else None
        share = (gain / gain_dense if name in TOPK_ROWS and gain is not None and gain_dense > 0
                 else None)
        topk = m.get("teacher_topk") or {}
        cells = [name, " ".join(ROWS[name] + extra) or "(none)", f"{s['perplexity']:.3f}",
                 f"{s['agreement']:.4f}", f"{s['kl']:.4f}",
                 "" if gain is None or name == "ce" else f"{gain:+.3f}",
                 "" if share is None else f"{share:.1%}",
                 f"{topk['bytes_per_token']:.0f}" if topk.get("bytes_per_token") else
                 ("98304 (not stored)" if name != "ce" else ""),
                 f"{m['train']['seconds']:.0f}", "" if r["wall"] is None else f"{r['wall']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(results.values()))["metrics"]
    lines += ["", f"Teacher perplexity {first['teacher']['perplexity']:.3f} on "
                  f"{first['eval_split']} ({first['student']['tokens']} tokens)."]
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
