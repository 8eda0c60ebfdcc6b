"""How much of the student's gradient each part of the loss makes, during a real run.

Trains the student of one distillkit config (default ``loss=mmd student=bert4l``) with
distillkit's engine, the run's optimizer, schedule, precision and batches, for ``--steps``
steps. Every ``--every`` steps it takes the gradient of the loss with respect to the
student's parameters apart: the intermediate terms (hidden-state, attention, MMD) and the
prediction layer (KD + hard label: the total minus the intermediate part), and prints the
norm of each, before clipping. It answers "do the intermediate terms crowd out the task's
gradient?" with a measurement.

    python bench/term_gradients.py                                   # tiny models (seconds)
    python bench/term_gradients.py --real                            # MiniLM-L6, SNLI, bert4l
    python bench/term_gradients.py --real trainer.optimizer.lr=3e-4 --steps 1000
"""

from __future__ import annotations

import argparse
import copy
import logging

import torch
from _common import TINY, prepare, train_distillkit, without_teacher_logits
from torch import nn


def _l2(grads: list[torch.Tensor]) -> float:
    return float(torch.sqrt(sum((g ** 2).sum() for g in grads)))


class TermGradients(nn.Module):
    """Wraps a ``DistillationLoss``: every ``every`` calls it also measures the gradient norm
    of its prediction-layer and intermediate parts with respect to ``params``."""

    def __init__(self, loss: nn.Module, params: list[nn.Parameter], every: int) -> None:
        super().__init__()
        self.inner = loss
        self.params = params
        self.every = every
        self.calls = 0
        self.rows: list[tuple[int, float, float, float]] = []

    def __getattr__(self, name: str):  # needs_teacher, set_progress, ...: the wrapped loss's
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)

    def _grads(self, value: torch.Tensor) -> list[torch.Tensor]:
        grads = torch.autograd.grad(value, self.params, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g.float()
                for g, p in zip(grads, self.params, strict=True)]

    def forward(self, student, teacher, batch):
        out = self.inner(student, teacher, batch)
        if self.calls % self.every == 0:
            total = self._grads(out.total)
            inter = [torch.zeros_like(g) for g in total]
            if self.inner._uses_intermediate():
                value, _ = self.inner.intermediate(student, teacher, batch["attention_mask"])
                inter = self._grads(self.inner._scale * value)
            prediction = [t - i for t, i in zip(total, inter, strict=True)]
            self.rows.append((self.calls, _l2(total), _l2(prediction), _l2(inter)))
        self.calls += 1
        return out


def main() -> None:
    """Trains once with the wrapped loss and prints the gradient norms by part."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    parser.add_argument("--real", action="store_true",
                        help="the default teacher and SNLI with student=bert4l")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps to train")
    parser.add_argument("--every", type=int, default=50, help="measure every N steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    base = ["student=bert4l"] if args.real else [*TINY, "trainer=debug"]
    setup = prepare(["loss=mmd", *base, *args.overrides], args.steps)
    if setup.settings.grad_accum_steps != 1:
        raise SystemExit("measure with trainer.grad_accum_steps=1 (one call per step)")
    student = copy.deepcopy(setup.built["student"].model)
    loss = TermGradients(copy.deepcopy(setup.built["loss"]), list(student.parameters()),
                         args.every)
    train_distillkit(setup, student, setup.built["teacher"].model, loss,
                     without_teacher_logits(setup.batches), 0, args.steps - 1)
    header = f"{'step':>5s} {'total':>8s} {'prediction':>11s} {'intermediate':>13s}"
    lines = [f"gradient norms on the student's parameters, before clipping "
             f"(trainer.max_grad_norm={setup.settings.max_grad_norm}); overrides loss=mmd "
             f"{' '.join([*base, *args.overrides])}", header, "-" * len(header)]
    lines += [f"{s:5d} {t:8.3f} {p:11.3f} {i:13.3f}" for s, t, p, i in loss.rows]
    print("\n".join(lines))  # noqa: T201 - the benchmark's report


if __name__ == "__main__":
    main()
