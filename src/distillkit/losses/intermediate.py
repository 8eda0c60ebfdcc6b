"""Intermediate-layer distillation terms: hidden states and attention maps, masked to real tokens.

Every term is a small module called as ``term(student, teacher, mask)`` for one layer pair and
returns an unweighted scalar:

* hidden terms get ``[batch, seq, width]`` states (the student's already projected to the
  teacher's width when the term sets ``needs_projection``);
* attention terms get ``[batch, heads, seq, seq]`` attention probabilities; when the head
  counts differ, both sides are averaged over heads first;
* ``mask`` is the ``[batch, seq]`` attention mask (1 = real token): padding never counts;
* ``weights`` (optional, ``[batch]``, >= 0) weigh the examples (Meta-KD's domain-expertise
  weights): each term is a ratio ``sum(numerator) / sum(denominator)`` over the batch (a mean
  over real tokens or token pairs), and the weighted value is
  ``sum_b w_b numerator_b / sum_b w_b denominator_b``. Equal weights give the unweighted value.

``weight`` is the term's weight in the composite loss (see :mod:`distillkit.losses.composite`).
All arithmetic runs in float32, also under bf16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _token_mask(mask: torch.Tensor) -> torch.Tensor:
    return mask.to(torch.float32)


def _token_parts(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example sum of per-token ``values`` ``[batch, seq]`` over real tokens, and their
    count."""
    m = _token_mask(mask)
    return (values * m).sum(1), m.sum(1)


def _pair_mask(mask: torch.Tensor) -> torch.Tensor:
    """``[batch, seq, seq]`` mask of (real, real) token pairs."""
    m = _token_mask(mask)
    return m.unsqueeze(2) * m.unsqueeze(1)


class _Term(nn.Module):
    """Shared attributes of intermediate terms.

    Args:
        weight: the term's weight in the total loss (>= 0).
    """

    feature = "hidden"
    needs_projection = False

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"intermediate term weight must be >= 0, got {weight}")
        self.weight = float(weight)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"

    def parts(self, student: torch.Tensor, teacher: torch.Tensor,
              mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example numerator and denominator ``[batch]`` of the term's mean."""
        raise NotImplementedError

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        """The term's (example-weighted) mean over the batch; an unweighted scalar."""
        num, den = self.parts(student, teacher, mask)
        if weights is not None:
            w = weights.to(torch.float32)
            num, den = num * w, den * w
        return num.sum() / den.sum().clamp_min(1e-12 if weights is not None else 1.0)


class HiddenMSE(_Term):
    """Mean squared error between hidden states, averaged over real tokens and width.

    FitNets (Romero et al., 2015, "FitNets: Hints for Thin Deep Nets") and TinyBERT (Jiao et
    al., 2020, "TinyBERT: Distilling BERT for Natural Language Understanding"), with a learned
    projection when the widths differ.
    """

    needs_projection = True

    def parts(self, student: torch.Tensor, teacher: torch.Tensor,
              mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        per_token = F.mse_loss(student.float(), teacher.float(), reduction="none").mean(-1)
        return _token_parts(per_token, mask)


class HiddenCosine(_Term):
    """``1 - cos(h_s, h_t)`` per token, averaged over real tokens.

    The cosine embedding loss of DistilBERT (Sanh et al., 2019, "DistilBERT, a distilled version
    of BERT"), applied to any mapped layer pair.
    """

    needs_projection = True

    def parts(self, student: torch.Tensor, teacher: torch.Tensor,
              mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos = F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)
        return _token_parts(1.0 - cos, mask)


class GramMMD(_Term):
    """Gram-matrix matching: ``MSE(H_s H_sᵀ / d_s, H_t H_tᵀ / d_t)`` over real token pairs.

    TextBrewer's ``mmd`` intermediate loss (Yang et al., 2020, "TextBrewer: An Open-Source
    Knowledge Distillation Toolkit for NLP"), a linear-kernel form of the neuron-selectivity
    transfer of Huang & Wang (2017, "Like What You Like: Knowledge Distill via Neuron
    Selectivity Transfer"). The token-by-token gram matrices have the same shape whatever the
    widths, so no projection is needed.
    """

    def parts(self, student: torch.Tensor, teacher: torch.Tensor,
              mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gram_s = _Gram.apply(student.float())
        with torch.no_grad():
            gram_t = _Gram.apply(teacher.float())
        pairs = _pair_mask(mask)
        sq = F.mse_loss(gram_s, gram_t, reduction="none")
        return (sq * pairs).sum((1, 2)), pairs.sum((1, 2))


class _Gram(torch.autograd.Function):
    """``X Xᵀ / width`` per example of ``X`` ``[batch, seq, width]``, in float32 (also under
    autocast). The backward pass is one batched product, ``(G + Gᵀ) X / width`` for the
    incoming gradient ``G``, where autograd's would take two."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        with torch.autocast(x.device.type, enabled=False):
            return torch.bmm(x, x.transpose(1, 2)).div_(x.size(-1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.bmm(grad + grad.transpose(1, 2), x).div_(x.size(-1))


def _match_heads(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor,
                                                                        torch.Tensor]:
    """Averages both sides over heads when the head counts differ."""
    s, t = student.float(), teacher.float()
    if s.size(1) != t.size(1):
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    return s, t


class AttentionMSE(_Term):
    """Mean squared error between attention probability maps over real (query, key) pairs.

    TinyBERT's attention-based distillation (Jiao et al., 2020). Differing head counts are
    matched by averaging heads.
    """

    feature = "attention"

    def parts(self, student: torch.Tensor, teacher: torch.Tensor,
              mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = _match_heads(student, teacher)
        pairs = _pair_mask(mask).unsqueeze(1).expand_as(s)
        return ((s - t).pow(2) * pairs).sum((1, 2, 3)), pairs.sum((1, 2, 3))


class AttentionKL(_Term):
    """``KL(A_t || A_s)`` per query row, averaged over real query tokens and heads.

    The self-attention distribution transfer of MiniLM (Wang et al., 2020, "MiniLM: Deep
    Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers").
    Differing head counts are matched by averaging heads.
    """

    feature = "attention"

    def parts(self, student: torch.Tensor, teacher: torch.Tensor,
              mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = _match_heads(student, teacher)
        eps = 1e-12
        per_key = t * (torch.log(t + eps) - torch.log(s + eps))
        per_query = (per_key * _token_mask(mask)[:, None, None, :]).sum(-1)  # [B, H, T]
        rows = _token_mask(mask)[:, None, :].expand_as(per_query)
        return (per_query * rows).sum((1, 2)), rows.sum((1, 2))
