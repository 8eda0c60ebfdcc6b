"""Chunked token-level KD and cross-entropy: never the whole batch's vocabulary logits at once.

A causal LM's output layer turns ``[tokens, hidden]`` into ``[tokens, vocab]`` logits; at
sequence length 1024 and SmolLM2's 49152-token vocabulary that is 192 MiB per float32 copy,
and a naive KD loss keeps several (student and teacher logits, both log-softmaxes, the
elementwise KL and their gradients). :func:`token_losses` instead walks the counted tokens in
chunks of ``chunk_tokens``: for each chunk it computes the student's logits (from its last
hidden states and LM head, or slices given logits), the teacher's targets (from the teacher's
hidden states and head, dense logits or top-k targets), the divergence and the cross-entropy,
and the gradient of the weighted total with respect to the chunk's logits, which it folds
straight into the gradients of the hidden states, head weight and bias (a custom autograd
``Function``; the fused-linear approach of Liger Kernel's losses). Forward and backward
therefore hold one chunk's vocabulary-size tensors at a time (about four ``[chunk, V]``
float32 tensors at the peak for forward KL: the student's log-softmax, the teacher's
log-probabilities, ``p`` and one gradient), the head runs once per chunk (no recomputation),
and the backward only scales the stored gradients. Besides the chunk, the loss holds the
float32 gradient of the head weight (``[V, H]``, what autograd would allocate anyway).

Which tokens count: the caller passes labels already aligned with the positions
(``labels[b, t]`` is the target of position ``t``; see
:func:`~distillkit.causal.token_loss.shift_for_next_token`); a token counts when its label is not
``-100`` and its ``mask`` entry (the attention mask) is 1. KD and cross-entropy are means over
the same counted tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distillkit.causal.divergences import TokenDivergence
from distillkit.causal.topk import TopKTargets, check_vocab, student_buckets, teacher_log_probs
from distillkit.errors import ConfigError

#: Tokens per chunk by default (see docs/causal-lm-losses.md for the measured trade-off).
DEFAULT_CHUNK_TOKENS = 256


@dataclass
class LMHeadInput:
    """A model's last hidden states and its output layer: logits = ``hidden @ weight.T + bias``.

    Attributes:
        hidden: ``[batch, seq, H]`` last-layer hidden states (after the final norm).
        weight: ``[V, H]`` LM-head weight.
        bias: ``[V]`` LM-head bias, or None.
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None


@dataclass
class TokenLosses:
    """Result of :func:`token_losses`.

    Attributes:
        total: ``kd_weight * kd + ce_weight * ce`` (differentiable).
        kd: mean divergence over the counted tokens (detached; 0 when not computed).
        ce: mean cross-entropy over the counted tokens (detached; 0 when not computed).
        tokens: number of counted tokens.
    """

    total: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor
    tokens: int


def check_chunk_tokens(chunk_tokens: int) -> int:
    """``chunk_tokens`` as an int once it is a positive integer.

    Raises:
        ConfigError: otherwise, with one line.
    """
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ConfigError(f"loss.chunk_tokens must be a positive integer, got {chunk_tokens}; "
                          f"try loss.chunk_tokens={DEFAULT_CHUNK_TOKENS}")
    return chunk_tokens


class _Teacher:
    """The teacher's targets of any chunk of flattened token rows (never with gradients)."""

    def __init__(self, teacher: torch.Tensor | LMHeadInput | TopKTargets, tokens: int) -> None:
        self.source = teacher
        if isinstance(teacher, LMHeadInput):
            self.flat = teacher.hidden.detach().reshape(tokens, -1)
        elif isinstance(teacher, TopKTargets):
            self.flat = TopKTargets(teacher.log_probs.reshape(tokens, -1),
                                    teacher.indices.reshape(tokens, -1),
                                    teacher.rest_log_prob.reshape(tokens))
        else:
            self.flat = teacher.detach().reshape(tokens, teacher.shape[-1])

    def rows(self, rows: torch.Tensor, device: torch.device) -> torch.Tensor | TopKTargets:
        if isinstance(self.flat, TopKTargets):
            return self.flat.index(rows.to(self.flat.indices.device)).to(device)
        picked = self.flat[rows.to(self.flat.device)]
        if isinstance(self.source, LMHeadInput):
            with torch.no_grad():
                # the hidden states may be float32 copies of a bf16/fp16 teacher's
                weight = self.source.weight.detach()
                picked = F.linear(picked.to(weight.dtype), weight,
                                  None if self.source.bias is None else self.source.bias.detach())
        return picked.to(device)


@dataclass
class _Plan:
    """Everything the autograd function needs besides the differentiable inputs."""

    rows: torch.Tensor
    labels: torch.Tensor
    teacher: _Teacher | None
    divergence: TokenDivergence | None
    temperature: float
    kd_weight: float
    ce_weight: float
    chunk_tokens: int
    from_hidden: bool


def _log_softmax_backward_(grad: torch.Tensor, log_probs: torch.Tensor,
                           temperature: float) -> torch.Tensor:
    """The gradient w.r.t. logits ``z`` from the gradient w.r.t. ``log_softmax(z / T)``:
    ``(g - softmax * sum(g)) / T``, computed in ``grad``'s own memory."""
    grad = grad.contiguous()
    grad.sub_(log_probs.exp().mul_(grad.sum(dim=-1, keepdim=True)))
    return grad if temperature == 1.0 else grad.div_(temperature)


def _sparse_values_and_grad(divergence: TokenDivergence, log_p: torch.Tensor,
                            log_q: torch.Tensor, target: TopKTargets
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Values over the ``k + 1`` buckets and their gradient w.r.t. the full ``log_q`` (through
    the bucket gather and the rest ``logsumexp``, by autograd)."""
    with torch.enable_grad():
        leaf = log_q.detach().requires_grad_(True)
        buckets = student_buckets(leaf, target)
        values, grad = divergence.values_and_grad(log_p, buckets.detach())
        (full,) = torch.autograd.grad(buckets, leaf, grad_outputs=grad)
    return values, full


def _chunk(plan: _Plan, h: torch.Tensor, weight: torch.Tensor | None,
           bias: torch.Tensor | None, rows: torch.Tensor,
           track: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One chunk: the summed divergence and cross-entropy of its tokens and, when ``track``,
    the gradient of ``kd_weight * kd + ce_weight * ce`` w.r.t. its float32 logits.

    ``h`` is the chunk's hidden states (``weight`` set) or its logits (our own copy). No autograd
    graph holds the chunk: the divergence's closed-form gradient
    (:meth:`~distillkit.causal.divergences.TokenDivergence.values_and_grad`) goes through the
    log-softmax backward in place, the cross-entropy's is ``softmax - onehot``; the logits turn
    into the student's log-probabilities in their own memory (the cross-entropy keeps only its
    per-token ``logsumexp``), and the teacher's chunk into its log-probabilities likewise.
    """
    t = plan.temperature
    kd = ce = h.new_zeros((), dtype=torch.float32)
    dz = log_q = None
    with torch.no_grad():
        z = (F.linear(h, weight, bias) if weight is not None else h).float()
        if plan.ce_weight:  # CE = logsumexp(z) - z[label], at T = 1
            labels = plan.labels[rows].unsqueeze(-1)
            lse1 = torch.logsumexp(z, dim=-1, keepdim=True)
            ce = (lse1 - z.gather(-1, labels)).sum()
        if plan.kd_weight:
            if t != 1.0:
                z.div_(t)
            lse_t = torch.logsumexp(z, dim=-1, keepdim=True)
            log_q = z.sub_(lse_t)  # the logits' memory now holds the student's log-probs
            target = plan.teacher.rows(rows, log_q.device)
            log_p = teacher_log_probs(target, t, in_place=True)
            if isinstance(target, TopKTargets):
                values, grad = _sparse_values_and_grad(plan.divergence, log_p, log_q, target)
            else:
                del target
                values, grad = plan.divergence.values_and_grad(log_p, log_q)
            del log_p
            kd = values.sum()
            if track:
                dz = _log_softmax_backward_(grad.mul_(plan.kd_weight), log_q, t)
            del grad
        if plan.ce_weight and track:  # d CE / d z = softmax(z) - onehot
            # softmax(z) from the log-probs at T: z = T * (log_q + lse_t)
            soft = (z.sub_(lse1) if log_q is None
                    else log_q.mul(t).add_(lse_t.mul(t).sub_(lse1))).exp_()
            soft.mul_(plan.ce_weight)
            soft.scatter_add_(-1, labels, soft.new_full(labels.shape, -plan.ce_weight))
            dz = soft if dz is None else dz.add_(soft)
    return dz, kd, ce


class _ChunkedLoss(torch.autograd.Function):
    """Chunked forward that stores the inputs' gradients; the backward only scales them."""

    @staticmethod
    def forward(ctx, plan: _Plan, x: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None):
        grads = [ctx.needs_input_grad[i] for i in (1, 2, 3)]
        track = any(grads)
        gx = torch.zeros_like(x) if grads[0] else None
        gw = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if grads[1] else None
        gb = torch.zeros(bias.shape, dtype=torch.float32, device=x.device) if grads[2] else None
        kd_sum = torch.zeros((), dtype=torch.float32, device=x.device)
        ce_sum = torch.zeros((), dtype=torch.float32, device=x.device)
        for start in range(0, plan.rows.numel(), plan.chunk_tokens):
            rows = plan.rows[start:start + plan.chunk_tokens]
            with torch.no_grad():
                h = x[rows]
            dz, kd, ce = _chunk(plan, h, weight, bias, rows, track)
            kd_sum += kd
            ce_sum += ce
            if dz is None:
                continue
            with torch.autocast(x.device.type, enabled=False):
                if not plan.from_hidden:
                    gx.index_copy_(0, rows, dz.to(gx.dtype))
                    continue
                if gx is not None:
                    gx.index_copy_(0, rows, (dz.to(weight.dtype) @ weight).to(gx.dtype))
                if gw is not None:
                    gw.addmm_(dz.t(), h.float())
                if gb is not None:
                    gb += dz.sum(0)
        ctx.save_for_backward(gx, gw, gb)
        n = max(plan.rows.numel(), 1)
        kd_mean, ce_mean = kd_sum / n, ce_sum / n
        ctx.mark_non_differentiable(kd_mean, ce_mean)
        return plan.kd_weight * kd_sum + plan.ce_weight * ce_sum, kd_mean, ce_mean

    @staticmethod
    def backward(ctx, grad_total, grad_kd, grad_ce):
        del grad_kd, grad_ce
        gx, gw, gb = ctx.saved_tensors
        one = bool(torch.equal(grad_total, torch.ones_like(grad_total)))

        def scaled(grad):  # autograd casts it to the input's dtype (float32 buffers: bf16 heads)
            if grad is None:
                return None
            return grad if one else grad * grad_total.to(grad.dtype)

        return None, scaled(gx), scaled(gw), scaled(gb)


def token_losses(
    student: torch.Tensor | LMHeadInput,
    teacher: torch.Tensor | LMHeadInput | TopKTargets | None,
    labels: torch.Tensor,
    divergence: TokenDivergence | None,
    temperature: float = 1.0,
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
    mask: torch.Tensor | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> TokenLosses:
    """Token-level KD and cross-entropy in one chunked pass over the counted tokens.

    Args:
        student: ``[batch, seq, V]`` student logits, or its last hidden states and LM head
            (the lean path: no full logits exist at all).
        teacher: ``[batch, seq, V]`` dense teacher logits, the teacher's hidden states and head,
            or top-k targets with leading dims ``[batch, seq]``; None when ``kd_weight`` is 0.
        labels: ``[batch, seq]`` aligned targets (``labels[b, t]`` is the target of position
            ``t``), ``-100`` for tokens that do not count.
        divergence: the KD divergence (None when ``kd_weight`` is 0).
        temperature: ``T`` of the divergence (the cross-entropy uses ``T = 1``).
        kd_weight: weight of the mean divergence in ``total`` (0: not computed).
        ce_weight: weight of the mean cross-entropy in ``total`` (0: not computed).
        mask: ``[batch, seq]`` attention mask (1: real token), or None.
        chunk_tokens: counted tokens per chunk.

    Returns:
        :class:`TokenLosses`; ``total = kd_weight * kd + ce_weight * ce`` with ``kd`` and
        ``ce`` the means over the counted tokens.

    Raises:
        ConfigError: for a bad ``chunk_tokens``.
        ValueError: when ``kd_weight`` is set without a teacher or a divergence.
    """
    chunk_tokens = check_chunk_tokens(chunk_tokens)
    if kd_weight and (teacher is None or divergence is None):
        raise ValueError("token_losses: kd_weight > 0 needs a teacher and a divergence")
    counted = labels != -100
    if mask is not None:
        counted = counted & mask.bool()
    tokens = labels.numel()
    rows = counted.reshape(-1).nonzero().squeeze(-1)
    n = max(rows.numel(), 1)
    if isinstance(student, LMHeadInput):
        x, weight, bias = student.hidden.reshape(tokens, -1), student.weight, student.bias
    else:
        x, weight, bias = student.reshape(tokens, student.shape[-1]), None, None
    rows = rows.to(x.device)
    if kd_weight and not isinstance(teacher, TopKTargets):
        check_vocab(x.shape[-1] if weight is None else weight.shape[0],
                    teacher.weight.shape[0] if isinstance(teacher, LMHeadInput)
                    else teacher.shape[-1])
    plan = _Plan(rows=rows, labels=labels.reshape(-1).to(x.device),
                 teacher=None if not kd_weight else _Teacher(teacher, tokens),
                 divergence=divergence, temperature=float(temperature),
                 kd_weight=float(kd_weight) / n, ce_weight=float(ce_weight) / n,
                 chunk_tokens=chunk_tokens, from_hidden=weight is not None)
    total, kd, ce = _ChunkedLoss.apply(plan, x, weight, bias)
    return TokenLosses(total=total, kd=kd, ce=ce, tokens=int(rows.numel()))


def chunked_token_kd(student: torch.Tensor | LMHeadInput,
                     teacher: torch.Tensor | LMHeadInput | TopKTargets,
                     mask: torch.Tensor, divergence: TokenDivergence, temperature: float = 1.0,
                     chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> torch.Tensor:
    """Mean divergence over the tokens where ``mask`` is 1 (no temperature factor).

    Args:
        student: as for :func:`token_losses`.
        teacher: as for :func:`token_losses`.
        mask: ``[batch, seq]``, 1 (or True) where a token counts.
        divergence: the divergence.
        temperature: ``T``.
        chunk_tokens: counted tokens per chunk.
    """
    labels = torch.where(mask.bool(), 0, -100)
    return token_losses(student, teacher, labels, divergence, temperature,
                        chunk_tokens=chunk_tokens).total


def token_cross_entropy(student: torch.Tensor | LMHeadInput, labels: torch.Tensor,
                        mask: torch.Tensor | None = None,
                        chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> torch.Tensor:
    """Mean cross-entropy over the counted tokens (aligned ``labels``, ``-100`` ignored)."""
    return token_losses(student, None, labels, None, kd_weight=0.0, ce_weight=1.0, mask=mask,
                        chunk_tokens=chunk_tokens).total
