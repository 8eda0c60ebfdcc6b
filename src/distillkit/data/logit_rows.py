"""A tokenised dataset whose examples carry their row of precomputed teacher logits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from datasets import Dataset


class WithTeacherLogits(torch.utils.data.Dataset):
    """A tokenised dataset whose examples also carry their row of teacher logits.

    Args:
        base: the tokenised examples (the concatenation of one or more splits).
        parts: per split, in concatenation order, an array of logits with one row per
            example (memory-mapped arrays are read row by row, never loaded whole).
    """

    def __init__(self, base: Dataset, parts: Sequence[np.ndarray]) -> None:
        self.base = base
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        if self.offsets[-1] != len(base):
            raise ValueError(f"{self.offsets[-1]} logit rows for {len(base)} examples")

    def __len__(self) -> int:
        return len(self.base)

    def _logits(self, indices: Sequence[int]) -> list[list[float]]:
        idx = np.asarray(indices, dtype=np.int64)
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        return [np.asarray(self.parts[p][i - self.offsets[p]], dtype=np.float32).tolist()
                for i, p in zip(idx.tolist(), part.tolist(), strict=True)]

    def __getitem__(self, index: int) -> dict:
        return {**self.base[index], "teacher_logits": self._logits([index])[0]}

    def __getitems__(self, indices: list[int]) -> list[dict]:
        rows = self.base[indices]  # one columnar read for the whole batch
        logits = self._logits(indices)
        return [{**{k: v[j] for k, v in rows.items()}, "teacher_logits": logits[j]}
                for j in range(len(indices))]
