"""Prediction-layer (logit) distillation terms.

Every term takes logits of shape ``[..., num_classes]`` (``[batch, C]`` for classification,
``[batch, seq, vocab]`` for token-level KD) and an optional boolean ``mask`` over the leading
dimensions; the result is the mean over the unmasked positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is true (all positions if None)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against the teacher's softened distribution, scaled by ``T**2``.

    From Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015):
    ``T**2 * CE(softmax(z_t / T), softmax(z_s / T))``. The ``T**2`` factor keeps the gradient
    magnitude roughly independent of the temperature.
    """

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        temperature: float = 1.0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        t = float(temperature)
        teacher_probs = F.softmax(teacher_logits.float() / t, dim=-1)
        student_logp = F.log_softmax(student_logits.float() / t, dim=-1)
        per_position = -(teacher_probs * student_logp).sum(dim=-1)
        return _masked_mean(per_position, mask) * (t * t)


class KLDivergence(nn.Module):
    """``T**2 * KL(p_teacher || p_student)`` on temperature-softened distributions.

    Same gradient as :class:`SoftTargetCrossEntropy` (they differ by the teacher's entropy, a
    constant for the student), but its value is 0 when the student matches the teacher, which
    makes it easier to read in logs. Hinton et al. (2015).
    """

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        temperature: float = 1.0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        t = float(temperature)
        teacher_logp = F.log_softmax(teacher_logits.float() / t, dim=-1)
        student_logp = F.log_softmax(student_logits.float() / t, dim=-1)
        per_position = F.kl_div(student_logp, teacher_logp, log_target=True, reduction="none")
        return _masked_mean(per_position.sum(dim=-1), mask) * (t * t)


class MSELogits(nn.Module):
    """Mean squared error between temperature-scaled logits: ``MSE(z_s / T, z_t / T)``.

    Logit regression from Ba & Caruana, "Do Deep Nets Really Need to be Deep?" (2014); the
    division by ``T`` follows TextBrewer's ``mse`` kd loss (with the default ``T = 1`` it is
    plain logit MSE). No ``T**2`` factor.
    """

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        temperature: float = 1.0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        t = float(temperature)
        diff = (student_logits.float() - teacher_logits.float()) / t
        return _masked_mean(diff.pow(2).mean(dim=-1), mask)


class HardCrossEntropy(nn.Module):
    """Plain cross-entropy with the gold labels (positions labelled ``-100`` are ignored)."""

    def forward(self, student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            student_logits.float().reshape(-1, student_logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=-100,
        )
