"""The ``loss`` options of ``task=causal_lm``: token-level KD with a named divergence.

``loss=causal_kd`` (and its shortcuts ``causal_rkl``, ``causal_jsd``, ``causal_tvd``,
``causal_skew_kl``, ``causal_ce``) all name :func:`causal_kd`, which builds a
:class:`~distillkit.causal.token_loss.TokenDistillationLoss`:
``total = alpha * scale(T) * KD + (1 - alpha) * CE`` (docs/causal-lm-losses.md).
``loss.divergence`` picks the divergence; the task sets ``vocab_size`` from the teacher's and
the student's vocabularies (:func:`~distillkit.causal.vocab.align_vocab`).
"""

from __future__ import annotations

from collections.abc import Mapping

from distillkit.causal.chunked import DEFAULT_CHUNK_TOKENS
from distillkit.causal.divergences import (
    ForwardKL,
    GeneralizedJSD,
    ReverseKL,
    SkewKL,
    SkewReverseKL,
    TokenDivergence,
    TotalVariation,
)
from distillkit.causal.generation import CausalGeneration
from distillkit.causal.token_loss import TokenDistillationLoss
from distillkit.errors import ConfigError

#: ``loss.divergence`` -> what it builds (``beta``: JSD's mixture, ``skew``: skew KL/RKL's).
DIVERGENCES = {
    "fkl": lambda beta, skew: ForwardKL(),
    "rkl": lambda beta, skew: ReverseKL(),
    "jsd": lambda beta, skew: GeneralizedJSD(beta=beta),
    "tvd": lambda beta, skew: TotalVariation(),
    "skl": lambda beta, skew: SkewKL(skew=skew),
    "srkl": lambda beta, skew: SkewReverseKL(skew=skew),
}


def divergence_named(name: str, beta: float = 0.5, skew: float = 0.1) -> TokenDivergence:
    """The divergence ``loss.divergence`` names.

    Raises:
        ConfigError: an unknown name (the message lists the names), or a ``beta``/``skew``
            outside its range.
    """
    if name not in DIVERGENCES:
        raise ConfigError(f"loss.divergence='{name}' is not one of {', '.join(DIVERGENCES)} "
                          "(forward KL, reverse KL, generalised JSD, total variation, skew KL, "
                          "skew reverse KL)")
    return DIVERGENCES[name](float(beta), float(skew))


def causal_kd(divergence: str = "fkl", temperature: float = 1.0, alpha: float = 0.5,
              beta: float = 0.5, skew: float = 0.1, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
              vocab_size: int | None = None, lmbda: float = 0.0, seq_kd: bool = False,
              generation: Mapping | None = None) -> TokenDistillationLoss:
    """Token-level KD of a causal LM with the divergence ``divergence`` names.

    Args:
        divergence: ``fkl`` | ``rkl`` | ``jsd`` | ``tvd`` | ``skl`` | ``srkl``.
        temperature: ``T`` of the KD term.
        alpha: weight of the KD term; cross-entropy on the labels gets ``1 - alpha`` (0:
            cross-entropy alone, and the teacher never runs during training).
        beta: the generalised JSD's ``beta`` (``divergence=jsd``).
        skew: the mixture weight of skew KL / skew reverse KL (``skl``, ``srkl``).
        chunk_tokens: tokens per chunk of the loss (memory against speed).
        vocab_size: the shared vocabulary size (set by the task).
        lmbda: share of batches whose responses the student samples (GKD's on-policy
            fraction; 0: off).
        seq_kd: train on the teacher's decoded responses (sequence-level KD).
        generation: ``max_new_tokens``, ``temperature`` (the student's sampling),
            ``num_beams`` and ``batch_size`` (the teacher's decoding for ``seq_kd``).
    """
    return TokenDistillationLoss(divergence_named(divergence, beta, skew),
                                 temperature=temperature, alpha=alpha,
                                 chunk_tokens=chunk_tokens, vocab_size=vocab_size, lmbda=lmbda,
                                 seq_kd=seq_kd,
                                 generation=CausalGeneration.from_config(
                                     dict(generation) if generation is not None else None))
