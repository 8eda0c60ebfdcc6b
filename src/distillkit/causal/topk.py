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

**A sampled tail** (``samples = m > 0``; :func:`topk_targets`). The ``k + 1`` buckets tell the
student how much mass the teacher leaves outside its top ``k`` but not on which tokens, so
top-k forward KL is a biased estimate of the dense one: the student's tail is pushed down as a
whole, its shape is learnt from the labels alone. With ``m`` samples the rest mass ``r`` is
replaced by ``m`` draws (with replacement) from the teacher's distribution restricted to the
other tokens: each distinct drawn token ``j`` is named with weight ``r * c_j / m`` (``c_j``: its
draws), and nothing is left in the rest bucket. The expectation of ``r * c_j / m`` is the
teacher's ``p_j``, so the teacher's bucket distribution is an unbiased estimate of the dense
one; forward KL is linear in it, so its value up to the teacher's entropy and its gradient
are unbiased too (in the spirit of the random-sampling KD of Anshumann et al., 2025, "Sparse
Logit Sampling: Accelerating Knowledge Distillation in LLMs", with the top ``k`` kept exact).
The other divergences and ``T != 1`` are not linear in the teacher's weights, and reverse KL
would read the emptied rest bucket as a zero teacher probability: a loss for which the sampled
tail is not unbiased
(:attr:`~distillkit.causal.token_loss.TokenDistillationLoss.reads_sampled_tail`) reads the
entry as plain top-``k`` targets instead (:meth:`TopKTargets.head`: the tail slots' weights add
up to the rest mass they replaced). ``indices`` then hold the ``k`` top tokens in
descending order followed by ``m`` tail slots (distinct tail tokens, unused slots with weight
0 on other distinct tokens); ``rest_log_prob`` is :data:`LOG_FLOOR`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distillkit.errors import ConfigError, ModelError

#: Floor of the teacher's log-probabilities (and the top-k buckets): ``exp`` of it is exactly 0
#: in float32, yet differences with real log-probabilities stay finite.
LOG_FLOOR = -1.0e4


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

    def head(self, k: int) -> TopKTargets:
        """The first ``k`` entries with everything after them folded into the rest bucket:
        targets with a sampled tail read as plain top-k targets (the tail slots' weights add
        up to the rest mass they replaced)."""
        rest = torch.logsumexp(torch.cat([self.log_probs[..., k:].float(),
                                          self.rest_log_prob.float().unsqueeze(-1)], dim=-1),
                               dim=-1)
        return TopKTargets(self.log_probs[..., :k], self.indices[..., :k], rest)

    def index(self, where: torch.Tensor | slice) -> TopKTargets:
        """The targets of a subset of tokens: ``where`` indexes the leading dims (a boolean
        mask over them, an index tensor or a slice)."""
        return TopKTargets(self.log_probs[where], self.indices[where], self.rest_log_prob[where])

    def to(self, device: torch.device | str) -> TopKTargets:
        """The same targets on ``device``."""
        return TopKTargets(self.log_probs.to(device), self.indices.to(device),
                           self.rest_log_prob.to(device))


def topk_targets(teacher_logits: torch.Tensor, k: int, samples: int = 0,
                 generator: torch.Generator | None = None) -> TopKTargets:
    """The top-k targets of dense teacher logits (at ``T = 1``), optionally with a sampled tail.

    Args:
        teacher_logits: ``[..., V]`` teacher logits (any float dtype; computed in float32).
        k: number of tokens to keep per position, ``1 <= k <= V``.
        samples: draws from the teacher's distribution over the other tokens that replace
            the rest bucket (0: none; see the module docstring), ``k + samples <= V``.
        generator: the draws' random generator (on the logits' device).

    Returns:
        :class:`TopKTargets` with leading dims ``[...]`` and ``k + samples`` entries.

    Raises:
        ConfigError: for ``k`` outside ``[1, V]`` or ``k + samples`` above ``V``.
    """
    vocab = int(teacher_logits.shape[-1])
    if not 1 <= k <= vocab:
        raise ConfigError(f"top-k size must be in [1, {vocab}] (the vocabulary size), got {k}")
    if samples < 0 or k + samples > vocab:
        raise ConfigError(f"top-k size {k} plus {samples} tail samples must be at most the "
                          f"vocabulary size ({vocab}); use fewer samples")
    with torch.no_grad():
        log_p = F.log_softmax(teacher_logits.float(), dim=-1)
        values, indices = log_p.topk(k, dim=-1)
        tail = log_p.scatter(-1, indices, float("-inf"))
        rest = torch.logsumexp(tail, dim=-1)
        if samples:
            return _with_sampled_tail(TopKTargets(values, indices, rest), tail, samples,
                                      generator)
    return TopKTargets(values, indices, rest)


def _with_sampled_tail(head: TopKTargets, tail_log_p: torch.Tensor, samples: int,
                       generator: torch.Generator | None) -> TopKTargets:
    """``head`` with its rest bucket replaced by ``samples`` draws from the tail
    (``tail_log_p``: the teacher's log-probabilities, ``-inf`` on the head's tokens)."""
    lead, vocab = tail_log_p.shape[:-1], tail_log_p.shape[-1]
    probs = tail_log_p.reshape(-1, vocab).exp()
    in_head = torch.zeros_like(probs, dtype=torch.bool).scatter_(
        -1, head.indices.reshape(-1, head.k), True)
    empty = probs.sum(-1) <= 0  # no tail mass in float32: any other tokens, weight 0 below
    probs[empty] = (~in_head[empty]).float()
    draws = torch.multinomial(probs, samples, replacement=True, generator=generator)
    counts = torch.zeros_like(probs).scatter_add_(-1, draws, torch.ones_like(draws,
                                                                             dtype=probs.dtype))
    counts[in_head] = -1.0  # unused slots go to other tail tokens, never to the head's
    hits, where = counts.topk(samples, dim=-1)
    weight = head.rest_log_prob.reshape(-1, 1) + torch.log(hits.clamp_min(0) / samples)
    weight = weight.clamp_min(LOG_FLOOR)
    return TopKTargets(torch.cat([head.log_probs, weight.reshape(*lead, samples)], dim=-1),
                       torch.cat([head.indices, where.reshape(*lead, samples)], dim=-1),
                       torch.full_like(head.rest_log_prob, LOG_FLOOR))


def teacher_log_probs(teacher: torch.Tensor | TopKTargets, temperature: float = 1.0,
                      in_place: bool = False) -> torch.Tensor:
    """The teacher's tempered log-probabilities: a detached, floored float32 target.

    Args:
        teacher: ``[..., V]`` dense logits (or log-probabilities), or top-k targets.
        temperature: ``T`` > 0.
        in_place: reuse a dense float32 ``teacher``'s own memory (the caller owns it and
            gives it up: one vocabulary-size tensor instead of three).

    Returns:
        ``[..., V]`` (dense) or ``[..., k + 1]`` (top-k buckets), floored at
        :data:`LOG_FLOOR`.
    """
    t = float(temperature)
    if isinstance(teacher, TopKTargets):
        logits = torch.cat([teacher.log_probs.detach().float(),
                            teacher.rest_log_prob.detach().float().unsqueeze(-1)], dim=-1)
    else:
        logits = teacher.detach().float()
        if not in_place:
            return F.log_softmax(logits if t == 1.0 else logits / t, dim=-1).clamp_min_(LOG_FLOOR)
    if t != 1.0:
        logits.div_(t)
    return logits.sub_(torch.logsumexp(logits, dim=-1, keepdim=True)).clamp_min_(LOG_FLOOR)


def student_buckets(log_q: torch.Tensor, teacher: TopKTargets) -> torch.Tensor:
    """The student's log-probabilities over the ``k + 1`` buckets of ``teacher``.

    Args:
        log_q: ``[..., V]`` the student's (tempered) log-probabilities.
        teacher: top-k targets with leading dims ``[...]``.

    Returns:
        ``[..., k + 1]``: ``log_q`` at the ``k`` teacher indices, then the log of the student's
        mass on every other token (:data:`LOG_FLOOR` when ``k = V``).
    """
    named = log_q.gather(-1, teacher.indices)
    if teacher.k >= log_q.shape[-1]:
        rest = torch.full_like(named[..., 0], LOG_FLOOR)
    else:
        rest = torch.logsumexp(log_q.scatter(-1, teacher.indices, float("-inf")), dim=-1)
    return torch.cat([named, rest.unsqueeze(-1)], dim=-1)


def check_vocab(student_vocab: int, teacher_vocab: int) -> None:
    """Refuses a dense teacher whose vocabulary size is not the student's.

    Raises:
        ModelError: naming both sizes.
    """
    if teacher_vocab != student_vocab:
        raise ModelError(f"teacher logits have {teacher_vocab} vocabulary entries, the "
                         f"student's {student_vocab}; align both to the shared size "
                         "(distillkit.causal.vocab.align_vocab)")


def log_distributions(student_logits: torch.Tensor, teacher: torch.Tensor | TopKTargets,
                      temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's and the student's tempered log-probabilities over a common support.

    The teacher is a target: it is detached (no gradient reaches it), and its log-probabilities
    are floored at :data:`LOG_FLOOR`, so a ``-inf`` teacher logit or an empty rest bucket gives
    a finite log-probability whose ``exp`` is 0.

    Args:
        student_logits: ``[..., V]`` finite student logits.
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
    if not isinstance(teacher, TopKTargets):
        check_vocab(student_logits.shape[-1], teacher.shape[-1])
    logits = student_logits.float()
    log_q = F.log_softmax(logits if t == 1.0 else logits / t, dim=-1)
    log_p = teacher_log_probs(teacher, t)
    if isinstance(teacher, TopKTargets):
        log_q = student_buckets(log_q, teacher)
    return log_p, log_q
