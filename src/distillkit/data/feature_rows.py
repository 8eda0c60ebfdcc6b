"""Batches that carry the teacher's cached features (hidden states, attention maps).

The examples of a split whose teacher features are cached carry their row number
(``teacher_row``); :class:`FeatureCollator` pads the batch as usual, then reads each example's
stored features and pads them to the batch's length, at the positions of its real tokens (the
batch's ``attention_mask``). A batch then holds

* ``teacher_hidden_states``: ``{index into the teacher's hidden_states: [batch, seq, width]}``
* ``teacher_attentions``: ``{index into its attentions: [batch, heads, seq, seq]}``

for the stored layers only, float32, zeros at padding (which every term masks out).
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

    def example(self, i: int, with_hidden: bool = True
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``hidden`` ``[layers, L, width]`` (None when ``with_hidden`` is false) and
        ``attentions`` ``[layers, heads, L, L]``."""
        ...

    def will_need(self, rows: Sequence[int]) -> None:
        """Starts reading the examples' stored values (a hint; may do nothing)."""
        ...

    def lengths(self, rows: Sequence[int]) -> np.ndarray:
        """The examples' real-token counts."""
        ...

    def hidden_rows(self, rows: Sequence[int]) -> torch.Tensor:
        """The examples' hidden states, real tokens one example after another:
        ``[tokens, layers, width]`` float32."""
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


def real_positions(mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The flat positions (into ``mask.flatten()``) of a padded batch's real tokens, one
    example after another, checked against the cached examples' ``lengths``.

    Raises:
        ValueError: an example's real tokens are not one contiguous span of its cached length
            (the cache does not match the data).
    """
    real = mask.bool()
    counts = real.sum(1)
    first = real.to(torch.uint8).argmax(1)
    at = torch.arange(real.shape[1])
    span = (at >= first[:, None]) & (at < (first + counts)[:, None])
    bad = ((span != real).any(1) | (counts != lengths)).nonzero().flatten()
    if len(bad):
        b = int(bad[0])
        real_span(mask[b], int(lengths[b]))  # raises its message for the first bad example
    return real.flatten().nonzero().flatten()


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
        """Replaces a padded batch's ``teacher_row`` with its examples' features (float32)."""
        rows = self.rows(batch)
        mask = batch["attention_mask"]
        for p in sorted({part for part, _ in rows}):  # every example's reads start at once
            self.parts[p].will_need([row for part, row in rows if part == p])
        if self.hidden_index:
            batch[HIDDEN] = self._hidden(rows, mask)
        if self.attention_index:
            batch[ATTENTIONS] = self._attentions(rows, mask)
        return batch

    def _hidden(self, rows: list[tuple[int, int]], mask: torch.Tensor
                ) -> dict[int, torch.Tensor]:
        """The stored hidden states of the batch: each split's examples read at once, then
        written to their real tokens' positions with one copy per split."""
        size, seq = mask.shape
        parts = torch.tensor([part for part, _ in rows], dtype=torch.long)
        lengths = torch.zeros(size, dtype=torch.long)
        packed = {}
        for p in parts.unique().tolist():
            chosen = (parts == p).nonzero().flatten()
            ids = [rows[b][1] for b in chosen.tolist()]
            lengths[chosen] = torch.from_numpy(self.parts[p].lengths(ids))
            packed[p] = self.parts[p].hidden_rows(ids)
        positions = real_positions(mask, lengths)
        part_of_token = parts.repeat_interleave(lengths)
        width = next(iter(packed.values())).shape[-1]
        out = torch.empty((len(self.hidden_index), size * seq, width))
        out[:, (mask.flatten() == 0).nonzero().flatten()] = 0.0  # padding; the rest is written
        for p, values in packed.items():
            out[:, positions[part_of_token == p]] = values.transpose(0, 1)
        return {index: out[i].view(size, seq, width) for i, index in enumerate(self.hidden_index)}

    def _attentions(self, rows: list[tuple[int, int]], mask: torch.Tensor
                    ) -> dict[int, torch.Tensor]:
        """The stored attention maps of the batch, example by example (float32)."""
        size, seq = mask.shape
        attn: list[torch.Tensor] | None = None
        for b, (part, row) in enumerate(rows):
            _, a = self.parts[part].example(row, with_hidden=False)
            assert a is not None
            length = a.shape[-1]
            at = real_span(mask[b], length)
            if attn is None:
                attn = [torch.zeros((size, a.shape[1], seq, seq)) for _ in range(len(a))]
            for i, layer in enumerate(a):
                attn[i][b, :, at:at + length, at:at + length] = layer
        assert attn is not None
        return dict(zip(self.attention_index, attn, strict=True))
