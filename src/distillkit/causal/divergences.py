"""Token-level divergences between the teacher's distribution ``p`` and the student's ``q``.

Each divergence is a small module with one call signature::

    values = divergence(student_logits, teacher, temperature)   # [...] per token

``student_logits`` is ``[..., V]``; ``teacher`` is ``[..., V]`` dense teacher logits or a
:class:`~distillkit.causal.topk.TopKTargets` (sparse targets; see
:mod:`distillkit.causal.topk`). Both sides are divided by ``temperature`` and turned into
float32 log-probabilities (:func:`~distillkit.causal.topk.log_distributions`), and
:meth:`TokenDivergence.divergence` ``(log_p, log_q)`` returns one value per token, unscaled and
unreduced, so the caller masks and averages. :meth:`TokenDivergence.scale` is the factor the
KD term carries for a temperature (see below).

Every formula is computed in log space, mixtures ``log(a p + b q)`` by ``logsumexp``. The
log-probabilities must be finite: :func:`~distillkit.causal.topk.log_distributions` floors
the teacher's (and the top-k buckets) at :data:`~distillkit.causal.topk.LOG_FLOOR`
(``exp(LOG_FLOOR)`` is exactly 0 in float32), so a zero-probability entry (a ``-inf`` teacher
logit, the empty "rest" bucket of top-k targets with ``k = V``) contributes ``0 * finite = 0``
instead of ``NaN``; the student's come from finite logits (an LM head).

Temperature factor (:meth:`TokenDivergence.scale`): Hinton et al. (2015) multiply the softened
KL by ``T**2`` because its gradient falls as ``1 / T**2``. The same holds for every smooth
divergence here (forward/reverse KL, generalised JSD, skew KL/RKL: near ``p = q`` each is a
multiple of the chi-square distance, quadratic in the logit difference over ``T``), so they
all carry ``T**2``; MiniLLM, GKD and DistiLLM train at ``T = 1``, where the factor is 1. Total
variation is not smooth at ``p = q``: its value and gradient fall as ``1 / T``, so it carries
``T``. With these factors the gradient size does not change with ``T`` (tested), and
``loss.alpha`` keeps the balance against the cross-entropy.
"""

from __future__ import annotations

import abc

import torch
from torch import nn

from distillkit.causal.topk import TopKTargets, log_distributions
from distillkit.errors import ConfigError


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``KL(a || b) = sum_i a_i (log a_i - log b_i)`` over the last dim (finite inputs; the
    product is taken in place, one vocabulary-size temporary fewer)."""
    return (log_a - log_b).mul_(log_a.exp()).sum(dim=-1)


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, weight: float) -> torch.Tensor:
    """``log(weight * a + (1 - weight) * b)`` by ``logsumexp`` (finite inputs)."""
    if weight >= 1.0:
        return log_a
    if weight <= 0.0:
        return log_b
    w = torch.tensor([weight, 1.0 - weight], dtype=log_a.dtype, device=log_a.device).log()
    return torch.logaddexp(log_a + w[0], log_b + w[1])


def _unit_interval(name: str, value: float, example: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"loss.{name} must be in [0, 1], got {value}; try loss.{name}={example}")
    return float(value)


class TokenDivergence(nn.Module, metaclass=abc.ABCMeta):
    """Base of the token-level divergences: ``divergence(student_logits, teacher, T)``."""

    @abc.abstractmethod
    def divergence(self, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        """The divergence per token.

        Args:
            log_p: ``[..., S]`` teacher log-probabilities over a support of ``S`` entries
                (the vocabulary, or the ``k + 1`` buckets of top-k targets), finite.
            log_q: ``[..., S]`` student log-probabilities over the same support, finite.

        Returns:
            ``[...]`` float32 values, one per token.
        """

    def scale(self, temperature: float) -> float:
        """The factor the KD term carries at ``temperature`` (``T**2``; see the module)."""
        return float(temperature) ** 2

    def forward(self, student_logits: torch.Tensor, teacher: torch.Tensor | TopKTargets,
                temperature: float = 1.0) -> torch.Tensor:
        """Per-token divergence of the tempered distributions (no ``scale`` factor).

        Args:
            student_logits: ``[..., V]``.
            teacher: ``[..., V]`` dense teacher logits, or top-k targets of the same tokens.
            temperature: ``T`` > 0.

        Returns:
            ``[...]`` float32.
        """
        log_p, log_q = log_distributions(student_logits, teacher, temperature)
        return self.divergence(log_p, log_q)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_v a_v b_v`` over the last dim as a batched matrix product (no product tensor)."""
    return (a.unsqueeze(-2) @ b.unsqueeze(-1)).squeeze(-1).squeeze(-1)


class ForwardKL(TokenDivergence):
    """Forward KL ``KL(p || q) = sum_v p_v log(p_v / q_v)``: mass-covering (the student must put
    probability wherever the teacher does). Hinton, Vinyals & Dean (2015), "Distilling the
    Knowledge in a Neural Network"; the usual token-level KD of a causal LM.

    Computed as ``p . log p - p . log q`` (two dot products): no vocabulary-size temporary
    besides ``p``, and the backward allocates one.
    """

    def divergence(self, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        p = log_p.exp()
        return _dot(p, log_p) - _dot(p, log_q)


class ReverseKL(TokenDivergence):
    """Reverse KL ``KL(q || p) = sum_v q_v log(q_v / p_v)``: mode-seeking (the student may
    ignore teacher modes it cannot fit). Gu, Dong, Wei & Huang (2024), "MiniLLM: Knowledge
    Distillation of Large Language Models" (ICLR 2024), token level."""

    def divergence(self, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        return _kl(log_q, log_p)


class GeneralizedJSD(TokenDivergence):
    """Generalised Jensen-Shannon divergence, as TRL's GKD trainer defines it.

    ``JSD_beta(p, q) = beta * KL(p || m) + (1 - beta) * KL(q || m)``, ``m = beta * p + (1 - beta)
    * q``, with ``p`` the teacher and ``q`` the student. From Agarwal et al. (2024), "On-Policy
    Distillation of Language Models: Learning from Self-Generated Mistakes" (ICLR 2024), Eq. 1,
    in the direction of TRL's ``GKDTrainer.generalized_jsd_loss`` (huggingface/trl,
    ``trl/trainer/gkd_trainer.py``): the mixture is ``logsumexp(student + log(1 - beta),
    teacher + log(beta))``, and ``beta`` weighs ``KL(teacher || m)``.

    Which way ``beta`` goes: small ``beta`` behaves like forward KL, large ``beta`` like reverse
    KL (``JSD_beta / beta -> KL(p || q)`` as ``beta -> 0``, ``JSD_beta / (1 - beta) -> KL(q ||
    p)`` as ``beta -> 1``). As in TRL, the end points are special-cased: ``beta = 0`` returns
    forward KL ``KL(p || q)`` exactly and ``beta = 1`` reverse KL ``KL(q || p)`` (the formula
    itself would give 0 there). ``beta = 0.5`` is the symmetric JSD.

    Args:
        beta: in ``[0, 1]`` (TRL's default 0.5).

    Raises:
        ConfigError: for ``beta`` outside ``[0, 1]``.
    """

    def __init__(self, beta: float = 0.5) -> None:
        super().__init__()
        self.beta = _unit_interval("beta", beta, 0.5)

    def divergence(self, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        if self.beta == 0.0:
            return _kl(log_p, log_q)
        if self.beta == 1.0:
            return _kl(log_q, log_p)
        log_m = _log_mix(log_p, log_q, self.beta)
        return self.beta * _kl(log_p, log_m) + (1.0 - self.beta) * _kl(log_q, log_m)


class TotalVariation(TokenDivergence):
    """Total variation distance ``TVD(p, q) = 0.5 * sum_v |p_v - q_v|`` (in ``[0, 1]``).

    Wen, Li, Du & Mou (2023), "f-Divergence Minimization for Sequence-Level Knowledge
    Distillation" (ACL 2023), token level; also one of DistiLLM's baselines. It carries ``T``
    rather than ``T**2`` (see the module docstring).
    """

    def divergence(self, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)

    def scale(self, temperature: float) -> float:
        """``T``: total variation's gradient falls as ``1 / T``, not ``1 / T**2``."""
        return float(temperature)


class SkewKL(TokenDivergence):
    """Skew KL ``SKL_a(p, q) = KL(p || a * p + (1 - a) * q)`` with ``a`` = ``skew``.

    Ko, Kim, Chen & Yun (2024), "DistiLLM: Towards Streamlined Distillation for Large Language
    Models" (ICML 2024): mixing a little of the teacher into the student keeps the divergence
    finite and its gradient bounded where ``q`` is tiny. ``skew = 0`` is forward KL, ``skew =
    1`` is 0.

    Args:
        skew: the skew coefficient ``a`` in ``[0, 1]`` (DistiLLM's default 0.1).

    Raises:
        ConfigError: for ``skew`` outside ``[0, 1]``.
    """

    def __init__(self, skew: float = 0.1) -> None:
        super().__init__()
        self.skew = _unit_interval("skew", skew, 0.1)

    def divergence(self, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        return _kl(log_p, _log_mix(log_p, log_q, self.skew))


class SkewReverseKL(TokenDivergence):
    """Skew reverse KL ``SRKL_a(p, q) = KL(q || (1 - a) * p + a * q)`` with ``a`` = ``skew``.

    Ko et al. (2024), DistiLLM (ICML 2024), the reverse-KL counterpart of :class:`SkewKL`.
    ``skew = 0`` is reverse KL ``KL(q || p)``, ``skew = 1`` is 0.

    Args:
        skew: the skew coefficient ``a`` in ``[0, 1]`` (DistiLLM's default 0.1).

    Raises:
        ConfigError: for ``skew`` outside ``[0, 1]``.
    """

    def __init__(self, skew: float = 0.1) -> None:
        super().__init__()
        self.skew = _unit_interval("skew", skew, 0.1)

    def divergence(self, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        return _kl(log_q, _log_mix(log_p, log_q, 1.0 - self.skew))
