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

Each divergence is written once, as :meth:`TokenDivergence.values_and_grad`: the per-token
values and their gradient with respect to the student's log-probabilities in closed form,
computed with in-place operations (at most about four vocabulary-size tensors at once). The
chunked loss (:mod:`distillkit.causal.chunked`) calls it directly, without autograd;
:meth:`TokenDivergence.divergence` wraps it in an autograd function for every other use. The
closed forms, with ``m`` the mixture of each divergence and ``d/dlog q`` the gradient w.r.t.
the student's log-probabilities (the log-softmax backward follows):

* forward KL ``sum p (log p - log q)``: ``-p``;
* reverse KL ``sum q (log q - log p)``: ``q (log q - log p + 1)``;
* generalised JSD ``b KL(p||m) + (1 - b) KL(q||m)``, ``m = b p + (1 - b) q``:
  ``(1 - b) q (log q - log m)``;
* total variation ``0.5 sum |p - q|``: ``0.5 q sign(q - p)``;
* skew KL ``KL(p||m)``, ``m = a p + (1 - a) q``: ``-(1 - a) p q / m``;
* skew reverse KL ``KL(q||m)``, ``m = (1 - a) p + a q``: ``q (log q - log m + 1 - a q / m)``.

Every formula is computed in log space, mixtures ``log(a p + b q)`` by ``logaddexp``. The
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
import math

import torch
from torch import nn

from distillkit.causal.topk import TopKTargets, log_distributions
from distillkit.errors import ConfigError


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_v a_v b_v`` over the last dim as a batched matrix product (no product tensor)."""
    return (a.unsqueeze(-2) @ b.unsqueeze(-1)).squeeze(-1).squeeze(-1)


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, weight: float) -> torch.Tensor:
    """A new tensor ``log(weight * a + (1 - weight) * b)``, ``0 < weight < 1``, by
    ``logaddexp`` (one temporary)."""
    out = log_b + math.log1p(-weight)
    return torch.logaddexp(out, log_a + math.log(weight), out=out)


def _forward_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = log_p.exp()
    return _dot(p, log_p) - _dot(p, log_q), p.neg_()


def _reverse_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q = log_q.exp()
    d = log_q - log_p
    return _dot(q, d), d.add_(1.0).mul_(q)


def _zero(log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return log_q.new_zeros(log_q.shape[:-1]), torch.zeros_like(log_q)


def _unit_interval(name: str, value: float, example: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"loss.{name} must be in [0, 1], got {value}; try loss.{name}={example}")
    return float(value)


class _Divergence(torch.autograd.Function):
    """Autograd around :meth:`TokenDivergence.values_and_grad` (no gradient to the teacher)."""

    @staticmethod
    def forward(ctx, div: TokenDivergence, log_p: torch.Tensor, log_q: torch.Tensor):
        values, grad = div.values_and_grad(log_p.detach().float(), log_q.detach().float())
        ctx.save_for_backward(grad)
        return values

    @staticmethod
    def backward(ctx, grad_values):
        (grad,) = ctx.saved_tensors
        return None, None, grad * grad_values.unsqueeze(-1)


class TokenDivergence(nn.Module, metaclass=abc.ABCMeta):
    """Base of the token-level divergences: ``divergence(student_logits, teacher, T)``."""

    #: Whether top-k targets with a sampled tail (:mod:`distillkit.causal.topk`) give this
    #: divergence an unbiased value (up to a constant) and gradient at ``T = 1``: true for a
    #: divergence linear in the teacher's probabilities (forward KL).
    unbiased_on_sampled_tail: bool = False

    @abc.abstractmethod
    def values_and_grad(self, log_p: torch.Tensor,
                        log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The divergence per token and its gradient w.r.t. ``log_q``, in closed form.

        Runs without autograd and leaves its inputs untouched.

        Args:
            log_p: ``[..., S]`` float32 teacher log-probabilities over a support of ``S``
                entries (the vocabulary, or the ``k + 1`` buckets of top-k targets), finite.
            log_q: ``[..., S]`` float32 student log-probabilities over the same support, finite.

        Returns:
            ``([...] values, [..., S] d(sum of values)/d log_q)``, float32.
        """

    def divergence(self, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        """The divergence per token, differentiable w.r.t. ``log_q`` (not ``log_p``: the
        teacher is a target).

        Args:
            log_p: ``[..., S]`` teacher log-probabilities, finite.
            log_q: ``[..., S]`` student log-probabilities over the same support, finite.

        Returns:
            ``[...]`` float32 values, one per token.
        """
        return _Divergence.apply(self, log_p, log_q)

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


class ForwardKL(TokenDivergence):
    """Forward KL ``KL(p || q) = sum_v p_v log(p_v / q_v)``: mass-covering (the student must put
    probability wherever the teacher does). Hinton, Vinyals & Dean (2015), "Distilling the
    Knowledge in a Neural Network"; the usual token-level KD of a causal LM."""

    unbiased_on_sampled_tail = True

    @torch.no_grad()
    def values_and_grad(self, log_p: torch.Tensor,
                        log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _forward_kl(log_p, log_q)


class ReverseKL(TokenDivergence):
    """Reverse KL ``KL(q || p) = sum_v q_v log(q_v / p_v)``: mode-seeking (the student may
    ignore teacher modes it cannot fit). Gu, Dong, Wei & Huang (2024), "MiniLLM: Knowledge
    Distillation of Large Language Models" (ICLR 2024), token level."""

    @torch.no_grad()
    def values_and_grad(self, log_p: torch.Tensor,
                        log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _reverse_kl(log_p, log_q)


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

    @torch.no_grad()
    def values_and_grad(self, log_p: torch.Tensor,
                        log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.beta
        if b == 0.0:
            return _forward_kl(log_p, log_q)
        if b == 1.0:
            return _reverse_kl(log_p, log_q)
        log_m = _log_mix(log_p, log_q, b)
        p = log_p.exp()
        values = b * (_dot(p, log_p) - _dot(p, log_m))
        del p
        q = log_q.exp()
        values += (1.0 - b) * (_dot(q, log_q) - _dot(q, log_m))
        return values, log_m.neg_().add_(log_q).mul_(q).mul_(1.0 - b)


class TotalVariation(TokenDivergence):
    """Total variation distance ``TVD(p, q) = 0.5 * sum_v |p_v - q_v|`` (in ``[0, 1]``).

    Wen, Li, Du & Mou (2023), "f-Divergence Minimization for Sequence-Level Knowledge
    Distillation" (ACL 2023), token level; also one of DistiLLM's baselines. It carries ``T``
    rather than ``T**2`` (see the module docstring).
    """

    @torch.no_grad()
    def values_and_grad(self, log_p: torch.Tensor,
                        log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = log_q.exp()
        diff = log_p.exp().neg_().add_(q)  # q - p
        values = 0.5 * torch.linalg.vector_norm(diff, ord=1, dim=-1)
        return values, diff.sign_().mul_(q).mul_(0.5)

    def scale(self, temperature: float) -> float:
        """``T``: total variation's gradient falls as ``1 / T``, not ``1 / T**2``."""
        return float(temperature)


class _Skewed(TokenDivergence):
    """A divergence against a mixture of both distributions, ``skew`` in ``[0, 1]`` (DistiLLM's
    default 0.1); ``ConfigError`` outside it."""

    def __init__(self, skew: float = 0.1) -> None:
        super().__init__()
        self.skew = _unit_interval("skew", skew, 0.1)


class SkewKL(_Skewed):
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

    @torch.no_grad()
    def values_and_grad(self, log_p: torch.Tensor,
                        log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.skew
        if a == 0.0:
            return _forward_kl(log_p, log_q)
        if a == 1.0:
            return _zero(log_q)
        log_m = _log_mix(log_p, log_q, a)
        p = log_p.exp()
        values = _dot(p, log_p) - _dot(p, log_m)
        del p
        # -(1 - a) p q / m = -(1 - a) exp(log p + log q - log m)
        return values, log_m.neg_().add_(log_p).add_(log_q).exp_().mul_(a - 1.0)


class SkewReverseKL(_Skewed):
    """Skew reverse KL ``SRKL_a(p, q) = KL(q || (1 - a) * p + a * q)`` with ``a`` = ``skew``.

    Ko et al. (2024), DistiLLM (ICML 2024), the reverse-KL counterpart of :class:`SkewKL`.
    ``skew = 0`` is reverse KL ``KL(q || p)``, ``skew = 1`` is 0.

    Args:
        skew: the skew coefficient ``a`` in ``[0, 1]`` (DistiLLM's default 0.1).

    Raises:
        ConfigError: for ``skew`` outside ``[0, 1]``.
    """

    @torch.no_grad()
    def values_and_grad(self, log_p: torch.Tensor,
                        log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.skew
        if a == 0.0:
            return _reverse_kl(log_p, log_q)
        if a == 1.0:
            return _zero(log_q)
        d = _log_mix(log_p, log_q, 1.0 - a).neg_().add_(log_q)  # log q - log m
        q = log_q.exp()
        values = _dot(q, d)
        # q (d + 1) - a q^2 / m = q (d + 1 - a exp(d))
        return values, d.exp().mul_(-a).add_(d).add_(1.0).mul_(q)
