"""Sparse teacher targets: the teacher's top-k log-probabilities per token plus its remaining mass.

A causal-LM teacher's distribution over a 49k-token vocabulary is mostly a handful of tokens;
storing (or shipping between processes) the whole ``[tokens, vocab]`` float tensor is what
makes offline logits impractical at LLM scale. :class:`TopKTargets` keeps, per token, the
``k`` largest teacher log-probabilities (at ``T = 1``), their vocabulary indices and the log of
the mass left over, and every divergence of :mod:`distillkit.causal.divergences` accepts it in
place of dense teacher logits.

How the comparison works (:func:`log_distributions`): the vocabulary is collapsed to ``k + 1``
buckets, the ``k`` teacher tokens and "everything else".

* Teacher: the bucket log-probabilities are ``[log p_1, ..., log p_k, log r]`` with
  ``r = 1 - sum_i p_i``, exact at ``T = 1``. A temperature ``T`` is applied as
  ``p_i ** (1 / T)`` renormalised over the ``k + 1`` buckets (``log_softmax(bucket_logp / T)``).
  For the ``k`` named tokens this equals the dense tempered distribution up to the rest
  bucket; the rest bucket is an approximation for ``T != 1``: the true tempered mass of the
  other tokens is ``sum_j p_j ** (1 / T)`` over the unnamed ``j``, not ``r ** (1 / T)`` (the
  individual ``p_j`` are not stored). At ``T = 1`` it is exact.
* Student: its bucket log-probabilities are its own (tempered) log-probabilities gathered at
  the ``k`` teacher indices, plus ``log`` of its mass on every other token (a ``logsumexp``
  over the unnamed logits, exact at any ``T``).

With ``k = V`` (every token named, rest mass 0 on both sides) the buckets are the full
distributions and every divergence equals its dense value at any ``T``; with ``k < V`` it
compares the two distributions at the resolution of the ``k + 1`` buckets, which approaches
the dense value as ``k`` grows (quickly for the peaked distributions of a trained LM).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distillkit.errors import ConfigError, ModelError


@dataclass
class TopKTargets:
    """The teacher's top-k targets of a set of tokens (leading dims ``[...]``, e.g. ``[N]`` or
    ``[batch, seq]``).

    Attributes:
        log_probs: ``[..., k]`` float, the teacher's ``k`` largest log-probabilities at
            ``T = 1``, in descending order.
        indices: ``[..., k]`` int64, their vocabulary indices (distinct per token).
        rest_log_prob: ``[...]`` float, ``log`` of the teacher's mass on every other token
            (``-inf`` when ``k`` is the vocabulary size).
    """

    log_probs: torch.Tensor
    indices: torch.Tensor
    rest_log_prob: torch.Tensor

    def __post_init__(self) -> None:
        if self.log_probs.shape != self.indices.shape:
            raise ValueError(f"top-k log_probs {tuple(self.log_probs.shape)} and indices "
                             f"{tuple(self.indices.shape)} differ in shape")
        if self.rest_log_prob.shape != self.log_probs.shape[:-1]:
            raise ValueError(f"top-k rest_log_prob {tuple(self.rest_log_prob.shape)} does not "
                             f"match log_probs {tuple(self.log_probs.shape)}")

    @property
    def k(self) -> int:
        """Number of named teacher tokens per position."""
        return int(self.indices.shape[-1])

    def index(self, where: torch.Tensor | slice) -> TopKTargets:
        """The targets of a subset of tokens: ``where`` indexes the leading dims (a boolean
        mask over them, an index tensor or a slice)."""
        return TopKTargets(self.log_probs[where], self.indices[where], self.rest_log_prob[where])

    def to(self, device: torch.device | str) -> TopKTargets:
        """The same targets on ``device``."""
        return TopKTargets(self.log_probs.to(device), self.indices.to(device),
                           self.rest_log_prob.to(device))


def topk_targets(teacher_logits: torch.Tensor, k: int) -> TopKTargets:
    """The top-k targets of dense teacher logits (at ``T = 1``).

    Args:
        teacher_logits: ``[..., V]`` teacher logits (any float dtype; computed in float32).
        k: number of tokens to keep per position, ``1 <= k <= V``.

    Returns:
        :class:`TopKTargets` with leading dims ``[...]``.

    Raises:
        ConfigError: for ``k`` outside ``[1, V]``.
    """
    vocab = int(teacher_logits.shape[-1])
    if not 1 <= k <= vocab:
        raise ConfigError(f"top-k size must be in [1, {vocab}] (the vocabulary size), got {k}")
    with torch.no_grad():
        log_p = F.log_softmax(teacher_logits.float(), dim=-1)
        values, indices = log_p.topk(k, dim=-1)
        rest = torch.logsumexp(log_p.scatter(-1, indices, float("-inf")), dim=-1)
    return TopKTargets(values, indices, rest)


def log_distributions(student_logits: torch.Tensor, teacher: torch.Tensor | TopKTargets,
                      temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's and the student's tempered log-probabilities over a common support.

    Args:
        student_logits: ``[..., V]`` student logits.
        teacher: ``[..., V]`` dense teacher logits (or log-probabilities: the same after the
            softmax), or :class:`TopKTargets` with leading dims ``[...]``.
        temperature: ``T`` > 0, dividing both sides' logits.

    Returns:
        ``(log_p, log_q)`` in float32: teacher and student log-probabilities over the ``V``
        tokens (dense teacher) or over the ``k + 1`` buckets (top-k teacher; see the module
        docstring).

    Raises:
        ModelError: when dense teacher logits have another vocabulary size than the student's.
    """
    t = float(temperature)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    if not isinstance(teacher, TopKTargets):
        if teacher.shape[-1] != log_q.shape[-1]:
            raise ModelError(f"teacher logits have {teacher.shape[-1]} vocabulary entries, the "
                             f"student's {log_q.shape[-1]}; align both to the shared size "
                             "(distillkit.causal.vocab.align_vocab)")
        return F.log_softmax(teacher.float() / t, dim=-1), log_q
    teacher_buckets = torch.cat([teacher.log_probs.float(),
                                 teacher.rest_log_prob.float().unsqueeze(-1)], dim=-1)
    log_p = F.log_softmax(teacher_buckets / t, dim=-1)
    named = log_q.gather(-1, teacher.indices)
    if teacher.k >= log_q.shape[-1]:
        rest = torch.full_like(named[..., 0], float("-inf"))
    else:
        rest = torch.logsumexp(log_q.scatter(-1, teacher.indices, float("-inf")), dim=-1)
    return log_p, torch.cat([named, rest.unsqueeze(-1)], dim=-1)
