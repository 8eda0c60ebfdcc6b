"""Causal-LM distillation pieces: token-level divergences, sparse (top-k) teacher targets and
the chunked token-level KD loss. See ``docs/causal-lm-losses.md``."""

from distillkit.causal.token_loss import TokenDistillationLoss

__all__ = ["TokenDistillationLoss"]
