"""Peak memory and time of the token-level KD loss: naive full-vocabulary logits vs chunked.

One forward + backward of the KD term at SmolLM2's sizes (vocabulary 49152, hidden 576) on
random weights (no download): the student's last hidden states ``[batch, seq, 576]`` and LM
head ``[49152, 576]``, the teacher's hidden states and head, every token counted, forward KL
at ``T = 2`` (``T**2`` factor), ``alpha = 1`` (KD alone; ``--alpha`` adds the cross-entropy).

* naive: the whole batch's student and teacher logits in float32, both ``log_softmax``, the
  elementwise KL (``F.kl_div``), its mean, backward through it (what a plain PyTorch KD loss
  does);
* chunked: :func:`distillkit.causal.chunked.token_losses` with the hidden states and heads,
  ``--chunks`` tokens per chunk (the default chunk size is the loss's default).

``--divergences rkl,jsd,tvd,skl,srkl`` adds, for each, its naive form (the same full logits and
the divergence's plain out-of-place formula; ``jsd`` with beta 0.5, ``skl``/``srkl`` with skew
0.1) and its chunked form at the default chunk size.

Each case runs in a fresh subprocess, so its peak is its own: one untimed warm-up step, then
``--steps`` timed steps inside ``_common.PeakMemory`` (peak RSS from the kernel's ``VmHWM``,
reset through ``/proc/self/clear_refs`` after ``gc.collect()`` and ``malloc_trim``; on CUDA,
``torch.cuda.max_memory_allocated``). "Growth" is the peak minus the memory at the start of
the measured steps: the inputs and weights are allocated before, the head's weight gradient
(108 MiB in float32) is allocated inside every step (``set_to_none``) and counted in both.

Usage::

    OMP_NUM_THREADS=1 python bench/token_loss_memory.py --markdown --divergences rkl,jsd,tvd,skl,srkl
    python bench/token_loss_memory.py --device cuda --markdown
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import PeakMemory, machine

from distillkit.causal.chunked import DEFAULT_CHUNK_TOKENS, LMHeadInput, token_losses
from distillkit.causal.losses import DIVERGENCES, divergence_named

TARGET = 0.25


def _inputs(args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.seq)
    scale = args.hidden ** -0.5

    def rand(*size: int, grad: bool = False) -> torch.Tensor:
        return torch.randn(*size, generator=g).to(device).requires_grad_(grad)

    return {
        "h": rand(*shape, args.hidden, grad=True), "w": (rand(args.vocab, args.hidden) * scale
                                                         ).requires_grad_(True),
        "ht": rand(*shape, args.hidden), "wt": rand(args.vocab, args.hidden) * (2 * scale),
        "labels": torch.randint(0, args.vocab, shape, generator=g).to(device),
    }


def _plain(divergence: str, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """The divergence per token as one writes it in plain PyTorch (out of place)."""
    p, q = log_p.exp(), log_q.exp()

    def kl(a, log_a, log_b):
        return (a * (log_a - log_b)).sum(-1)

    if divergence == "rkl":
        return kl(q, log_q, log_p)
    if divergence == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    weight = {"jsd": 0.5, "skl": 0.1, "srkl": 0.9}[divergence]
    log_m = torch.logaddexp(log_p + math.log(weight), log_q + math.log1p(-weight))
    if divergence == "jsd":
        return 0.5 * kl(p, log_p, log_m) + 0.5 * kl(q, log_q, log_m)
    return kl(p, log_p, log_m) if divergence == "skl" else kl(q, log_q, log_m)


def _naive(x: dict[str, torch.Tensor], t: float, alpha: float, divergence: str) -> torch.Tensor:
    """Full-batch float32 logits, both log-softmaxes, then ``F.kl_div`` (forward KL) or the
    divergence's plain formula."""
    z = F.linear(x["h"], x["w"]).float()
    with torch.no_grad():
        zt = F.linear(x["ht"], x["wt"]).float()
    log_q, log_p = F.log_softmax(z / t, dim=-1), F.log_softmax(zt / t, dim=-1)
    if divergence == "fkl":
        kd = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1).mean()
    else:
        kd = _plain(divergence, log_p, log_q).mean()
    total = alpha * divergence_named(divergence).scale(t) * kd
    if alpha < 1:
        total = total + (1 - alpha) * F.cross_entropy(z.flatten(0, 1), x["labels"].flatten())
    return total


def _chunked(x: dict[str, torch.Tensor], t: float, alpha: float, chunk: int,
             divergence: str) -> torch.Tensor:
    div = divergence_named(divergence)
    return token_losses(LMHeadInput(x["h"], x["w"]), LMHeadInput(x["ht"], x["wt"]),
                        x["labels"], div, t, kd_weight=alpha * div.scale(t),
                        ce_weight=1 - alpha, chunk_tokens=chunk).total


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One case in this process: warm-up, then the measured and timed steps."""
    device = torch.device(args.device)
    x = _inputs(args, device)

    def step() -> float:
        x["h"].grad = x["w"].grad = None
        if args.case == "naive":
            loss = _naive(x, args.temperature, args.alpha, args.divergence)
        else:
            loss = _chunked(x, args.temperature, args.alpha, args.chunk, args.divergence)
        loss.backward()
        return float(loss.detach())

    value = step()
    x["h"].grad = x["w"].grad = None  # the measured steps allocate their gradients
    seconds = []
    with PeakMemory() as memory:
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
    return {"case": args.case, "divergence": args.divergence, "chunk": args.chunk, "loss": value,
            "seconds": sorted(seconds)[len(seconds) // 2], "memory": memory.as_dict()}


def run_case(args: argparse.Namespace, case: str, chunk: int, divergence: str = "fkl"
             ) -> dict[str, Any]:
    """Runs one case in a fresh subprocess and returns its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case, "--chunk", str(chunk),
           "--divergence", divergence,
           "--seq", str(args.seq), "--batch", str(args.batch), "--vocab", str(args.vocab),
           "--hidden", str(args.hidden), "--steps", str(args.steps), "--device", args.device,
           "--temperature", str(args.temperature), "--alpha", str(args.alpha)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _growth(result: dict[str, Any], kind: str) -> float | None:
    return result["memory"][f"{kind}_increase_mib"]


def _label(r: dict[str, Any]) -> str:
    if r["case"] == "chunked":
        return f"{r['divergence']} chunked"
    return "fkl naive (F.kl_div)" if r["divergence"] == "fkl" else f"{r['divergence']} naive"


def report(args: argparse.Namespace, results: list[dict[str, Any]], markdown: bool) -> str:
    """The table and the ratio line (markdown or plain)."""
    kind = "cuda" if args.device.startswith("cuda") else "rss"
    mach = machine()
    head = [
        f"date: {time.strftime('%Y-%m-%d %H:%M')}",
        f"machine: {mach['cpu']}, {mach['cores']} cores, "
        f"{'GPU ' + mach['gpu'] if mach['gpu'] else 'no GPU'}; torch {mach['torch']}, "
        f"{mach['threads']} threads (OMP_NUM_THREADS={mach['omp_num_threads'] or 'unset'})",
        f"sizes: batch {args.batch} x seq {args.seq} tokens, vocab {args.vocab}, hidden "
        f"{args.hidden}; T={args.temperature:g}, alpha={args.alpha:g}; device {args.device}, "
        "float32",
        f"command: `python bench/token_loss_memory.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"steps: {args.steps} measured after 1 warm-up, median step time",
    ]
    cols = ["case", "tokens/chunk", f"peak {kind.upper()} growth MiB", "vs naive", "s/step",
            "loss"]
    naive = {r["divergence"]: r for r in results if r["case"] == "naive"}
    rows = []
    for r in results:
        grow, base = _growth(r, kind), _growth(naive[r["divergence"]], kind)
        rows.append([_label(r), "-" if r["case"] == "naive" else str(r["chunk"]),
                     f"{grow:.1f}", f"{grow / base:.3f}", f"{r['seconds']:.3f}",
                     f"{r['loss']:.5f}"])
    lines = []
    for div, base in naive.items():
        default = next((r for r in results if r["case"] == "chunked" and r["divergence"] == div
                        and r["chunk"] == DEFAULT_CHUNK_TOKENS), None)
        if default is not None:
            ratio = _growth(default, kind) / _growth(base, kind)
            lines.append(f"{div}: chunked ({DEFAULT_CHUNK_TOKENS} tokens/chunk, the default) / "
                         f"{_label(base)} peak growth: {ratio:.3f} (target <= {TARGET}: "
                         f"{'met' if ratio <= TARGET else 'NOT met'})")
    if markdown:
        table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        table += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join([*(f"- {h}" for h in head), "", *table, "",
                          *(f"{line}  " for line in lines)]).rstrip()
    widths = [max(len(r[i]) for r in [cols, *rows]) for i in range(len(cols))]
    table = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
             for r in [cols, *rows]]
    return "\n".join([*head, "", *table, "", *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--chunks", default=f"64,128,{DEFAULT_CHUNK_TOKENS},512,1024",
                        help="comma-separated tokens per chunk of the forward-KL cases")
    parser.add_argument("--divergences", default="",
                        help="comma-separated other divergences (rkl,jsd,tvd,skl,srkl), each "
                             "naive and at the default chunk size")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per case")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--markdown", action="store_true", help="print for bench/RESULTS.md")
    parser.add_argument("--child", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK_TOKENS, help=argparse.SUPPRESS)
    parser.add_argument("--divergence", choices=sorted(DIVERGENCES), default="fkl",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.case = args.child
        print(json.dumps(child(args)))  # noqa: T201 - read by the parent process
        return
    chunks = sorted({int(c) for c in args.chunks.split(",")})
    results = [run_case(args, "naive", 0)]
    results += [run_case(args, "chunked", c) for c in chunks]
    for div in [d for d in args.divergences.split(",") if d]:
        results += [run_case(args, "naive", 0, div),
                    run_case(args, "chunked", DEFAULT_CHUNK_TOKENS, div)]
    print(report(args, results, args.markdown))  # noqa: T201 - the benchmark's report


if __name__ == "__main__":
    main()
