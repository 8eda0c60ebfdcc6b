"""Stops training at the first NaN or infinite loss, without a host sync per step.

Every optimizer step the loss (total and terms) is compared on the device; the first step
whose loss is not finite, and that step's values, stay on the device. :meth:`NonFiniteWatch.
check` reads them back (one sync) where the loop syncs anyway or must be sure: before logging,
before writing a checkpoint, and at the end. A checkpoint is therefore never written after a
non-finite loss, and the ones written before stay as they are.
"""

from __future__ import annotations

from pathlib import Path

import torch

from distillkit.errors import TrainingError

FIX = ("lower trainer.optimizer.lr, set trainer.max_grad_norm (e.g. 1.0), or use "
       "trainer.precision=fp32")


class NonFiniteWatch:
    """Remembers the first optimizer step whose loss was NaN or infinite (on the device)."""

    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()
        self.first: torch.Tensor | None = None  # that step; -1 while every loss was finite
        self.values: torch.Tensor | None = None  # total and terms at that step

    def note(self, step: int, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Records step ``step``'s loss (a few device ops, no sync)."""
        names = ("total", *terms)
        values = torch.stack([total.detach().float().reshape(())] + [
            torch.as_tensor(v, device=total.device).detach().float().reshape(())
            for v in terms.values()])
        if self.first is None or names != self.names:  # first step, or the terms changed
            self.check()
            self.names = names
            self.first = torch.full((), -1, dtype=torch.long, device=total.device)
            self.values = torch.zeros_like(values)
        new = ~torch.isfinite(values).all() & (self.first < 0)
        self.first = torch.where(new, step, self.first)
        self.values = torch.where(new, values, self.values)

    def check(self, latest_checkpoint: Path | None = None) -> None:
        """Raises when a loss so far was not finite (reads the device state back).

        Args:
            latest_checkpoint: the newest checkpoint written, named in the message.

        Raises:
            TrainingError: naming the first non-finite step, its loss terms and the fixes.
        """
        if self.first is None or int(self.first) < 0:
            return
        values = ", ".join(f"{n}={v:.4g}" for n, v in zip(self.names, self.values.tolist(),
                                                         strict=True))
        kept = (f"the checkpoints written before it are kept (newest: {latest_checkpoint})"
                if latest_checkpoint is not None else "no checkpoint was written before it")
        raise TrainingError(f"non-finite loss at step {int(self.first)} ({values}); training "
                            f"stopped, {kept}. To fix: {FIX}")


def check_finite_weights(params: list[torch.nn.Parameter], step: int) -> None:
    """Refuses to checkpoint weights that are NaN or infinite (one sync).

    Raises:
        TrainingError: naming the step and the fixes.
    """
    if params and not bool(torch.stack([torch.isfinite(p.detach()).all() for p in params]).all()):
        raise TrainingError(f"the student's weights became non-finite at step {step}; "
                            f"training stopped before checkpointing them. To fix: {FIX}")
