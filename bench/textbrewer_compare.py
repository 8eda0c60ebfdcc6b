"""distillkit vs TextBrewer's GeneralDistiller: test accuracy after the same training.

Builds everything from one distillkit config (default: ``loss=mmd student=bert4l``): data,
teacher (the cached fine-tuned one), student initialisation, layer mapping, optimizer, LR
schedule, steps and the very same batches. Then trains one fresh copy of the student with
distillkit's engine and one with TextBrewer (``pip install -e ".[bench]"``), whose
``intermediate_matches`` are derived from distillkit's resolved plan (``hidden_mse`` with a
linear projection, ``mmd``), and reports the test accuracy of both (and their steps/s over
the run after its first step; ``bench/speed.py`` is the speed benchmark, case (e)).

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

import torch
from _common import TINY, prepare, textbrewer_version, train_distillkit
from _textbrewer import train_textbrewer

from distillkit.engine import evaluate


def main() -> None:
    """Trains both, evaluates both on the test split and prints the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    parser.add_argument("--real", action="store_true",
                        help="the default teacher and SNLI with student=bert4l")
    parser.add_argument("--steps", type=int, default=None, help="default: trainer.max_steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if textbrewer_version() is None:
        raise SystemExit('textbrewer is not installed: pip install -e ".[bench]"')
    base = ["student=bert4l"] if args.real else [*TINY, "trainer=debug",
                                                 "student.hidden_size=16"]
    setup = prepare(["loss=mmd", *base, *args.overrides], args.steps)
    settings, built = setup.settings, setup.built
    steps = settings.max_steps
    if steps < 2:
        raise SystemExit("--steps must be at least 2")
    data = built["data"]
    test = data.loader("test" if data.has_split("test") else "eval", settings.eval_batch_size)
    device = settings.resolve_device()
    rows = []
    for name in ("distillkit", "textbrewer"):
        student = copy.deepcopy(built["student"].model)
        if name == "distillkit":
            timing = train_distillkit(setup, student, built["teacher"].model,
                                      copy.deepcopy(built["loss"]), setup.batches, 0, steps - 1)
        else:
            timing = train_textbrewer(setup, student, setup.batches, 0, steps - 1)
        metrics = evaluate(student, test, device, settings.autocast_dtype(device),
                           progress=False)
        rows.append((name, timing.steps_per_second, metrics["accuracy"]))
    header = f"{'trainer':12s} {'steps/s':>9s} {'test acc':>9s}"
    lines = [f"{steps} steps, batch {settings.batch_size}, torch {torch.__version__}, "
             f"textbrewer {textbrewer_version()}, threads {torch.get_num_threads()}, "
             f"overrides loss=mmd {' '.join([*base, *args.overrides])}",
             header, "-" * len(header)]
    lines += [f"{n:12s} {sps:9.3f} {acc:9.4f}" for n, sps, acc in rows]
    lines.append(f"speed ratio distillkit/textbrewer: {rows[0][1] / rows[1][1]:.2f}x")
    print("\n".join(lines))  # noqa: T201 - the benchmark's report


if __name__ == "__main__":
    main()
