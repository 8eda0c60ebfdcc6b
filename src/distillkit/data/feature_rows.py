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


def _span(mask: torch.Tensor, length: int) -> int:
    """Where an example's ``length`` real tokens start in its padded row (right or left
    padding: they are contiguous)."""
    positions = mask.nonzero().flatten()
    if len(positions) != length or (length and positions[-1] - positions[0] + 1 != length):
        raise ValueError(f"cached teacher features hold {length} tokens for an example with "
                         f"{len(positions)} real tokens: the cache does not match the data")
    return int(positions[0]) if length else 0


class FeatureCollator:
    """Pads a batch with ``collate``, then adds the examples' cached teacher features.

    Args:
        collate: the usual collator (dynamic padding of the token columns); None for a step
            used through :meth:`add_features` only (batches padded elsewhere).
        parts: per split, in concatenation order, its stored features.
    """

    def __init__(self, collate: Callable[[list[dict]], dict] | None,
                 parts: Sequence[ExampleFeatures]) -> None:
        self.collate = collate
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        layers = {p.layers() for p in self.parts}
        if len(layers) != 1:
            raise ValueError("the splits' cached teacher features store different layers")
        self.hidden_index, self.attention_index = layers.pop()

    def __call__(self, examples: list[dict]) -> dict:
        assert self.collate is not None, "this FeatureCollator only adds features"
        return self.add_features(self.collate(examples))

    def add_features(self, batch: dict) -> dict:
        """Replaces a padded batch's ``teacher_row`` with its examples' features."""
        rows = batch.pop(ROW).tolist()
        mask = batch["attention_mask"]
        size, seq = mask.shape
        hidden: list[torch.Tensor] | None = None
        attn: list[torch.Tensor] | None = None
        for b, row in enumerate(rows):
            part = int(np.searchsorted(self.offsets, row, side="right") - 1)
            h, a = self.parts[part].example(row - int(self.offsets[part]))
            length = (h.shape[1] if h is not None else a.shape[-1])
            at = _span(mask[b], length)
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
