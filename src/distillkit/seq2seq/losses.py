"""Seq2seq distillation losses: word-level KD (with sequence-level KD data) and step by step.

Both are :class:`~distillkit.losses.KDLoss` subclasses (the engine calls them as
``loss(student_out, teacher_out, batch) -> LossOutput``) and read ``batch["labels"]`` (target
token ids, ``-100`` at padding); step by step also reads ``batch["loss_task"]`` (0: label
part, 1: rationale part).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from distillkit.errors import ConfigError
from distillkit.losses import HardCrossEntropy, KDLoss, LossOutput

LABEL_TYPES = ("gt", "llm")
RATIONALE_SOURCES = ("data", "teacher")


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"loss.alpha must be in [0, 1], got {alpha}; try loss.alpha=0.5")


class TokenDistillationLoss(KDLoss):
    """Word-level KD for seq2seq: ``alpha * T^2 * KD + (1 - alpha) * CE``, per target token.

    Kim & Rush, "Sequence-Level Knowledge Distillation" (EMNLP 2016), word-level KD: at every
    target position the student matches the teacher's next-token distribution (teacher forced
    on the same target prefix), mixed with the gold-token cross-entropy. Both terms are means
    over the real target tokens (``labels != -100``): padding never counts. The same weighting
    schema as the classification loss (:mod:`distillkit.losses.composite`).

    Sequence-level KD (Kim & Rush's ``seq-kd``) is this loss trained on the teacher's
    beam-search outputs instead of the gold targets: ``sequence_kd`` holds the generation
    settings the run's seq-KD stage reads (:mod:`distillkit.seq2seq.generation`); with
    ``alpha = 0`` the student learns from the teacher's sequences alone, with ``alpha > 0``
    from its sequences and its token distributions together (Kim & Rush's ``seq-kd + word-kd``).

    Args:
        kd: the token term, called as ``kd(student_logits, teacher_logits, T, mask)``
            (:class:`~distillkit.losses.SoftTargetCrossEntropy` or
            :class:`~distillkit.losses.KLDivergence`); None trains on targets only.
        temperature: softening temperature of the KD term (> 0).
        alpha: weight of the KD term in ``[0, 1]``; the token cross-entropy gets ``1 - alpha``.
        sequence_kd: seq-KD stage settings (``num_beams``, ``n_best``, ``max_new_tokens``,
            ``batch_size``, ``mix_original``), or None for no seq-KD stage.
    """

    def __init__(self, kd: nn.Module | None = None, temperature: float = 1.0,
                 alpha: float = 0.5, sequence_kd: Mapping | None = None) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"loss.temperature must be > 0, got {temperature}; try "
                              "loss.temperature=2")
        _check_alpha(alpha)
        if kd is None and alpha > 0:
            raise ConfigError(f"loss.alpha={alpha} weighs a distillation term, but this loss "
                              "has none (loss.kd is null); set loss.alpha=0")
        self.kd = kd
        self.hard = HardCrossEntropy()
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.sequence_kd = dict(sequence_kd) if sequence_kd is not None else None

    @property
    def needs_teacher(self) -> bool:
        """Whether every step needs the teacher's token distributions."""
        return self.kd is not None and self.alpha > 0

    def forward(self, student: Mapping[str, torch.Tensor],
                teacher: Mapping[str, torch.Tensor] | None,
                batch: Mapping[str, torch.Tensor]) -> LossOutput:
        """The weighted loss and its unweighted terms ``hard`` and ``kd``."""
        logits, labels = student["logits"], batch["labels"]
        total = logits.new_zeros((), dtype=torch.float32)
        terms: dict[str, torch.Tensor] = {}
        if self.alpha < 1.0:
            hard = self.hard(logits, labels)
            terms["hard"] = hard.detach()
            total = total + (1.0 - self.alpha) * hard
        if self.needs_teacher:
            if teacher is None:
                raise ValueError("TokenDistillationLoss needs teacher outputs but got None")
            kd = self.kd(logits, teacher["logits"].to(logits.device), self.temperature,
                         labels != -100)
            terms["kd"] = kd.detach()
            total = total + self.alpha * kd
        return LossOutput(total=total, terms=terms)


class StepByStepLoss(KDLoss):
    """Distilling step by step: ``alpha * label_loss + (1 - alpha) * rationale_loss``.

    Hsieh et al., "Distilling Step-by-Step! Outperforming Larger Language Models with Less
    Training Data and Smaller Model Sizes" (Findings of ACL 2023). One student learns two
    tasks per example, marked by source prefixes: ``label_prefix + x -> label`` and
    ``rationale_prefix + x -> rationale``; each loss is the token-mean cross-entropy over its
    own task's parts. Inference uses the label prefix alone, so rationales cost nothing at
    test time.

    Args:
        alpha: weight of the label task in ``[0, 1]``; the rationale task gets ``1 - alpha``
            (``alpha = 1`` is the labels-only baseline with the same inputs).
        label_prefix: source prefix of the label task (``predict: ``).
        rationale_prefix: source prefix of the rationale task (``explain: ``).
        label_type: ``gt`` (the gold labels, ``data.target_column``) or ``llm`` (labels from
            a teacher/LLM: ``data.llm_label_column``, or generated by the teacher when the
            data has no such column).
        rationale_source: ``data`` (``data.rationale_column`` / ``data.llm_rationale_column``)
            or ``teacher`` (generated by the teacher, trained on both tasks, in a stage).
    """

    def __init__(self, alpha: float = 0.5, label_prefix: str = "predict: ",
                 rationale_prefix: str = "explain: ", label_type: str = "gt",
                 rationale_source: str = "data") -> None:
        super().__init__()
        _check_alpha(alpha)
        if label_type not in LABEL_TYPES:
            raise ConfigError(f"loss.label_type='{label_type}' is not one of "
                              f"{', '.join(LABEL_TYPES)}")
        if rationale_source not in RATIONALE_SOURCES:
            raise ConfigError(f"loss.rationale_source='{rationale_source}' is not one of "
                              f"{', '.join(RATIONALE_SOURCES)}")
        if label_prefix == rationale_prefix:
            raise ConfigError(f"loss.label_prefix and loss.rationale_prefix are both "
                              f"'{label_prefix}'; the two tasks need different prefixes")
        self.alpha = float(alpha)
        self.label_prefix = label_prefix
        self.rationale_prefix = rationale_prefix
        self.label_type = label_type
        self.rationale_source = rationale_source
        self.hard = HardCrossEntropy()

    @property
    def needs_teacher(self) -> bool:
        """False: both tasks train on targets (the teacher, if any, ran in an earlier stage)."""
        return False

    def forward(self, student: Mapping[str, torch.Tensor],
                teacher: Mapping[str, torch.Tensor] | None,
                batch: Mapping[str, torch.Tensor]) -> LossOutput:
        """The weighted loss and its unweighted terms ``label`` and ``rationale``."""
        del teacher
        logits, labels, task = student["logits"], batch["labels"], batch["loss_task"]
        total = logits.new_zeros((), dtype=torch.float32)
        terms: dict[str, torch.Tensor] = {}
        for name, which, weight in (("label", 0, self.alpha), ("rationale", 1, 1 - self.alpha)):
            rows = task == which
            if weight == 0 or not bool(rows.any()):
                continue
            value = self.hard(logits[rows], labels[rows])
            terms[name] = value.detach()
            total = total + weight * value
        return LossOutput(total=total, terms=terms)
