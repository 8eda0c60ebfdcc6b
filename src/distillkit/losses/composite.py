"""The composite distillation loss and its one weighting schema.

``total = alpha * KD(z_s, z_t; T) + (1 - alpha) * CE(z_s, y)``

* ``alpha`` weighs the distillation term; ``1 - alpha`` weighs the hard-label cross-entropy.
  ``alpha = 0`` is training without a teacher, ``alpha = 1`` is pure distillation.
* ``temperature`` (``T``) softens both distributions inside the KD term only; the KD term
  carries its own ``T**2`` factor where its paper asks for one, so changing ``T`` does not
  rescale the balance set by ``alpha``.
* The hard term always uses ``T = 1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from distillkit.errors import ConfigError
from distillkit.losses.logits import HardCrossEntropy


@dataclass
class LossOutput:
    """Result of a loss call.

    Attributes:
        total: the scalar to back-propagate.
        terms: every term's unweighted value (detached), keyed by name, for logging.
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class DistillationLoss(nn.Module):
    """Weighted sum of a logit-distillation term and the hard-label loss.

    Args:
        kd: the distillation term, called as ``kd(student_logits, teacher_logits, temperature)``;
            ``None`` for training without a teacher (then ``alpha`` must be 0).
        hard: the hard-label term, called as ``hard(student_logits, labels)``; defaults to
            cross-entropy.
        temperature: softening temperature ``T`` of the KD term (> 0).
        alpha: weight of the KD term, in ``[0, 1]``; the hard term gets ``1 - alpha``.

    Raises:
        ConfigError: for a temperature <= 0, an alpha outside [0, 1], or ``alpha > 0`` without
            a KD term.
    """

    def __init__(
        self,
        kd: nn.Module | None = None,
        hard: nn.Module | None = None,
        temperature: float = 1.0,
        alpha: float = 0.5,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(
                f"loss.temperature must be > 0, got {temperature}; try loss.temperature=4"
            )
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"loss.alpha must be in [0, 1], got {alpha}; try loss.alpha=0.5")
        if kd is None and alpha > 0:
            raise ConfigError(
                f"loss.alpha={alpha} weighs a distillation term, but this loss has none "
                "(loss.kd is null); use loss=kd, or set loss.alpha=0 to train on labels only"
            )
        self.kd = kd
        self.hard = hard if hard is not None else HardCrossEntropy()
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    @property
    def needs_teacher(self) -> bool:
        """Whether the forward pass needs teacher outputs at all."""
        return self.kd is not None and self.alpha > 0

    def required_features(self) -> set[str]:
        """Model outputs this loss reads (the engine computes nothing else)."""
        return {"logits"}

    def forward(
        self,
        student: Mapping[str, torch.Tensor],
        teacher: Mapping[str, torch.Tensor] | None,
        batch: Mapping[str, torch.Tensor],
    ) -> LossOutput:
        """Computes the weighted loss.

        Args:
            student: student outputs (at least ``logits``).
            teacher: teacher outputs, or None when :attr:`needs_teacher` is false.
            batch: the input batch; ``labels`` holds the gold labels.

        Returns:
            The total and the unweighted terms ``kd`` and ``hard``.
        """
        logits = student["logits"]
        terms: dict[str, torch.Tensor] = {}
        total = logits.new_zeros((), dtype=torch.float32)
        if self.alpha < 1.0:
            hard = self.hard(logits, batch["labels"])
            terms["hard"] = hard.detach()
            total = total + (1.0 - self.alpha) * hard
        if self.needs_teacher:
            if teacher is None:
                raise ValueError("DistillationLoss needs teacher outputs but got None")
            kd = self.kd(logits, teacher["logits"].to(logits.device), self.temperature)
            terms["kd"] = kd.detach()
            total = total + self.alpha * kd
        return LossOutput(total=total, terms=terms)
