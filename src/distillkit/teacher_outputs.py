"""Teacher logits computed once per teacher + data + preprocessing, cached on disk, reused.

Logit-only losses need nothing from the teacher but its logits on the training examples, so
the run computes them in one batched inference pass and stores them as a float32 ``.npy``
under ``<cache>/teacher_outputs/<key>.npy`` (memory-mapped when read). The key hashes the
teacher's weights, the split's token ids, ``max_length`` and the precision, so every later run
and every sweep job over the same teacher and data reads the file instead of running the
teacher again. Raw (pre-temperature) logits are stored, so temperature sweeps share them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch

from distillkit.assets import cache_root
from distillkit.data import TextClassificationData
from distillkit.data.sampling import restore_order
from distillkit.engine import EngineSettings, predict_logits
from distillkit.io import write_file
from distillkit.locks import file_lock
from distillkit.models import ModelBundle, update_weights_digest

log = logging.getLogger(__name__)


def _weights_digest(teacher: ModelBundle) -> hashlib._Hash:
    digest = hashlib.sha256()
    update_weights_digest(teacher.model, digest)
    return digest


def _key(weights: hashlib._Hash, data: TextClassificationData, role: str,
         dtype: torch.dtype | None) -> str:
    """Cache key: the teacher's weights digest plus the split's token ids and preprocessing."""
    digest = weights.copy()
    ds = data.tokenized[role]
    for column in ("input_ids", "token_type_ids"):
        if column in ds.column_names:
            for ids in ds[column]:
                digest.update(np.asarray(ids, dtype=np.int32).tobytes())
                digest.update(b"|")
    digest.update(f"{data.max_length}|{dtype}".encode())
    return digest.hexdigest()[:24]


def attach_teacher_logits(teacher: ModelBundle, data: TextClassificationData,
                          settings: EngineSettings) -> dict[str, str]:
    """Computes (or loads) the teacher's logits for every distillation split and attaches them.

    Args:
        teacher: the ready teacher (after the teacher stage).
        data: tokenised data; each of :meth:`~TextClassificationData.distil_roles` gets a
            ``teacher_logits`` column.
        settings: the run's loop settings (device, precision, eval batch size, progress).

    Returns:
        For each split, where its logits came from: ``cache`` or ``computed``.
    """
    device = settings.resolve_device()
    dtype = settings.autocast_dtype(device)
    weights = _weights_digest(teacher)  # hashed once, shared by every split's key
    sources = {}
    for role in data.distil_roles():
        key = _key(weights, data, role, dtype)
        path = cache_root() / "teacher_outputs" / f"{key}.npy"
        with file_lock(path.with_suffix(".lock")):  # parallel sweep jobs: one computes
            logits, sources[role] = _load_or_compute(teacher, data, role, path, settings)
        data.attach_teacher_logits(role, logits)
    return sources


def _load_or_compute(teacher: ModelBundle, data: TextClassificationData, role: str,
                     path: Path, settings: EngineSettings) -> tuple[np.ndarray, str]:
    """The split's logits from ``path``, or computed now and cached there; and which it was."""
    if path.is_file():
        logits = np.load(path, mmap_mode="r")
        log.info("teacher logits for '%s' (%d x %d) read from cache %s: no teacher pass",
                 role, *logits.shape, path)
        return logits, "cache"
    start = time.perf_counter()
    logits = compute_logits(teacher, data, role, settings)
    write_file(path, lambda fh, a=logits: np.save(fh, a))
    log.info("teacher logits for '%s' (%d x %d) computed in %.0fs, cached at %s",
             role, *logits.shape, time.perf_counter() - start, path)
    return logits, "computed"


def compute_logits(teacher: ModelBundle, data: TextClassificationData, role: str,
                   settings: EngineSettings) -> np.ndarray:
    """The teacher's raw logits for every example of a tokenised split, in dataset order.

    One inference pass over length-sorted batches of ``settings.eval_batch_size`` with the
    run's device and precision; float32, shape ``(examples, labels)``.
    """
    device = settings.resolve_device()
    loader = data.loader(role, settings.eval_batch_size, num_workers=settings.num_workers)
    logits = predict_logits(teacher.model, loader, device, settings.autocast_dtype(device),
                            desc=f"teacher logits {role}", progress=settings.progress).numpy()
    return restore_order(loader.batch_sampler, logits)  # length-sorted batches
