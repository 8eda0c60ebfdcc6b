"""Teacher features computed once per teacher + data + layers, cached on disk, reused.

A layer-wise loss (``loss=mmd``, ``tinybert``, ``hidden``, Meta-KD's intermediate terms) reads
the teacher's hidden states and attention maps at the mapped layers. A frozen teacher in eval
mode gives the same features every time, so the run computes them in one teacher pass over the
training splits (:func:`cache_teacher_features`), stores them memory-mapped in a compact dtype
(``trainer.feature_cache_dtype``; format in :mod:`distillkit.teachers.feature_store`) under
``<cache>/teacher_features/<key>/``, and every batch reads its own examples: the distil loop
then never runs the teacher. The key hashes what the logits cache hashes (the teacher's weights,
the split's token ids, ``max_length``, the teacher's precision) plus the stored layers and the
dtype; temperature, alpha and term weights are not in it, so a sweep over them makes one pass.
When the loss also reads the teacher's logits, the same pass writes the logits cache entry.

The cache is bounded: when the entries would exceed ``trainer.feature_cache_max_gb`` (or the
free disk), the run says so in one line and runs the teacher live instead. A teacher with
dropout on (``trainer.teacher_dropout``) is not deterministic, so it always runs live.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distillkit.data import TextClassificationData
from distillkit.engine import EngineSettings, frozen
from distillkit.engine.evaluate import model_inputs
from distillkit.errors import ConfigError
from distillkit.losses.contract import KDLoss
from distillkit.models import EnsembleTeacher, ModelBundle
from distillkit.runtime.assets import cache_root
from distillkit.runtime.locks import file_lock
from distillkit.teachers.feature_store import DTYPES, FeatureSpec, FeatureStore, FeatureWriter
from distillkit.teachers.outputs import (
    inference_batch_size,
    keyed_entry,
    logits_path,
    split_key,
    store_logits,
    weights_digest,
)
from distillkit.teachers.setup import live_teacher, student_basis

log = logging.getLogger(__name__)
GB = 1e9


@dataclass
class FeatureCache:
    """What the feature cache did in this run (the ``teacher_features`` record).

    Attributes:
        source: ``cache`` (every split read from disk), ``computed`` (at least one split
            computed now) or ``live`` (not cached: the teacher runs every step).
        reason: why ``live``, in words (None otherwise).
        dtype: the storage dtype.
        hidden_layers: the stored ``hidden_states`` indices (0 = embeddings).
        attention_layers: the stored ``attentions`` indices (0 = layer 1).
        tokens: real tokens of the training splits.
        bytes: size of the entries (estimated when ``live``).
        bytes_per_token: ``bytes / tokens``.
        splits: per split, ``cache`` or ``computed`` and the entry's key.
        seconds: the teacher pass's seconds (0 when read from the cache).
        logits: whether the pass also wrote the teacher-logits cache.
    """

    source: str
    dtype: str
    hidden_layers: list[int]
    attention_layers: list[int]
    tokens: int
    bytes: int
    reason: str | None = None
    splits: dict[str, dict[str, str]] = field(default_factory=dict)
    seconds: float = 0.0
    logits: bool = False

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / max(self.tokens, 1)

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_per_token": round(self.bytes_per_token, 1)}

    def describe(self) -> str:
        """One line for the run log."""
        size = (f"{self.dtype}, {self.bytes_per_token:,.0f} B/token, {self.bytes / GB:.2f} GB, "
                f"hidden states {self.hidden_layers or 'none'}, attention maps "
                f"{self.attention_layers or 'none'}")
        if self.source == "live":
            return f"teacher features not cached ({self.reason}): the teacher runs every step"
        return (f"teacher features {'read from the cache' if self.source == 'cache' else 'computed in one teacher pass and cached'}"
                f" ({size}): the teacher does not run while distilling")


def check_settings(dtype: str, max_gb: float) -> None:
    """Refuses an unknown storage dtype or a negative budget (before any stage runs)."""
    if dtype not in DTYPES:
        raise ConfigError(f"trainer.feature_cache_dtype='{dtype}' is not a storage dtype; use "
                          f"one of {', '.join(DTYPES)}")
    if not max_gb >= 0:
        raise ConfigError(f"trainer.feature_cache_max_gb must be >= 0, got {max_gb}; "
                          "0 turns the feature cache off")


def over_budget(size: int, missing: int, max_gb: float) -> str | None:
    """Why cache entries of ``size`` bytes in all, ``missing`` of them not written yet, are
    not cached (over ``trainer.feature_cache_max_gb``, or 90% of the free disk), in words;
    None when they fit."""
    if size > max_gb * GB:
        return f"{size / GB:.2f} GB > trainer.feature_cache_max_gb={max_gb:g}; raise it to cache them"
    if not missing:
        return None
    cache_root().mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache_root()).free
    if missing > 0.9 * free:
        return (f"{missing / GB:.2f} GB needed but {free / GB:.2f} GB free under "
                f"{cache_root()}; free disk space or set DISTILLKIT_CACHE elsewhere")
    return None


def feature_spec(teacher: ModelBundle, loss: KDLoss, dtype: str) -> FeatureSpec | None:
    """The features the loss reads from the teacher, or None when it reads none."""
    wanted = loss.teacher_features()
    hidden = tuple(sorted(wanted.get("hidden_states", ())))
    attentions = tuple(sorted(wanted.get("attentions", ())))
    if not hidden and not attentions:
        return None
    config = student_basis(teacher).model.config
    return FeatureSpec(hidden, attentions, dtype, int(config.hidden_size),
                       int(config.num_attention_heads))


def feature_entry(base_key: str, spec: FeatureSpec) -> Path:
    """The entry of ``spec``'s features for the examples and teacher ``base_key`` names."""
    return keyed_entry("teacher_features", base_key, spec.as_dict())


def cache_teacher_features(teacher: ModelBundle, loss: KDLoss, data: TextClassificationData,
                           settings: EngineSettings, dtype: str, max_gb: float) -> FeatureCache:
    """Attaches the teacher's features to every training split, from the cache or computed
    now in one teacher pass per split; or explains why the teacher runs live instead.

    Args:
        teacher: the ready teacher (after the teacher stage).
        loss: the bound loss (:meth:`~distillkit.losses.contract.KDLoss.teacher_features`).
        data: the tokenised data (its distillation splits get the features).
        settings: the run's loop settings (device, precision, batch size, progress).
        dtype: storage dtype (``trainer.feature_cache_dtype``).
        max_gb: the budget (``trainer.feature_cache_max_gb``), in GB (10^9 bytes).
    """
    spec = feature_spec(teacher, loss, dtype)
    assert spec is not None, "cache_teacher_features needs a loss that reads teacher features"
    basis = student_basis(teacher)
    device = settings.resolve_device()
    precision = settings.teacher_dtype(device)
    roles = data.distil_roles()
    lengths = {r: data.lengths(r) for r in roles}
    weights = weights_digest(basis)
    base_keys = {r: split_key(weights, data, r, precision) for r in roles}
    paths = {r: feature_entry(base_keys[r], spec) for r in roles}
    tokens = sum(sum(v) for v in lengths.values())
    size = sum(spec.nbytes(lengths[r]) for r in roles)
    result = FeatureCache("live", dtype, list(spec.hidden), list(spec.attentions), tokens, size)
    missing = sum(spec.nbytes(lengths[r]) for r in roles if not is_done(paths[r]))
    result.reason = over_budget(size, missing, max_gb)
    if result.reason is not None:
        return result
    # the logits cache entry too, from the same pass, when the loss reads the logits: a single
    # teacher is its own basis, so the base keys are the logits cache's keys (an ensemble's
    # logits combine its members and are not this pass's)
    logits_from_pass = not isinstance(teacher, EnsembleTeacher) and loss.teacher_depth() is None
    model = live_teacher(teacher, loss)
    for role in roles:
        path = paths[role]
        with file_lock(path.with_name(path.name + ".lock")):  # sweep jobs: one computes
            if is_done(path):
                result.splits[role] = {"origin": "cache", "key": path.name}
            else:
                logits_file = logits_path(base_keys[role]) if logits_from_pass else None
                loader = data.loader(role, inference_batch_size(settings, device))
                batches = zip(loader.batch_sampler, loader, strict=True)
                seconds, wrote = compute_features(model, batches, spec, lengths[role], path,
                                                  settings, logits_file, role)
                result.seconds += seconds
                result.logits |= wrote
                result.splits[role] = {"origin": "computed", "key": path.name}
        data.attach_teacher_features(role, FeatureStore(path))
    result.source = ("cache" if all(s["origin"] == "cache" for s in result.splits.values())
                     else "computed")
    result.bytes = sum(FeatureStore(paths[r]).meta["bytes"] for r in roles)
    return result


def is_done(path: Path) -> bool:
    return (path / "features.json").is_file()


def compute_features(model: torch.nn.Module, batches: Iterable[tuple[list[int], dict]],
                     spec: FeatureSpec, lengths: list[int], path: Path,
                     settings: EngineSettings, logits_file: Path | None = None,
                     role: str = "train") -> tuple[float, bool]:
    """One teacher pass writing the features of every example to the entry ``path`` (and the
    teacher's logits to ``logits_file`` when that cache entry is missing).

    Args:
        model: the teacher model to run.
        batches: ``(example numbers, padded batch)`` covering each of the ``len(lengths)``
            examples once.
        spec: what to store.
        lengths: real tokens per example.
        path: the entry (published atomically when the pass completes).
        settings: the run's loop settings (device, precision).
        logits_file: where to write the logits, or None.
        role: the split's name, for the log and the entry's info.

    Returns:
        The pass's seconds and whether logits were written.
    """
    device = settings.resolve_device()
    dtype = settings.teacher_dtype(device)
    autocast = settings.autocast_dtype(device)
    model = frozen(model, device, dtype)
    context = (torch.autocast(device.type, dtype=autocast) if dtype is None and autocast
               else nullcontext())
    want_logits = logits_file is not None and not logits_file.is_file()
    writer = FeatureWriter(path, spec, lengths)
    logits = np.zeros((len(lengths), 0), dtype=np.float32)
    flags = {"output_hidden_states": bool(spec.hidden),
             "output_attentions": bool(spec.attentions)}
    start = time.perf_counter()
    try:
        with torch.inference_mode(), context:
            for indices, batch in batches:
                out = model(**model_inputs(batch, device), **flags)
                if want_logits:
                    if logits.shape[1] == 0:
                        logits = np.zeros((len(lengths), out.logits.shape[-1]), np.float32)
                    logits[indices] = out.logits.float().cpu().numpy()
                _write_batch(writer, out, batch["attention_mask"], indices, spec)
        seconds = time.perf_counter() - start
        writer.publish({"seconds": round(seconds, 3), "role": role})
    except BaseException:
        writer.discard()
        raise
    log.info("teacher features for '%s' (%d examples, %s) computed in %.0fs, cached at %s",
             role, len(lengths), spec.dtype, seconds, path)
    if not want_logits:
        return seconds, False
    with file_lock(logits_file.with_suffix(".lock")):
        if logits_file.is_file():  # another job wrote them meanwhile
            return seconds, False
        store_logits(logits_file, logits, role, seconds)
    log.info("teacher logits for '%s' written from the same pass to %s", role, logits_file)
    return seconds, True


def _write_batch(writer: FeatureWriter, out: Any, mask: torch.Tensor, indices: list[int],
                 spec: FeatureSpec) -> None:
    for b, example in enumerate(indices):
        real = mask[b].nonzero().flatten()
        at, length = int(real[0]), len(real)
        end = at + length
        hidden = (torch.stack([out.hidden_states[i][b, at:end] for i in spec.hidden], dim=1)
                  if spec.hidden else None)
        attn = (torch.stack([out.attentions[i][b, :, at:end, at:end] for i in spec.attentions])
                if spec.attentions else None)
        writer.write(example, hidden, attn)
