"""Teacher logits computed once per teacher + data + preprocessing, cached on disk, reused.

Logit-only losses need nothing from the teacher but its logits on the training examples, so
the run computes them in one batched inference pass and stores them as a float32 ``.npy``
under ``<cache>/teacher_outputs/<key>.npy``, memory-mapped when read: batches read their own
rows from disk, so no split's logits need to be held in RAM. The key hashes the
teacher's weights, the split's token ids, ``max_length`` and the teacher's precision
(``trainer.teacher_precision``: the teacher runs with its weights cast), so every later run
and every sweep job over the same teacher and data reads the file instead of running the
teacher again. Raw (pre-temperature) logits are stored, so temperature sweeps share them.

An ensemble teacher (:mod:`distillkit.models.ensemble`) caches each member's logits under the
member's own key (the same file a run with that member alone would use), then the combined
logits under ``ensemble-<key>.npy``, keyed by the members' keys, weights and combine rule: a
sweep over the weights runs no member twice, and a repeated run reads the combined file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distillkit.data import TextClassificationData
from distillkit.data.sampling import restore_order
from distillkit.engine import EngineSettings, frozen, predict_logits
from distillkit.models import EnsembleTeacher, ModelBundle, combine_logits, update_weights_digest
from distillkit.runtime.assets import cache_root
from distillkit.runtime.io import write_file
from distillkit.runtime.locks import file_lock

log = logging.getLogger(__name__)


def weights_digest(teacher: ModelBundle) -> hashlib._Hash:
    digest = hashlib.sha256()
    update_weights_digest(teacher.model, digest)
    return digest


def ids_key(weights: hashlib._Hash, columns: Iterable[Iterable[Sequence[int]]],
            max_length: int | None, dtype: torch.dtype | None) -> str:
    """Cache key: the teacher's weights digest plus token-id rows (each column's rows in
    order), ``max_length`` and the teacher's precision."""
    digest = weights.copy()
    for rows in columns:
        for ids in rows:
            digest.update(np.asarray(ids, dtype=np.int32).tobytes())
            digest.update(b"|")
    digest.update(f"{max_length}|weights:{dtype or torch.float32}".encode())
    return digest.hexdigest()[:24]


def split_key(weights: hashlib._Hash, data: TextClassificationData, role: str,
              dtype: torch.dtype | None) -> str:
    """Cache key: the teacher's weights digest plus the split's token ids and preprocessing."""
    ds = data.tokenized[role]
    columns = [ds[c] for c in ("input_ids", "token_type_ids") if c in ds.column_names]
    return ids_key(weights, columns, data.max_length, dtype)


def keyed_entry(folder: str, base_key: str, spec: dict[str, Any]) -> Path:
    """The cache directory ``<cache>/<folder>/<key>`` of an entry derived from a split's key
    (:func:`split_key` or :func:`ids_key`) and what the entry stores (``spec``)."""
    digest = hashlib.sha256(f"{base_key}|{json.dumps(spec, sort_keys=True)}".encode())
    return cache_root() / folder / digest.hexdigest()[:24]


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
    dtype = settings.teacher_dtype(device)
    ensemble = teacher if isinstance(teacher, EnsembleTeacher) else None
    members = ({n: m for n, m in ensemble.members.items() if ensemble.weights[n] > 0}
               if ensemble else {"": teacher})
    # before any cast: the fp32 weights name the teacher; hashed once, shared by every split
    weights = {name: weights_digest(member) for name, member in members.items()}
    sources = {}
    for role in data.distil_roles():
        keys = {name: split_key(weights[name], data, role, dtype) for name in members}
        if ensemble is None:
            logits, sources[role] = _cached(teacher, data, role, keys[""], settings)
        else:
            logits, sources[role] = _cached_ensemble(ensemble, members, keys, data, role,
                                                     settings)
        data.attach_teacher_logits(role, logits)
    return sources


def logits_path(key: str) -> Path:
    return cache_root() / "teacher_outputs" / f"{key}.npy"


def _cached(teacher: ModelBundle, data: TextClassificationData, role: str, key: str,
            settings: EngineSettings) -> tuple[np.ndarray, str]:
    path = logits_path(key)
    with file_lock(path.with_suffix(".lock")):  # parallel sweep jobs: one computes
        return _load_or_compute(teacher, data, role, path, settings)


def _cached_ensemble(ensemble: EnsembleTeacher, members: dict[str, ModelBundle],
                     keys: dict[str, str], data: TextClassificationData, role: str,
                     settings: EngineSettings) -> tuple[np.ndarray, str]:
    """The combined logits of a split: from their cache file, or combined now from the members'
    (each from its own cache, or computed now) and cached."""
    spec = {"combine": ensemble.combine,
            "members": sorted([keys[n], ensemble.weights[n]] for n in members)}
    key = "ensemble-" + hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:24]
    path = logits_path(key)
    with file_lock(path.with_suffix(".lock")):
        if path.is_file():
            logits = np.load(path, mmap_mode="r")
            log.info("ensemble logits for '%s' (%d x %d) read from cache %s: no teacher pass",
                     role, *logits.shape, path)
            return logits, "cache"
        parts = {}
        for name, member in members.items():
            log.info("ensemble member '%s': teacher logits for '%s'", name, role)
            parts[name], _ = _cached(member, data, role, keys[name], settings)
        combined = combine_logits([torch.from_numpy(np.array(parts[n])) for n in members],
                                  [ensemble.weights[n] for n in members],
                                  ensemble.combine).numpy()
        write_file(path, lambda fh: np.save(fh, combined))
        log.info("ensemble logits for '%s' (%s of %s) cached at %s", role, ensemble.combine,
                 ", ".join(members), path)
        return np.load(path, mmap_mode="r"), "computed"


def store_logits(path: Path, logits: np.ndarray, role: str, seconds: float) -> None:
    """Writes a split's logits cache entry: ``<key>.npy`` and, beside it, ``<key>.json`` with
    the seconds of the teacher pass that computed them."""
    timing = json.dumps({"role": role, "examples": len(logits),
                         "forward_seconds": round(seconds, 3)}).encode()
    write_file(path.with_suffix(".json"), lambda fh: fh.write(timing))
    write_file(path, lambda fh: np.save(fh, logits))


def _load_or_compute(teacher: ModelBundle, data: TextClassificationData, role: str,
                     path: Path, settings: EngineSettings) -> tuple[np.ndarray, str]:
    """The split's logits from ``path``, or computed now and cached there; and which it was.

    Beside ``<key>.npy`` a ``<key>.json`` records the seconds the teacher's forward passes
    took when the logits were computed (what :func:`teacher_evaluation` reports as the
    teacher's inference time).
    """
    if path.is_file():
        logits = np.load(path, mmap_mode="r")
        log.info("teacher logits for '%s' (%d x %d) read from cache %s: no teacher pass",
                 role, *logits.shape, path)
        return logits, "cache"
    start = time.perf_counter()
    logits, seconds = _timed_logits(teacher, data, role, settings)
    store_logits(path, logits, role, seconds)
    log.info("teacher logits for '%s' (%d x %d) computed in %.0fs, cached at %s",
             role, *logits.shape, time.perf_counter() - start, path)
    del logits  # from here on the split's logits are read from disk, like a cache hit
    return np.load(path, mmap_mode="r"), "computed"


def teacher_evaluation(teacher: ModelBundle, data: TextClassificationData, role: str,
                       settings: EngineSettings) -> dict[str, Any]:
    """The teacher's accuracy and mean cross-entropy on a split, from its cached logits.

    A fixed teacher gives the same logits on the same token ids every time, so its evaluation
    is computed once with the logits (the same cache key, in the same precision) and read back
    by every later run: the values equal a live evaluation's (same forward passes), and
    ``seconds`` is the forward time measured when the logits were computed.

    Returns:
        ``accuracy``, ``loss``, ``examples``, ``seconds`` (as :func:`distillkit.engine.evaluate`)
        and ``evaluation``: ``cache`` or ``computed`` (where it came from).
    """
    device = settings.resolve_device()
    key = split_key(weights_digest(teacher), data, role, settings.teacher_dtype(device))
    logits, source = _cached(teacher, data, role, key, settings)
    labels = torch.as_tensor(np.asarray(data.tokenized[role]["labels"]), dtype=torch.long)
    scores = torch.from_numpy(np.array(logits, dtype=np.float32))
    loss = F.cross_entropy(scores.double(), labels, reduction="sum").item()
    timing = logits_path(key).with_suffix(".json")
    seconds = json.loads(timing.read_text())["forward_seconds"] if timing.is_file() else None
    examples = max(len(labels), 1)
    return {"accuracy": (scores.argmax(-1) == labels).sum().item() / examples,
            "loss": loss / examples, "examples": len(labels), "seconds": seconds,
            "evaluation": source}


def compute_logits(teacher: ModelBundle, data: TextClassificationData, role: str,
                   settings: EngineSettings) -> np.ndarray:
    """The teacher's raw logits for every example of a tokenised split, in dataset order.

    One inference pass over length-sorted batches (:func:`inference_batch_size`, halved on
    a GPU out-of-memory) on the run's device, the teacher's weights cast to
    ``trainer.teacher_precision``; float32, shape ``(examples, labels)``.
    """
    return _timed_logits(teacher, data, role, settings)[0]


def _timed_logits(teacher: ModelBundle, data: TextClassificationData, role: str,
                  settings: EngineSettings) -> tuple[np.ndarray, float]:
    """:func:`compute_logits` and the seconds its inference pass took (forward passes and
    padding the batches, which is a small share of it)."""
    device = settings.resolve_device()
    model = frozen(teacher.model, device, settings.teacher_dtype(device))
    batch_size = inference_batch_size(settings, device)
    while True:
        loader = data.loader(role, batch_size, num_workers=settings.num_workers)
        start = time.perf_counter()
        try:  # the longest batches come first, so a batch too large fails at once
            logits = predict_logits(model, loader, device, desc=f"teacher logits {role}",
                                    progress=settings.progress).numpy()
            break
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            torch.cuda.empty_cache()
            log.info("teacher logits: out of memory, retrying with batch size %d", batch_size)
    seconds = time.perf_counter() - start
    logits = restore_order(loader.batch_sampler, logits)  # length-sorted batches
    return logits, seconds


def inference_batch_size(settings: EngineSettings, device: torch.device) -> int:
    """Batch size of the teacher-logits pass: ``trainer.teacher_batch_size``, or when null,
    on a GPU the largest that fits (from 1024 down, halved on out-of-memory), on a CPU
    ``trainer.eval_batch_size`` (larger batches do not run faster there)."""
    if settings.teacher_batch_size is not None:
        return int(settings.teacher_batch_size)
    return 1024 if device.type == "cuda" else int(settings.eval_batch_size)
