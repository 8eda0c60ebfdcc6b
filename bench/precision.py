"""How far low precision changes a teacher's predictions (issue: precision for teacher/student).

Builds the run's teacher exactly as a run does (the cached fine-tuned teacher of the given
config), then predicts the final split (SNLI test by default) in fp32, under bf16 autocast and
with bf16 weights, and reports accuracy, agreement of the predicted labels with fp32, the
largest logit difference and the time of each pass.

    python bench/precision.py                          # default teacher and SNLI (minutes)
    python bench/precision.py teacher=tiny student=tiny data=tiny   # seconds
"""

from __future__ import annotations

import argparse
import copy
import logging
import time

import torch
from hydra import compose, initialize_config_dir

from distillkit.app.cli import config_dir
from distillkit.app.schemas import register_schemas
from distillkit.data.sampling import restore_order
from distillkit.engine import frozen, predict_logits
from distillkit.run import build, engine_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the run config")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    register_schemas()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=["trainer.progress=false", "loss=hard",
                                           *args.overrides])
    settings = engine_settings(cfg.trainer)
    built = build(cfg, settings)
    data = built["data"]
    role = "test" if data.has_split("test") else "eval"
    loader = data.loader(role, settings.eval_batch_size)
    labels = torch.tensor(data.tokenized[role]["labels"])
    device = torch.device("cpu")
    cases = {"fp32": (None, None), "bf16 autocast": (None, torch.bfloat16),
             "bf16 weights": (torch.bfloat16, None)}
    results = {}
    for name, (weights, autocast) in cases.items():
        model = frozen(copy.deepcopy(built["teacher"].model), device, weights)
        start = time.perf_counter()
        logits = predict_logits(model, loader, device, autocast, progress=False)
        seconds = time.perf_counter() - start
        results[name] = (torch.from_numpy(restore_order(loader.batch_sampler, logits.numpy())),
                         seconds)
    ref = results["fp32"][0]
    lines = [f"teacher {built['teacher'].name}; {role} split, {len(labels)} examples; "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads",
             f"{'teacher pass':14s} {'accuracy':>9s} {'agree w/ fp32':>14s} "
             f"{'max |dlogit|':>13s} {'seconds':>8s}"]
    for name, (logits, seconds) in results.items():
        acc = (logits.argmax(-1) == labels).float().mean().item()
        agree = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
        diff = (logits - ref).abs().max().item()
        lines.append(f"{name:14s} {acc:9.4f} {agree:14.4f} {diff:13.4f} {seconds:8.1f}")
    print("\n".join(lines))  # noqa: T201 - the benchmark's report


if __name__ == "__main__":
    main()
