"""Batches that carry the teacher's cached features (hidden states, attention maps).

The examples of a split whose teacher features are cached carry their row number
(``teacher_row``); :class:`FeatureCollator` pads the batch as usual, then reads each example's
stored features and pads them to the batch's length, at the positions of its real tokens (the
batch's ``attention_mask``). A batch then holds

* ``teacher_hidden_states``: ``{index into the teacher's hidden_states: [batch, seq, width]}``
* ``teacher_attentions``: ``{index into its attentions: [batch, heads, seq, seq]}``

for the stored layers only, zeros at padding (which every term masks out).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

ROW = "teacher_row"
HIDDEN = "teacher_hidden_states"
ATTENTIONS = "teacher_attentions"


class ExampleFeatures(Protocol):
    """One split's stored features (:class:`distillkit.teachers.feature_store.FeatureStore`)."""

    def __len__(self) -> int: ...

    def example(self, i: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``hidden`` ``[layers, L, width]`` and ``attentions`` ``[layers, heads, L, L]``."""
        ...

    def layers(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The stored hidden-state and attention indices."""
        ...


def real_span(mask: torch.Tensor, length: int) -> int:
    """Where an example's ``length`` real tokens start in its padded row (right or left
    padding: they are contiguous)."""
    positions = mask.nonzero().flatten()
    if len(positions) != length or (length and positions[-1] - positions[0] + 1 != length):
        raise ValueError(f"cached teacher outputs hold {length} tokens for an example with "
                         f"{len(positions)} real tokens: the cache does not match the data")
    return int(positions[0]) if length else 0


class RowCollator:
    """Pads a batch with ``collate``, then adds each example's cached teacher outputs, found
    by its ``teacher_row`` in the parts (splits concatenated in order); subclasses say what
    is added (:meth:`add`).

    Args:
        collate: the usual collator (dynamic padding of the token columns); None for a step
            used through :meth:`add` only (batches padded elsewhere).
        parts: per split, in concatenation order, its stored outputs (``len`` = examples).
    """

    def __init__(self, collate: Callable[[list[dict]], dict] | None, parts: Sequence) -> None:
        self.collate = collate
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __call__(self, examples: list[dict]) -> dict:
        assert self.collate is not None, f"this {type(self).__name__} only adds outputs"
        return self.add(self.collate(examples))

    def add(self, batch: dict) -> dict:
        """Replaces a padded batch's ``teacher_row`` with its examples' cached outputs."""
        raise NotImplementedError

    def rows(self, batch: dict) -> list[tuple[int, int]]:
        """Pops the batch's ``teacher_row`` and locates each example: ``(part, row in it)``."""
        located = []
        for row in batch.pop(ROW).tolist():
            part = int(np.searchsorted(self.offsets, row, side="right") - 1)
            located.append((part, int(row) - int(self.offsets[part])))
        return located


class FeatureCollator(RowCollator):
    """Pads a batch with ``collate``, then adds the examples' cached teacher features.

    Args:
        collate: the usual collator (dynamic padding of the token columns); None for a step
            used through :meth:`add_features` only (batches padded elsewhere).
        parts: per split, in concatenation order, its stored features.
    """

    def __init__(self, collate: Callable[[list[dict]], dict] | None,
                 parts: Sequence[ExampleFeatures]) -> None:
        super().__init__(collate, parts)
        layers = {p.layers() for p in self.parts}
        if len(layers) != 1:
            raise ValueError("the splits' cached teacher features store different layers")
        self.hidden_index, self.attention_index = layers.pop()

    def add(self, batch: dict) -> dict:
        return self.add_features(batch)

    def add_features(self, batch: dict) -> dict:
        """Replaces a padded batch's ``teacher_row`` with its examples' features."""
        rows = self.rows(batch)
        mask = batch["attention_mask"]
        size, seq = mask.shape
        hidden: list[torch.Tensor] | None = None
        attn: list[torch.Tensor] | None = None
        for b, (part, row) in enumerate(rows):
            h, a = self.parts[part].example(row)
            length = (h.shape[1] if h is not None else a.shape[-1])
            at = real_span(mask[b], length)
            if h is not None:
                if hidden is None:
                    hidden = [h.new_zeros((size, seq, h.shape[-1])) for _ in range(len(h))]
                for i, layer in enumerate(h):
                    hidden[i][b, at:at + length] = layer
            if a is not None:
                if attn is None:
                    attn = [a.new_zeros((size, a.shape[1], seq, seq)) for _ in range(len(a))]
                for i, layer in enumerate(a):
                    attn[i][b, :, at:at + length, at:at + length] = layer
        if hidden is not None:
            batch[HIDDEN] = dict(zip(self.hidden_index, hidden, strict=True))
        if attn is not None:
            batch[ATTENTIONS] = dict(zip(self.attention_index, attn, strict=True))
        return batch
