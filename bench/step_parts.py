"""Where one ``loss=mmd`` (case (d)) training step spends its time, part by part.

Times, per step and as medians over the batches after a warm-up: the teacher's forward pass
(bf16 weights, inference mode), the student's forward pass and the loss (bf16 autocast), the
backward pass, gradient clipping and the optimizer step (AdamW, per-parameter loop or
``--fused``). Used for the reading of case (d) in ``bench/RESULTS.md``.

    python bench/step_parts.py --real            # MiniLM-L6 teacher, bert4l, SNLI batches
    python bench/step_parts.py --real --fused
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from _common import TINY, prepare
from speed import configs

from distillkit.engine.outputs import frozen

PARTS = ("teacher", "student", "loss", "backward", "clip", "optimizer", "total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="real models and data")
    parser.add_argument("--fused", action="store_true", help="fused AdamW")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    overrides = configs(args.real, [])["mmd"] + ["trainer.precision=bf16"]
    setup = prepare(overrides if args.real else [*TINY, *overrides], steps=args.steps)
    built = setup.built
    teacher = frozen(copy.deepcopy(built["teacher"].model), torch.device("cpu"), torch.bfloat16)
    student = copy.deepcopy(built["student"].model).train()
    loss = copy.deepcopy(built["loss"])
    params = [*student.parameters(), *loss.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=args.fused)
    flags = {"output_hidden_states": True}
    times: dict[str, list[float]] = {k: [] for k in PARTS}
    for i, batch in enumerate(setup.batches[:args.steps]):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")
                  if k in batch}
        marks = [time.perf_counter()]
        with torch.inference_mode():
            out = teacher(**inputs, **flags)
        t_out = {"logits": out.logits, "hidden_states": out.hidden_states}
        marks.append(time.perf_counter())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = student(**inputs, **flags)
            s_out = {"logits": out.logits, "hidden_states": out.hidden_states}
            marks.append(time.perf_counter())
            total = loss(s_out, t_out, {**inputs, "labels": batch["labels"]}).total
        marks.append(time.perf_counter())
        total.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if i >= args.warmup:
            for key, a, b in zip(PARTS, marks, marks[1:], strict=False):
                times[key].append(b - a)
            times["total"].append(marks[-1] - marks[0])
    medians = {k: 1000 * statistics.median(v) for k, v in times.items()}
    lines = [f"AdamW {'fused' if args.fused else 'per-parameter loop'}, "
             f"threads {torch.get_num_threads()}, median ms per step:"]
    lines += [f"  {key:<10} {ms:8.1f}  ({100 * ms / medians['total']:.0f}%)"
              for key, ms in medians.items()]
    print("\n".join(lines))  # noqa: T201 - the script's report


if __name__ == "__main__":
    main()
