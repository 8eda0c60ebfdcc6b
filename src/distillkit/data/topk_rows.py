"""Batches that carry the teacher's cached top-k targets (a causal LM's next-token targets).

The examples of a split whose top-k targets are cached (:mod:`distillkit.teachers.topk_cache`)
carry their row number (``teacher_row``); :class:`TopKCollator` pads the batch as usual, then
reads each example's stored targets and places them at the positions of its real tokens (the
batch's ``attention_mask``, right or left padding), aligned with ``input_ids`` (position ``t``
holds the teacher's distribution of the token after ``t``). A batch then holds

* ``teacher_topk_log_probs`` ``[batch, seq, w]`` float32 (``w``: the entries per token, the top
  ``k`` and any sampled tail slots),
* ``teacher_topk_indices`` ``[batch, seq, w]`` int64,
* ``teacher_topk_rest`` ``[batch, seq]`` float32,

which the engine turns into the teacher output ``{"topk": TopKTargets}``
(:func:`distillkit.engine.outputs.cached_teacher_outputs`). Padding positions hold finite
values the loss never counts (masked by ``attention_mask`` and the labels): log-probabilities
:data:`~distillkit.causal.topk.LOG_FLOOR`, indices 0, rest 0.0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from distillkit.causal.topk import LOG_FLOOR, TopKTargets
from distillkit.data.feature_rows import RowCollator, real_span
from distillkit.engine.outputs import TOPK_INDICES, TOPK_LOG_PROBS, TOPK_REST


class ExampleTopK(Protocol):
    """One split's stored top-k targets (:class:`distillkit.teachers.topk_store.TopKStore`)."""

    k: int
    width: int

    def __len__(self) -> int: ...

    def example(self, i: int) -> TopKTargets:
        """Example ``i``'s targets over its ``L`` real tokens (leading dim ``[L]``)."""
        ...


class TopKCollator(RowCollator):
    """Pads a batch with ``collate``, then adds the examples' cached top-k targets.

    Args:
        collate: the usual collator (dynamic padding of the token columns).
        parts: per split, in concatenation order, its stored top-k targets (one width).
        head_only: read only each entry's top ``k`` and fold any sampled tail slots into the
            rest mass (:meth:`~distillkit.causal.topk.TopKTargets.head`).
    """

    def __init__(self, collate: Callable[[list[dict]], dict],
                 parts: Sequence[ExampleTopK], head_only: bool = False) -> None:
        super().__init__(collate, parts)
        self.head_only = head_only
        sizes = {p.k if head_only else p.width for p in self.parts}
        if len(sizes) != 1:
            raise ValueError(f"the splits' cached top-k targets keep different numbers of "
                             f"entries per token: {sorted(sizes)}")
        self.width = sizes.pop()

    def add(self, batch: dict) -> dict:
        """Replaces a padded batch's ``teacher_row`` with its examples' top-k targets."""
        rows = self.rows(batch)
        mask = batch["attention_mask"]
        size, seq = mask.shape
        log_probs = torch.full((size, seq, self.width), LOG_FLOOR, dtype=torch.float32)
        indices = torch.zeros((size, seq, self.width), dtype=torch.int64)
        rest = torch.zeros((size, seq), dtype=torch.float32)
        for b, (part, row) in enumerate(rows):
            targets = self.parts[part].example(row)
            if self.head_only:
                targets = targets.head(self.width)
            length = int(targets.rest_log_prob.shape[0])
            at = real_span(mask[b], length)
            log_probs[b, at:at + length] = targets.log_probs
            indices[b, at:at + length] = targets.indices
            rest[b, at:at + length] = targets.rest_log_prob
        batch[TOPK_LOG_PROBS], batch[TOPK_INDICES], batch[TOPK_REST] = log_probs, indices, rest
        return batch
