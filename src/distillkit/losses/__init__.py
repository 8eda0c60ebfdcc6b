"""Distillation losses: small ``nn.Module`` terms and the weighted composite."""

from distillkit.losses.composite import DistillationLoss, LossOutput
from distillkit.losses.logits import (
    HardCrossEntropy,
    KLDivergence,
    MSELogits,
    SoftTargetCrossEntropy,
)

__all__ = [
    "DistillationLoss",
    "HardCrossEntropy",
    "KLDivergence",
    "LossOutput",
    "MSELogits",
    "SoftTargetCrossEntropy",
]
