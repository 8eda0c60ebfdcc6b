"""Engine step-time benchmark: student alone vs logit KD with a live teacher.

Builds the models and data from the same Hydra config as a run (overrides as arguments), then
times ``Distiller.fit`` for a fixed number of steps on identical batches, in one process.

    python bench/engine_speed.py                      # tiny models and data (seconds)
    python bench/engine_speed.py student=bert4l --steps 30   # default teacher and SNLI
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from transformers import set_seed

from distillkit.cli import config_dir
from distillkit.engine import Distiller
from distillkit.run import build, engine_settings
from distillkit.schemas import register_schemas

log = logging.getLogger("bench")
TINY = ["teacher=tiny", "student=tiny", "data=tiny"]


def _time_fit(cfg, loss_option: str, steps: int, warmup: int) -> float:
    """Seconds per optimizer step for ``loss=<loss_option>`` (after ``warmup`` steps)."""
    overrides = [*cfg["overrides"], f"loss={loss_option}", f"trainer.max_steps={steps + warmup}",
                 "trainer.progress=false", f"trainer.log_every_steps={steps + warmup}"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        run_cfg = compose("config", overrides=overrides)
    settings = engine_settings(run_cfg.trainer)
    set_seed(settings.seed)
    built = build(run_cfg, settings)
    loader = built["data"].loader("train", settings.batch_size, shuffle=True, seed=settings.seed)
    batches = [b for _, b in zip(range(steps + warmup), loader, strict=False)]
    distiller = Distiller(built["student"].model, built["teacher"].model, built["loss"],
                          instantiate(run_cfg.trainer.optimizer),
                          instantiate(run_cfg.trainer.scheduler), settings)
    distiller.fit(batches[:warmup] or batches[:1])
    start = time.perf_counter()
    distiller.fit(batches[warmup:])
    return (time.perf_counter() - start) / len(batches[warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. student=bert4l")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    register_schemas()
    cfg = {"overrides": args.overrides or TINY}
    rows = [(name, _time_fit(cfg, option, args.steps, args.warmup))
            for name, option in (("(a) student alone (loss=hard)", "hard"),
                                 ("(b) logit KD, live teacher (loss=kd)", "kd"))]
    base = rows[0][1]
    header = f"{'case':40s} {'s/step':>9s} {'steps/s':>9s} {'vs (a)':>7s}"
    lines = [f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
             f"overrides {cfg['overrides']}", header, "-" * len(header)]
    lines += [f"{n:40s} {t:9.4f} {1 / t:9.2f} {t / base:7.2f}" for n, t in rows]
    print("\n".join(lines))  # noqa: T201 - the benchmark's report


if __name__ == "__main__":
    main()
