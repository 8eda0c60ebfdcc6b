"""The meta-teacher's training loss (Meta-KD's first stage).

From Pan et al., 2021, "Meta-KD: A Meta Knowledge Distillation Framework for Language Model
Compression across Domains" (ACL-IJCNLP): the meta-teacher is trained on every domain with

``loss = sum_i t_i (CE_i + domain_loss_weight * D_i) / sum_i t_i``

* ``t_i``: the example's sample weight, its prototype score (transferability, computed by
  :func:`distillkit.teachers.meta.prototype_scores`; 1 when the batch carries none);
* ``CE_i``: cross-entropy with the gold label;
* ``D_i``: the domain-corruption term. A small domain head reads the mean of the last hidden
  state over real tokens and is trained against corrupted domain labels; the paper corrupts
  them by drawing random domains, which in expectation is the cross-entropy with the batch's
  domain distribution, used here directly (deterministic, lower variance). Domain-specific
  features can only raise this term, so it pushes the encoder towards features every domain
  shares. The head is part of the loss: trained with the teacher, never exported.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from distillkit.losses.contract import KDLoss, LossOutput


def masked_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[batch, seq, width]`` hidden states averaged over real tokens (``mask`` 1), in float32:
    the sentence embedding of the domain term and of the prototype scores."""
    m = mask.to(torch.float32).unsqueeze(-1)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp_min(1.0)


class MetaTeacherLoss(KDLoss):
    """Sample-weighted cross-entropy plus the weighted domain-corruption term.

    Args:
        width: hidden size of the teacher (input of the domain head).
        num_domains: number of domains (output of the domain head).
        domain_loss_weight: weight of the domain term (0: none, no hidden states needed).

    The batch gives ``labels``, and optionally ``loss_sample_weight`` (per-example weights)
    and ``loss_domain`` (domain ids, needed when ``domain_loss_weight > 0``).
    """

    def __init__(self, width: int, num_domains: int, domain_loss_weight: float = 0.0) -> None:
        super().__init__()
        if not domain_loss_weight >= 0:
            raise ValueError(f"domain_loss_weight must be >= 0, got {domain_loss_weight}")
        self.domain_loss_weight = float(domain_loss_weight)
        self.num_domains = int(num_domains)
        self.domain_head = (nn.Sequential(nn.Linear(width, width), nn.Tanh(),
                                          nn.Linear(width, self.num_domains))
                            if self.domain_loss_weight > 0 else None)

    @property
    def needs_teacher(self) -> bool:
        """False: the meta-teacher trains on labels (and domains) alone."""
        return False

    def required_features(self) -> set[str]:
        """The model outputs read: logits, and the hidden states for the domain term."""
        return {"logits", "hidden_states"} if self.domain_head is not None else {"logits"}

    def _domain_term(self, hidden: torch.Tensor, mask: torch.Tensor,
                     domains: torch.Tensor) -> torch.Tensor:
        content = masked_mean_pool(hidden, mask)
        log_probs = F.log_softmax(self.domain_head(content).float(), dim=-1)
        corrupted = F.one_hot(domains, self.num_domains).to(torch.float32).mean(0)
        return -(log_probs * corrupted).sum(-1)

    def forward(self, student: Mapping[str, torch.Tensor], teacher: object,
                batch: Mapping[str, torch.Tensor]) -> LossOutput:
        """The weighted loss of one batch (``student``: the outputs of the model trained)."""
        logits, labels = student["logits"].float(), batch["labels"]
        per_example = F.cross_entropy(logits, labels, reduction="none")
        terms = {"hard": per_example.mean().detach()}
        if self.domain_head is not None:
            domain = self._domain_term(student["hidden_states"][-1], batch["attention_mask"],
                                       batch["loss_domain"])
            terms["domain"] = domain.mean().detach()
            per_example = per_example + self.domain_loss_weight * domain
        weights = batch.get("loss_sample_weight")
        if weights is None:
            total = per_example.mean()
        else:
            w = weights.to(torch.float32)
            total = (per_example * w).sum() / w.sum().clamp_min(1e-12)
            terms["sample_weight"] = w.mean().detach()
        return LossOutput(total=total, terms=terms)
