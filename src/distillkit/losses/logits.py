"""Prediction-layer (logit) distillation terms.

Every term takes logits of shape ``[..., num_classes]`` (``[batch, C]`` for classification,
``[batch, seq, vocab]`` for token-level KD) and an optional ``mask`` over the leading
dimensions: boolean (the result is the mean over the unmasked positions) or float per-position
weights (the weighted mean, e.g. Meta-KD's per-example domain-expertise weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is true (all positions if None); a
    float ``mask`` weighs the positions (a weighted mean; 0 when every weight is 0)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1e-12)


class _LogitTerm(nn.Module):
    """Shared call signature: ``term(student_logits, teacher_logits, temperature, mask)``.

    Subclasses compute a per-position value from the temperature-scaled logits; the result is
    its (masked) mean times :meth:`scale`.
    """

    def per_position(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scale(self, temperature: float) -> float:
        return temperature * temperature

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        temperature: float = 1.0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        t = float(temperature)
        values = self.per_position(student_logits.float() / t, teacher_logits.float() / t)
        return _masked_mean(values, mask) * self.scale(t)


class SoftTargetCrossEntropy(_LogitTerm):
    """Cross-entropy against the teacher's softened distribution, scaled by ``T**2``.

    From Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015):
    ``T**2 * CE(softmax(z_t / T), softmax(z_s / T))``. The ``T**2`` factor keeps the gradient
    magnitude roughly independent of the temperature.
    """

    def per_position(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return -(F.softmax(teacher, dim=-1) * F.log_softmax(student, dim=-1)).sum(dim=-1)


class KLDivergence(_LogitTerm):
    """``T**2 * KL(p_teacher || p_student)`` on temperature-softened distributions.

    Same gradient as :class:`SoftTargetCrossEntropy` (they differ by the teacher's entropy, a
    constant for the student), but its value is 0 when the student matches the teacher, which
    makes it easier to read in logs. Hinton et al. (2015).
    """

    def per_position(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1),
                        log_target=True, reduction="none").sum(dim=-1)


class MSELogits(_LogitTerm):
    """Mean squared error between temperature-scaled logits: ``MSE(z_s / T, z_t / T)``.

    Logit regression from Ba & Caruana, "Do Deep Nets Really Need to be Deep?" (2014); the
    division by ``T`` follows TextBrewer's ``mse`` kd loss (with the default ``T = 1`` it is
    plain logit MSE). No ``T**2`` factor.
    """

    def per_position(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return (student - teacher).pow(2).mean(dim=-1)

    def scale(self, temperature: float) -> float:
        return 1.0


class HardCrossEntropy(nn.Module):
    """Plain cross-entropy with the gold labels.

    Positions labelled ``-100`` (e.g. transfer-set examples whose labels are hidden) are
    ignored; a batch without any label gives 0, not NaN. Optional per-example ``weights``
    (>= 0) give the weighted mean ``sum w_i CE_i / sum w_i`` over the labelled positions (a
    meta-teacher's prototype scores, Pan et al., 2021).
    """

    def forward(self, student_logits: torch.Tensor, labels: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        labels = labels.reshape(-1)
        per_example = F.cross_entropy(
            student_logits.float().reshape(-1, student_logits.shape[-1]),
            labels,
            ignore_index=-100,
            reduction="none",
        )
        if weights is None:
            return per_example.sum() / (labels != -100).sum().clamp_min(1)
        w = weights.reshape(-1).to(torch.float32) * (labels != -100)
        return (per_example * w).sum() / w.sum().clamp_min(1e-12)
