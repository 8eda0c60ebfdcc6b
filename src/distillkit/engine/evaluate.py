"""Evaluation of a classifier on a loader."""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from distillkit.engine.outputs import CACHED_KEYS
from distillkit.runtime.distributed import SINGLE, DistEnv

# Batch entries that are targets, not model inputs.
NON_INPUT_KEYS = frozenset({"labels"}) | CACHED_KEYS
# Batch entries named ``loss_*`` go to the loss only (e.g. the step-by-step task of each row).
LOSS_ONLY_PREFIX = "loss_"


def model_inputs(batch: dict, device: torch.device) -> dict:
    """The batch's model inputs (all but labels, precomputed teacher outputs and ``loss_*``
    entries) on ``device``."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()
            if k not in NON_INPUT_KEYS and not k.startswith(LOSS_ONLY_PREFIX)}


def loss_inputs(batch: dict, device: torch.device) -> dict:
    """The batch's ``labels`` and ``loss_*`` entries on ``device`` (what only the loss reads)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()
            if k == "labels" or k.startswith(LOSS_ONLY_PREFIX)}


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    desc: str = "eval",
    progress: bool = True,
    dist: DistEnv = SINGLE,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``loader``.

    In a data-parallel run (``dist``) each rank evaluates its shard of the split and the
    counts and sums are added up over the ranks: every rank returns the whole split's metrics.

    Returns:
        ``{"accuracy": ..., "loss": ..., "examples": ..., "seconds": ...}`` where ``seconds``
        is the wall time of the forward passes (batches already built; the slowest rank's).
    """
    was_training = model.training
    model.eval()
    ctx = _autocast(device, autocast_dtype)
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    batches = list(loader)
    start = time.perf_counter()
    for batch in tqdm(batches, desc=desc, leave=False, disable=not progress):
        labels = batch["labels"].to(device, non_blocking=True)
        with ctx:
            logits = model(**model_inputs(batch, device)).logits.float()
        correct += (logits.argmax(-1) == labels).sum()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        seen += labels.numel()
    totals = torch.stack([correct.double(), loss_sum,
                          torch.tensor(float(seen), dtype=torch.float64, device=device)])
    accuracy, loss, seen = dist.all_reduce(totals).tolist()  # the only host sync
    seconds = dist.all_reduce(torch.tensor([time.perf_counter() - start]), op="max").item()
    model.train(was_training)
    seen = max(int(seen), 1)
    return {"accuracy": accuracy / seen, "loss": loss / seen, "examples": seen,
            "seconds": seconds}


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    desc: str = "predict",
    progress: bool = True,
) -> torch.Tensor:
    """The model's logits for every example of ``loader``, in order, as a float32 CPU tensor."""
    was_training = model.training
    model.eval().to(device)
    ctx = _autocast(device, autocast_dtype)
    chunks = []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        with ctx:
            chunks.append(model(**model_inputs(batch, device)).logits.float())
    model.train(was_training)
    return torch.cat(chunks).cpu()
