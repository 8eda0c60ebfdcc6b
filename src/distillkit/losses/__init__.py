"""Distillation losses: small ``nn.Module`` terms and the weighted composite."""

from distillkit.losses.composite import DistillationLoss
from distillkit.losses.contract import KDLoss, LossOutput
from distillkit.losses.intermediate import (
    AttentionKL,
    AttentionMSE,
    GramMMD,
    HiddenCosine,
    HiddenMSE,
)
from distillkit.losses.layers import IntermediateTerms
from distillkit.losses.logits import (
    HardCrossEntropy,
    KLDivergence,
    MSELogits,
    SoftTargetCrossEntropy,
)
from distillkit.losses.meta import MetaTeacherLoss

__all__ = [
    "AttentionKL",
    "AttentionMSE",
    "DistillationLoss",
    "GramMMD",
    "HiddenCosine",
    "HiddenMSE",
    "HardCrossEntropy",
    "IntermediateTerms",
    "KDLoss",
    "KLDivergence",
    "LossOutput",
    "MetaTeacherLoss",
    "MSELogits",
    "SoftTargetCrossEntropy",
]
