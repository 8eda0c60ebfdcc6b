"""Evaluation of a classifier on a loader."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm


def model_inputs(batch: dict, device: torch.device) -> dict:
    """The batch's model inputs (everything but ``labels``) moved to ``device``."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "labels"}


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    desc: str = "eval",
    progress: bool = True,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``loader``.

    Returns:
        ``{"accuracy": ..., "loss": ..., "examples": ...}``.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    ctx = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else nullcontext())
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        labels = batch["labels"].to(device, non_blocking=True)
        with ctx:
            logits = model(**model_inputs(batch, device)).logits.float()
        correct += (logits.argmax(-1) == labels).sum()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        seen += labels.numel()
    model.train(was_training)
    seen = max(seen, 1)
    return {"accuracy": correct.item() / seen, "loss": loss_sum.item() / seen, "examples": seen}
