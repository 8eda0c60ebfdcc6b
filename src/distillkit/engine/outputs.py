"""Models that only run forward (teachers, evaluated models) and their outputs as plain tensors."""

from __future__ import annotations

import torch
from torch import nn

from distillkit.causal.topk import TopKTargets


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A float32 copy made outside inference mode (the loss may save it for backward)."""
    return t.to(torch.float32, copy=True) if t.is_floating_point() else t.clone()


def plain_outputs(out) -> dict:
    """Model outputs as ordinary float32 tensors: ``logits`` and, when present, the
    ``hidden_states`` / ``attentions`` tuples (a bf16/fp16 teacher's too). A module among the
    outputs (a causal LM's output layer, which the loss applies to the last hidden states
    chunk by chunk: :mod:`distillkit.causal.lean`) is passed through as it is."""
    plain = {}
    for key, value in out.items():
        if isinstance(value, nn.Module):
            plain[key] = value
        elif isinstance(value, torch.Tensor):
            plain[key] = _plain(value)
        elif isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor):
            plain[key] = tuple(_plain(v) for v in value)
    return plain


def frozen(model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> nn.Module:
    """Prepares a model that is only ever run forward: on ``device``, in eval mode, without
    gradients, its weights cast to ``dtype`` (None: unchanged)."""
    model = model.to(device) if dtype is None else model.to(device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


# batch keys holding cached teacher outputs -> the output they stand for
CACHED_OUTPUTS = {"teacher_logits": "logits", "teacher_hidden_states": "hidden_states",
                  "teacher_attentions": "attentions"}
# a causal LM's cached top-k targets (distillkit.data.topk_rows): three batch keys, one output
TOPK_LOG_PROBS, TOPK_INDICES, TOPK_REST = ("teacher_topk_log_probs", "teacher_topk_indices",
                                           "teacher_topk_rest")
TOPK_KEYS = (TOPK_LOG_PROBS, TOPK_INDICES, TOPK_REST)
#: every batch key that holds a cached teacher output (none of them is a model input)
CACHED_KEYS = frozenset(CACHED_OUTPUTS) | frozenset(TOPK_KEYS)


def cached_teacher_outputs(batch: dict, device: torch.device) -> dict:
    """The teacher outputs a batch carries, on ``device``, as a model would return them.

    ``teacher_logits`` is a tensor; ``teacher_hidden_states`` / ``teacher_attentions`` map
    indices of the model's output tuples to tensors (only the layers the loss reads were
    cached) and become tuples with ``None`` at the other indices. The three top-k keys
    (``teacher_topk_log_probs``, ``teacher_topk_indices``, ``teacher_topk_rest``) become
    ``topk``, one :class:`~distillkit.causal.topk.TopKTargets` with leading dims
    ``[batch, seq]``.
    """
    out: dict = {}
    for key, name in CACHED_OUTPUTS.items():
        value = batch.get(key)
        if value is None:
            continue
        if isinstance(value, dict):
            layers = [None] * (max(value) + 1)
            for index, tensor in value.items():
                layers[index] = tensor.to(device, non_blocking=True)
            out[name] = tuple(layers)
        else:
            out[name] = value.to(device, non_blocking=True)
    present = [key for key in TOPK_KEYS if batch.get(key) is not None]
    if present:
        if len(present) != len(TOPK_KEYS):
            raise ValueError(f"the batch carries {', '.join(present)} but not all of "
                             f"{', '.join(TOPK_KEYS)}")
        out["topk"] = TopKTargets(*(batch[key].to(device, non_blocking=True)
                                    for key in TOPK_KEYS))
    return out
