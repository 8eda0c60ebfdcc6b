"""Token-level KD of a causal LM plus hidden-state alignment over the layer mapping
(``loss=causal_hidden``).

``total = alpha * scale(T) * KD + (1 - alpha) * CE
+ sum over pairs (s, t) of hidden_weight * w_pair * MSE(P(h_s), h_t)``

* the first two terms are :class:`~distillkit.causal.token_loss.TokenDistillationLoss`'s,
  unchanged (``alpha`` weighs KD against CE and nothing else);
* the pairs come from the ``mapping`` group, resolved against the models' decoder layer counts
  (:mod:`distillkit.losses.mapping`; index 0 is the embedding output, ``L`` the last layer,
  after the final norm); ``w_pair`` is a pair's own ``weight`` (explicit mappings; else 1);
* ``MSE`` is :class:`~distillkit.losses.intermediate.HiddenMSE`: the squared error averaged over
  the width and the real tokens of the batch (``attention_mask``; prompt tokens count too);
* ``P`` is a trainable projection (``loss.projection``, ``nn.Linear`` by default) per pair when
  the student's width differs from the teacher's, built by
  :class:`~distillkit.losses.layers.IntermediateTerms` at :meth:`bind`; it trains with the
  student and checkpoints hold it; the exported student does not.

The hidden term reads the teacher's hidden states, which its top-k cache does not hold: with
this term the teacher runs live (the task skips ``trainer.teacher_topk``). The logged term
``hidden_mse`` is the weighted sum over the pairs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from distillkit.causal.chunked import DEFAULT_CHUNK_TOKENS
from distillkit.causal.divergences import TokenDivergence
from distillkit.causal.generation import CausalGeneration
from distillkit.causal.losses import divergence_named
from distillkit.causal.token_loss import TokenDistillationLoss
from distillkit.errors import ConfigError
from distillkit.losses.contract import LossOutput
from distillkit.losses.intermediate import HiddenMSE
from distillkit.losses.layers import IntermediateTerms, ProjectionFactory
from distillkit.losses.mapping import LayerPair

#: The name of the hidden-state term (logged, in ``mapping.json``'s plan, in explicit pairs).
TERM = "hidden_mse"


class HiddenTokenDistillationLoss(TokenDistillationLoss):
    """:class:`~distillkit.causal.token_loss.TokenDistillationLoss` plus a hidden-state MSE over
    the layer pairs :meth:`bind` hands it.

    Besides the token loss's keys, :meth:`forward` reads ``hidden_states`` (the tuple of
    ``L + 1`` ``[batch, seq, width]`` states) of both sides once bound to pairs.

    Args:
        divergence: the token-level divergence (None: cross-entropy alone, ``alpha`` 0).
        temperature: ``T`` of the KD term.
        alpha: weight of the KD term; CE gets ``1 - alpha``.
        chunk_tokens: counted tokens per chunk of the token loss.
        vocab_size: the shared vocabulary size (set by the task).
        lmbda: share of on-policy batches (needs the KD term).
        seq_kd: train on the teacher's decoded responses.
        generation: how responses are generated.
        hidden_weight: weight of the hidden-state term (>= 0; 0: no term, the mapping goes
            unused).
        projection: ``factory(student_width, teacher_width)`` for differing widths.

    Raises:
        ConfigError: the token loss's errors, or a negative ``hidden_weight``.
    """

    def __init__(self, divergence: TokenDivergence | None = None, temperature: float = 1.0,
                 alpha: float = 0.5, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                 vocab_size: int | None = None, lmbda: float = 0.0, seq_kd: bool = False,
                 generation: CausalGeneration | None = None, hidden_weight: float = 1.0,
                 projection: ProjectionFactory | None = None) -> None:
        super().__init__(divergence, temperature=temperature, alpha=alpha,
                         chunk_tokens=chunk_tokens, vocab_size=vocab_size, lmbda=lmbda,
                         seq_kd=seq_kd, generation=generation)
        if not float(hidden_weight) >= 0:
            raise ConfigError(f"loss.hidden_weight must be >= 0, got {hidden_weight}; try "
                              "loss.hidden_weight=1.0 (0: no hidden-state term)")
        self.hidden_weight = float(hidden_weight)
        terms = {TERM: HiddenMSE(weight=self.hidden_weight)} if self.hidden_weight else {}
        self.hidden = IntermediateTerms(terms, projection)

    @property
    def needs_teacher(self) -> bool:
        """Whether :meth:`forward` reads the teacher: the KD term or the hidden-state term."""
        return self.uses_kd or bool(self.hidden.terms)

    @property
    def takes_mapping(self) -> bool:
        """Whether :meth:`bind` uses layer pairs (a hidden-state term is configured)."""
        return bool(self.hidden.terms)

    def bind(self, pairs: Sequence[LayerPair], student_width: int, teacher_width: int) -> None:
        """Plans the hidden-state term over ``pairs`` and builds the projections when the widths
        differ (:meth:`~distillkit.losses.layers.IntermediateTerms.bind`).

        Raises:
            ConfigError: no pairs for the term, a pair naming another term or the attention
                feature, or differing widths without ``loss.projection``.
        """
        self.hidden.bind(pairs, student_width, teacher_width)

    def required_features(self) -> set[str]:
        """``logits`` (the token loss), plus ``hidden_states`` once pairs are bound."""
        return {"logits"} | self.hidden.features()

    def teacher_features(self) -> dict[str, frozenset[int]]:
        """The teacher hidden-state indices the bound pairs read."""
        return self.hidden.teacher_index()

    def describe_layers(self) -> str:
        """The bound term, its pairs and weights and the projections in one line."""
        return self.hidden.describe()

    def layer_plan(self) -> list[tuple[str, LayerPair, float]]:
        """Every bound ``(term name, pair, weight)``."""
        return list(self.hidden.plan)

    def layer_terms(self) -> list[str]:
        """``["hidden_mse"]`` with a hidden-state term, else none."""
        return list(self.hidden.terms)

    def forward(self, student: Mapping[str, Any], teacher: Mapping[str, Any] | None,
                batch: Mapping[str, torch.Tensor]) -> LossOutput:
        """The token loss plus the weighted hidden-state term.

        Returns:
            The total and the logged terms ``kd``, ``hard`` (as the token loss logs them) and
            ``hidden_mse`` (the weighted sum over the pairs).
        """
        out = super().forward(student, teacher, batch)
        if not self.hidden.plan:
            return out
        if teacher is None:
            raise ValueError("HiddenTokenDistillationLoss needs teacher outputs but got None")
        value, terms = self.hidden(student, teacher, batch["attention_mask"])
        return LossOutput(total=out.total + value, terms={**out.terms, **terms})


def causal_hidden(divergence: str = "fkl", temperature: float = 1.0, alpha: float = 0.5,
                  beta: float = 0.5, skew: float = 0.1,
                  chunk_tokens: int = DEFAULT_CHUNK_TOKENS, vocab_size: int | None = None,
                  lmbda: float = 0.0, seq_kd: bool = False, generation: Mapping | None = None,
                  hidden_weight: float = 1.0,
                  projection: ProjectionFactory | None = None) -> HiddenTokenDistillationLoss:
    """``loss=causal_hidden``: :func:`~distillkit.causal.losses.causal_kd`'s token-level KD
    plus a hidden-state MSE over the ``mapping`` group's layer pairs.

    Args:
        divergence: ``fkl`` | ``rkl`` | ``jsd`` | ``tvd`` | ``skl`` | ``srkl``.
        temperature: ``T`` of the KD term.
        alpha: weight of the KD term; CE gets ``1 - alpha``.
        beta: the generalised JSD's ``beta``.
        skew: skew KL / skew reverse KL's mixture weight.
        chunk_tokens: tokens per chunk of the token loss.
        vocab_size: the shared vocabulary size (set by the task).
        lmbda: share of on-policy batches (GKD; 0: off).
        seq_kd: train on the teacher's decoded responses.
        generation: response generation settings (see ``causal_kd``).
        hidden_weight: weight of the hidden-state term (>= 0).
        projection: ``factory(student_width, teacher_width)`` used when the widths differ.
    """
    return HiddenTokenDistillationLoss(
        divergence_named(divergence, beta, skew), temperature=temperature, alpha=alpha,
        chunk_tokens=chunk_tokens, vocab_size=vocab_size, lmbda=lmbda, seq_kd=seq_kd,
        generation=CausalGeneration.from_config(
            dict(generation) if generation is not None else None),
        hidden_weight=hidden_weight, projection=projection)
