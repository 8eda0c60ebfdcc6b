"""The general stage's teacher features: one teacher pass over the corpus, cached, reused.

The general stage reads a frozen teacher in eval mode (no dropout) on a fixed corpus, so the
teacher's hidden states and attention maps at the mapped layers are the same at every step,
every pass over the corpus and every run of the stage: they are computed once
(:func:`distillkit.teachers.features.compute_features`), stored like the task's feature cache
(``<cache>/teacher_features/<key>/``, ``trainer.feature_cache_dtype``, within
``trainer.feature_cache_max_gb``), and each batch reads its own texts' features. The key hashes
the teacher's weights, the corpus's token ids, ``general.max_length``, the teacher's precision,
the stored layers and the dtype; the stage's steps, learning rate, seed and term weights are
not in it, so a sweep over those makes one teacher pass.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from distillkit.data.feature_rows import FeatureCollator
from distillkit.engine import EngineSettings
from distillkit.general.corpus import padded
from distillkit.losses.contract import KDLoss
from distillkit.models import ModelBundle
from distillkit.runtime.locks import file_lock
from distillkit.teachers.feature_store import FeatureSpec, FeatureStore
from distillkit.teachers.features import (
    FeatureCache,
    compute_features,
    feature_entry,
    feature_spec,
    is_done,
    over_budget,
)
from distillkit.teachers.outputs import ids_key, inference_batch_size, weights_digest
from distillkit.teachers.setup import live_teacher

log = logging.getLogger(__name__)


@dataclass
class CorpusFeatures:
    """Where the general stage's teacher features come from.

    Attributes:
        record: the ``teacher_features`` record (``source`` ``live`` with a reason when the
            teacher runs every step).
        spec: what is stored (None when the loss reads no teacher features).
        path: the entry (None when not cached).
    """

    record: FeatureCache
    spec: FeatureSpec | None = None
    path: Path | None = None

    @property
    def cached(self) -> bool:
        """Whether the stage reads the features from the cache instead of a live teacher."""
        return self.path is not None

    def key_part(self) -> str:
        """What the general stage's own cache key holds of this: the dtype the features are
        stored in, or ``live`` (the distilled encoder differs by the dtype's rounding)."""
        return self.record.dtype if self.cached else "live"


def plan_corpus_features(source: ModelBundle, loss: KDLoss, ids: Sequence[Sequence[int]],
                         max_length: int, engine: EngineSettings, dtype: str,
                         max_gb: float) -> CorpusFeatures:
    """Decides whether the corpus's teacher features are cached (budget, free disk) and where.

    Args:
        source: the teacher the stage reads.
        loss: the stage's bound loss.
        ids: the corpus's token ids per text (the stage's tokenisation).
        max_length: ``general.max_length``.
        engine: the stage's loop settings (device, precision).
        dtype: ``trainer.feature_cache_dtype``.
        max_gb: ``trainer.feature_cache_max_gb``.
    """
    spec = feature_spec(source, loss, dtype)
    lengths = [len(row) for row in ids]
    if spec is None:
        return CorpusFeatures(FeatureCache("live", dtype, [], [], sum(lengths), 0,
                                           reason="the stage's loss reads no teacher features"))
    record = FeatureCache("live", dtype, list(spec.hidden), list(spec.attentions),
                          sum(lengths), spec.nbytes(lengths))
    precision = engine.teacher_dtype(engine.resolve_device())
    path = feature_entry(ids_key(weights_digest(source), [ids], max_length, precision), spec)
    record.reason = over_budget(record.bytes, 0 if is_done(path) else record.bytes, max_gb)
    if record.reason is not None:
        return CorpusFeatures(record, spec)
    return CorpusFeatures(record, spec, path)


def _inference_batches(ids: Sequence[Sequence[int]], batch_size: int, pad_id: int
                       ) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """``(text numbers, right-padded batch)`` over the corpus in length order."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        yield rows, padded([ids[i] for i in rows], pad_id)


def corpus_feature_rows(plan: CorpusFeatures, source: ModelBundle, loss: KDLoss,
                        ids: Sequence[Sequence[int]], pad_id: int,
                        engine: EngineSettings) -> FeatureCollator:
    """The cached features of every text (computed now in one teacher pass when the entry is
    missing; one sweep job computes, the others wait and read), as a batch step.

    Args:
        plan: :func:`plan_corpus_features`'s decision (cached).
        source: the teacher the stage reads.
        loss: the stage's bound loss.
        ids: the corpus's token ids per text.
        pad_id: the padding id of the inference batches.
        engine: the stage's loop settings.
    """
    assert plan.path is not None and plan.spec is not None, "features are not cached"
    path, record = plan.path, plan.record
    with file_lock(path.with_name(path.name + ".lock")):
        if is_done(path):
            record.source = "cache"
        else:
            device = engine.resolve_device()
            batches = _inference_batches(ids, inference_batch_size(engine, device), pad_id)
            record.seconds, _ = compute_features(live_teacher(source, loss), batches, plan.spec,
                                                 [len(row) for row in ids], path, engine,
                                                 role="general corpus")
            record.source = "computed"
    store = FeatureStore(path)
    record.bytes = int(store.meta["bytes"])
    record.splits = {"general": {"origin": record.source, "key": path.name}}
    return FeatureCollator(None, [store])
