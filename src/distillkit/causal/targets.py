"""The causal task's teacher-targets stage: the teacher's top-k next-token targets of the
training split, computed in one teacher pass and cached (``trainer.teacher_topk``).

With ``trainer.teacher_topk=k`` (k >= 1) the stage stores, per real training token, the
teacher's ``k`` largest log-probabilities, their ids and the log of the remaining mass
(:func:`~distillkit.teachers.topk_cache.cache_teacher_topk`, ``trainer.teacher_topk_dtype``,
within ``trainer.feature_cache_max_gb``), and every training batch reads its examples' rows
(:class:`~distillkit.data.topk_rows.TopKCollator`): the teacher does not run while
distilling. ``trainer.teacher_topk=0`` (the default) keeps the exact, dense teacher live.
``trainer.teacher_topk_samples=m`` replaces the stored rest mass by ``m`` draws from the
teacher's distribution over the other tokens (:mod:`distillkit.causal.topk`: unbiased
forward-KL targets).

The entry's key holds the teacher's weights, the split's token ids, ``max_length``, the
teacher's precision, ``k``, the dtype, the shared vocabulary and the tail samples; a sweep over
``loss.temperature``, ``loss.alpha``, ``loss.beta`` or ``loss.divergence`` reads one entry.
Evaluation (perplexity, agreement, KL) always scores against the live, dense teacher.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from distillkit.causal.data import ROW, CausalLMData
from distillkit.data.feature_rows import ROW as TEACHER_ROW
from distillkit.data.topk_rows import TopKCollator
from distillkit.engine.settings import EngineSettings
from distillkit.teachers.topk_cache import TopKCache, TopKSplit, cache_teacher_topk

log = logging.getLogger(__name__)
#: The only split the loss reads teacher targets of (evaluation runs the dense teacher).
ROLE = "train"


def _with_teacher_rows(batches) -> Iterator[dict]:
    """The data's batches with their row numbers under the name the cache reads."""
    for batch in batches:
        yield {**batch, TEACHER_ROW: batch[ROW]}


def cache_train_topk(model, data: CausalLMData, settings: EngineSettings, *, k: int,
                     dtype: str, max_gb: float, vocab_size: int, samples: int = 0) -> TopKCache:
    """The teacher's top-k targets of the training split, read from the cache or computed
    now (or why the teacher runs live instead: :attr:`TopKCache.reason`).

    Args:
        model: the teacher (a Hugging Face causal LM).
        data: the tokenised data.
        settings: the run's loop settings (device, teacher precision, eval batch size).
        k: teacher tokens kept per position (``trainer.teacher_topk``).
        dtype: storage dtype of the log-probabilities (``trainer.teacher_topk_dtype``).
        max_gb: the cache budget (``trainer.feature_cache_max_gb``).
        vocab_size: the shared vocabulary the top-k is taken over.
        samples: sampled tail slots per position (``trainer.teacher_topk_samples``).
    """
    device = settings.resolve_device()
    split = TopKSplit(ids=[ex.input_ids for ex in data.encoded[ROLE]],
                      batches=_with_teacher_rows(data.loader(ROLE, settings.eval_batch_size)))
    return cache_teacher_topk(model, {ROLE: split}, k=k, dtype=dtype, max_gb=max_gb,
                              max_length=data.max_length, device=device,
                              precision=settings.teacher_dtype(device), vocab_size=vocab_size,
                              samples=samples)


def topk_collate(data: CausalLMData, cache: TopKCache,
                 head_only: bool = False) -> Callable[[list], dict]:
    """The training split's collator with the cached top-k targets added to every batch
    (``head_only``: a sampled tail folded into the rest mass)."""

    def collate(examples: list) -> dict:
        batch = data.collate(examples)
        batch[TEACHER_ROW] = batch[ROW]
        return batch

    return TopKCollator(collate, [cache.stores[ROLE]], head_only=head_only)
