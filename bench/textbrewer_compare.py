"""distillkit vs TextBrewer's GeneralDistiller on the same teacher, student, matches and batches.

Builds everything from one distillkit config (default: ``loss=mmd student=bert4l``): data,
teacher (the cached fine-tuned one), student initialisation, layer mapping, optimizer, LR
schedule, steps and the very same batches. Then trains one fresh copy of the student with
distillkit's engine and one with TextBrewer (``pip install -e ".[bench]"``), whose
``intermediate_matches`` are derived from distillkit's resolved plan (``hidden_mse`` with a
linear projection, ``mmd``), and reports steps/s and test accuracy of both.

    python bench/textbrewer_compare.py                         # tiny models (seconds)
    python bench/textbrewer_compare.py --real                  # MiniLM-L6 teacher, SNLI, bert4l

Differences that stay (TextBrewer's own behaviour): its masked ``mmd`` divides the gram matrices
by the sequence length instead of the width, and its KD term has no T² factor (compensated
here: ``kd_loss_weight = alpha * T²``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from transformers import set_seed

from distillkit.cli import config_dir
from distillkit.engine import Distiller, evaluate
from distillkit.losses import HardCrossEntropy
from distillkit.run import build, engine_settings
from distillkit.schemas import register_schemas

log = logging.getLogger("bench")
TINY = ["teacher=tiny", "student=tiny", "data=tiny", "trainer=debug", "student.hidden_size=16"]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("config", overrides=["loss=mmd", "trainer.progress=false", *overrides])


def _distillkit(cfg, built, student, batches, settings) -> float:
    loss = copy.deepcopy(built["loss"])
    distiller = Distiller(student, built["teacher"].model, loss,
                          instantiate(cfg.trainer.optimizer), instantiate(cfg.trainer.scheduler),
                          settings)
    start = time.perf_counter()
    distiller.fit(batches)
    return time.perf_counter() - start


def _textbrewer(cfg, built, student, batches, settings) -> float:
    import textbrewer
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    loss = built["loss"]
    hard = HardCrossEntropy()
    s_width = student.config.hidden_size
    t_width = built["teacher"].model.config.hidden_size
    matches = []
    for name, pair, weight in loss.intermediate.plan:
        if name == "hidden_mse":
            match = {"layer_T": pair.teacher, "layer_S": pair.student, "feature": "hidden",
                     "loss": "hidden_mse", "weight": weight}
            if s_width != t_width:
                match["proj"] = ["linear", s_width, t_width]
            matches.append(match)
        elif name == "mmd":
            matches.append({"layer_T": [pair.teacher] * 2, "layer_S": [pair.student] * 2,
                            "feature": "hidden", "loss": "mmd", "weight": weight})
        else:
            raise SystemExit(f"no TextBrewer equivalent wired here for term {name}")

    def adaptor(batch, out):
        return {"logits": out.logits, "hidden": list(out.hidden_states),
                "inputs_mask": batch["attention_mask"],
                "losses": [hard(out.logits, batch["labels"])]}

    t = loss.temperature
    distill_cfg = DistillationConfig(
        temperature=t, kd_loss_type="ce", kd_loss_weight=loss.alpha * t * t,
        hard_label_weight=1.0 - loss.alpha, intermediate_matches=matches)
    with tempfile.TemporaryDirectory() as out_dir:
        train_cfg = TrainingConfig(device="cpu" if not torch.cuda.is_available() else "cuda",
                                   output_dir=out_dir, log_dir=out_dir,
                                   ckpt_steps=10**9)
        distiller = GeneralDistiller(train_cfg, distill_cfg, built["teacher"].model, student,
                                     adaptor, adaptor)
        optimizer = instantiate(cfg.trainer.optimizer)(student.parameters())
        sched = instantiate(cfg.trainer.scheduler)
        start = time.perf_counter()
        distiller.train(optimizer, batches, num_steps=len(batches),
                        scheduler_class=lambda optimizer, **kw: sched(optimizer, **kw),
                        scheduler_args={"num_training_steps": len(batches)},
                        max_grad_norm=settings.max_grad_norm, output_hidden_states=True)
        seconds = time.perf_counter() - start
    log.info("textbrewer %s done", textbrewer.__version__)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    parser.add_argument("--real", action="store_true",
                        help="the default teacher and SNLI with student=bert4l")
    parser.add_argument("--steps", type=int, default=None, help="default: trainer.max_steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    register_schemas()
    cfg = _compose((["student=bert4l"] if args.real else TINY) + args.overrides)
    settings = engine_settings(cfg.trainer)
    set_seed(settings.seed)
    built = build(cfg, settings)
    steps = args.steps or settings.max_steps
    loader = built["data"].loader("distil", settings.batch_size, shuffle=True,
                                  seed=settings.seed, by_length=settings.group_by_length)
    batches = []
    while len(batches) < steps:
        batches += [dict(b) for _, b in zip(range(steps - len(batches)), loader, strict=False)]
    test = built["data"].loader("test" if built["data"].has_split("test") else "eval",
                                settings.eval_batch_size)
    rows = []
    for name, train in (("distillkit", _distillkit), ("textbrewer", _textbrewer)):
        student = copy.deepcopy(built["student"].model)
        set_seed(settings.seed)
        seconds = train(cfg, built, student, batches, settings)
        metrics = evaluate(student, test, settings.resolve_device(), progress=False)
        rows.append((name, steps / seconds, metrics["accuracy"]))
    header = f"{'trainer':12s} {'steps/s':>9s} {'test acc':>9s}"
    lines = [f"{steps} steps, batch {settings.batch_size}, torch {torch.__version__}, "
             f"threads {torch.get_num_threads()}, overrides {cfg.loss.intermediate and 'mmd'} "
             f"{args.overrides}", header, "-" * len(header)]
    lines += [f"{n:12s} {sps:9.3f} {acc:9.4f}" for n, sps, acc in rows]
    lines.append(f"speed ratio distillkit/textbrewer: {rows[0][1] / rows[1][1]:.2f}x")
    print("\n".join(lines))  # noqa: T201 - the benchmark's report


if __name__ == "__main__":
    main()
