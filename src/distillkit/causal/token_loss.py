"""The token-level distillation loss of a causal LM, and the next-token label shift.

``total = alpha * scale(T) * KD + (1 - alpha) * CE`` (the composite loss's one weighting
schema, :mod:`distillkit.losses.composite`):

* ``KD`` is the mean over the counted tokens of the divergence (forward/reverse KL,
  generalised JSD, TVD, skew KL/RKL; :mod:`distillkit.causal.divergences`) between the
  teacher's and the student's next-token distributions, both softened by ``temperature``;
* ``scale(T)`` is the divergence's temperature factor: ``T**2`` for the smooth divergences
  (Hinton et al., 2015), ``T`` for total variation (see :mod:`~distillkit.causal.divergences`);
* ``CE`` is the mean cross-entropy of the student on the labels, at ``T = 1``;
* ``alpha`` weighs KD against CE and nothing else.

Both are computed chunk by chunk (:mod:`distillkit.causal.chunked`), never holding the whole
batch's vocabulary logits in float32.

Labels: :meth:`TokenDistillationLoss.forward` reads labels already aligned with the positions,
``labels[b, t]`` = the token position ``t`` must predict (Hugging Face causal LMs shift inside
their own loss; this loss does not). :func:`shift_for_next_token` turns input-aligned labels
(``labels == input_ids`` with ``-100`` on prompt and padding) into that form, once, where the
batch is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from distillkit.causal.chunked import (
    DEFAULT_CHUNK_TOKENS,
    LMHeadInput,
    check_chunk_tokens,
    token_losses,
)
from distillkit.causal.divergences import TokenDivergence
from distillkit.causal.generation import CausalGeneration
from distillkit.causal.topk import TopKTargets
from distillkit.errors import ConfigError
from distillkit.losses.contract import KDLoss, LossOutput, check_weighting

#: Batch entry of an on-policy batch (:mod:`distillkit.causal.on_policy`): its responses were
#: sampled by the student, so only the KD term counts on it.
ON_POLICY = "loss_on_policy"


def shift_for_next_token(labels: torch.Tensor,
                         attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Input-aligned labels -> position-aligned targets: ``out[:, t] = labels[:, t + 1]``.

    A causal LM's output at position ``t`` predicts token ``t + 1``. The last position has no
    target (``-100``), and neither has a position whose next token is padding
    (``attention_mask[:, t + 1] == 0``), so padding labelled with a real id (e.g. a pad token
    that is also EOS) never counts.

    Args:
        labels: ``[batch, seq]`` labels aligned with ``input_ids`` (``-100``: no loss).
        attention_mask: ``[batch, seq]`` (1: real token), or None.

    Returns:
        ``[batch, seq]`` targets aligned with the positions, ``-100`` where nothing counts.
    """
    shifted = torch.full_like(labels, -100)
    shifted[:, :-1] = labels[:, 1:]
    if attention_mask is not None:
        shifted[:, :-1] = shifted[:, :-1].masked_fill(attention_mask[:, 1:] == 0, -100)
    return shifted


class TokenDistillationLoss(KDLoss):
    """Token-level KD of a causal LM: ``alpha * scale(T) * KD + (1 - alpha) * CE``.

    The model outputs it reads (``forward(student, teacher, batch)``):

    * ``student``: ``hidden_states_last`` (``[batch, seq, H]``, after the final norm) and
      ``lm_head`` (the ``nn.Linear`` output layer; its weight ``[V, H]`` and bias) when
      ``hidden_states_last`` is present: the lean path, where no full logits exist; otherwise
      ``logits`` (``[batch, seq, V]``; fine for small models and tests).
    * ``teacher`` (read only when :attr:`uses_kd`): ``topk`` (a
      :class:`~distillkit.causal.topk.TopKTargets` with leading dims ``[batch, seq]``) if
      present, else ``hidden_states_last`` + ``lm_head`` if present, else ``logits``.
    * ``batch``: ``labels`` aligned with the positions (:func:`shift_for_next_token`;
      ``-100``: not counted) and ``attention_mask`` (0: not counted).

    Vocabulary padding rows: with :attr:`vocab_size` set (the run sets it to
    :func:`~distillkit.causal.vocab.align_vocab`'s result), only the first ``vocab_size`` rows
    of each side's logits or LM head count (a view: the kept rows still train); top-k indices
    must lie below it.

    Logged terms: ``kd`` (``scale(T) * KD``, the value ``alpha`` weighs) and ``hard`` (CE),
    each only when its weight is non-zero.

    Generated responses (the run acts on these; the loss only holds them): ``lmbda`` > 0 makes
    that share of batches on-policy (GKD, :mod:`distillkit.causal.on_policy`; the CE term is
    dropped on a batch carrying :data:`ON_POLICY`); ``seq_kd`` trains on the teacher's
    decoded responses instead of the data's (:mod:`distillkit.causal.sequence_kd`).

    Args:
        divergence: the token-level divergence; None for cross-entropy alone (``alpha`` 0).
        temperature: ``T`` > 0 of the KD term.
        alpha: weight of the KD term in ``[0, 1]``; CE gets ``1 - alpha``.
        chunk_tokens: counted tokens per chunk (memory against speed).
        vocab_size: the shared vocabulary size both sides are cut to, or None (both already
            have the same size).
        lmbda: share of on-policy batches in ``[0, 1]`` (needs a KD term).
        seq_kd: train on the teacher's responses (sequence-level KD).
        generation: how responses are generated (sampling and decoding settings).

    Raises:
        ConfigError: for a temperature <= 0, an alpha outside [0, 1], ``alpha > 0`` without
            a divergence, a ``chunk_tokens`` that is not a positive integer, or an ``lmbda``
            outside [0, 1] or without a KD term.
    """

    def __init__(self, divergence: TokenDivergence | None = None, temperature: float = 1.0,
                 alpha: float = 0.5, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                 vocab_size: int | None = None, lmbda: float = 0.0, seq_kd: bool = False,
                 generation: CausalGeneration | None = None) -> None:
        super().__init__()
        check_weighting(temperature, alpha, example_temperature=1)
        if divergence is None and alpha > 0:
            raise ConfigError(
                f"loss.alpha={alpha} weighs a distillation term, but this loss has no "
                "divergence; choose one (e.g. forward KL), or set loss.alpha=0 to train on "
                "labels only"
            )
        self.divergence = divergence
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.chunk_tokens = check_chunk_tokens(chunk_tokens)
        self.vocab_size = vocab_size
        if not 0.0 <= float(lmbda) <= 1.0:
            raise ConfigError(f"loss.lmbda={lmbda} is outside [0, 1]; it is the share of "
                              "batches the student samples (0: off, GKD uses e.g. 0.5)")
        if lmbda > 0 and not self.uses_kd:
            raise ConfigError(f"loss.lmbda={lmbda} samples on-policy batches for the teacher to "
                              "score, but this loss has no KD term (loss.alpha=0); set "
                              "loss.alpha > 0 or loss.lmbda=0")
        self.lmbda = float(lmbda)
        self.generation = generation or CausalGeneration()
        self.sequence_kd = self.generation.as_dict() if seq_kd else None

    @property
    def uses_kd(self) -> bool:
        """Whether the KD term runs (a divergence and ``alpha > 0``)."""
        return self.divergence is not None and self.alpha > 0

    @property
    def reads_sampled_tail(self) -> bool:
        """Whether cached top-k targets with a sampled tail keep their samples for this loss
        (forward KL at ``T = 1``, where they are unbiased); otherwise the task folds them into
        plain top-k targets."""
        return self.divergence is not None and self.divergence.unbiased_on_sampled_tail \
            and self.temperature == 1.0

    @property
    def needs_teacher(self) -> bool:
        """Whether :meth:`forward` reads the teacher: when the KD term runs (a subclass with
        teacher terms of its own widens this)."""
        return self.uses_kd

    def required_features(self) -> set[str]:
        """``{"logits"}``: the engine's feature set does not name last hidden states yet."""
        return {"logits"}

    def forward(self, student: Mapping[str, Any], teacher: Mapping[str, Any] | None,
                batch: Mapping[str, torch.Tensor]) -> LossOutput:
        """Computes the weighted loss of one batch.

        Args:
            student: the student's outputs (see the class docstring for the keys).
            teacher: the teacher's outputs, or None when :attr:`needs_teacher` is false.
            batch: ``labels`` (position-aligned, ``-100`` ignored) and ``attention_mask``.

        Returns:
            The total and the logged terms ``kd`` and ``hard``.
        """
        if self.uses_kd and teacher is None:
            raise ValueError("TokenDistillationLoss needs teacher outputs but got None")
        scale = self.divergence.scale(self.temperature) if self.uses_kd else 0.0
        kd_weight = self.alpha * scale
        ce_weight = 0.0 if ON_POLICY in batch else 1.0 - self.alpha
        size = self.vocab_size
        out = token_losses(
            _student_side(student, size),
            _teacher_side(teacher, size) if self.uses_kd else None,
            batch["labels"], self.divergence, self.temperature, kd_weight=kd_weight,
            ce_weight=ce_weight, mask=batch["attention_mask"], chunk_tokens=self.chunk_tokens)
        terms: dict[str, torch.Tensor] = {}
        if kd_weight:
            terms["kd"] = out.kd * scale
        if ce_weight:
            terms["hard"] = out.ce
        return LossOutput(total=out.total, terms=terms)


def _head(outputs: Mapping[str, Any], size: int | None) -> LMHeadInput:
    head: nn.Linear = outputs["lm_head"]
    bias = head.bias if head.bias is None or size is None else head.bias[:size]
    weight = head.weight if size is None else head.weight[:size]
    return LMHeadInput(outputs["hidden_states_last"], weight, bias)


def _student_side(student: Mapping[str, Any], size: int | None) -> torch.Tensor | LMHeadInput:
    if "hidden_states_last" in student:
        return _head(student, size)
    return student["logits"] if size is None else student["logits"][..., :size]


def _teacher_side(teacher: Mapping[str, Any],
                  size: int | None) -> torch.Tensor | LMHeadInput | TopKTargets:
    if "topk" in teacher:
        return teacher["topk"]
    if "hidden_states_last" in teacher:
        return _head(teacher, size)
    return teacher["logits"] if size is None else teacher["logits"][..., :size]
