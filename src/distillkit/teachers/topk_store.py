"""The on-disk format of cached top-k teacher targets of a causal LM, memory-mapped when read.

One cache entry is a directory ``<cache>/teacher_topk/<key>/`` holding, for one split, per real
token (``attention_mask`` 1; padding is never stored), examples one after another:

* ``log_probs.npy`` ``[tokens, k + samples]``: the teacher's ``k`` largest log-probabilities at
  ``T = 1``, descending, then the log-weights of ``samples`` sampled tail slots when the entry
  has a sampled tail (:mod:`distillkit.causal.topk`), in ``fp16`` or ``fp32`` (floored at
  :data:`~distillkit.causal.topk.LOG_FLOOR`);
* ``indices.npy`` ``[tokens, k + samples]``: their vocabulary ids, ``uint16`` when the
  vocabulary has at most 65536 entries, else ``int32`` (int64 when read);
* ``rest.npy`` ``[tokens]`` float32: the log of the teacher's mass on every other token
  (:data:`~distillkit.causal.topk.LOG_FLOOR` when ``k`` is the vocabulary size);
* ``index.npy`` ``[examples, 2]``: each example's token offset and token count (row order);
* ``topk.json``: what is stored (k, dtypes, vocabulary size, bytes) and how long the pass took.

The entry is written under ``<key>.tmp`` and renamed into place once complete, so a pass that
is interrupted leaves no entry a reader could take for a finished one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distillkit.causal.topk import LOG_FLOOR, TopKTargets
from distillkit.teachers.feature_store import entry_bytes, fresh_tmp, row_offsets

#: storage dtypes of the log-probabilities: name -> numpy dtype
VALUE_DTYPES: dict[str, Any] = {"fp16": np.float16, "fp32": np.float32}
FORMAT = 1
META = "topk.json"


@dataclass(frozen=True)
class TopKSpec:
    """What a top-k entry holds.

    Attributes:
        k: teacher tokens kept per position.
        dtype: storage dtype of the log-probabilities, one of :data:`VALUE_DTYPES`.
        vocab: the vocabulary size the top-k is taken over (the teacher's output rows, or
            the shared size both models are cut to).
        samples: tail slots drawn from the teacher's distribution over the other tokens
            (0: none, the rest mass is stored instead).
    """

    k: int
    dtype: str
    vocab: int
    samples: int = 0

    @property
    def width(self) -> int:
        """Stored entries per token: the top ``k`` and the sampled tail slots."""
        return self.k + self.samples

    @property
    def index_dtype(self) -> Any:
        """``uint16`` when every id fits (vocabulary <= 65536), else ``int32``."""
        return np.uint16 if self.vocab <= 65536 else np.int32

    def as_dict(self) -> dict[str, Any]:
        fields = {"k": self.k, "dtype": self.dtype, "vocab": self.vocab, "format": FORMAT}
        if self.samples:  # entries without a sampled tail keep their keys
            fields["samples"] = self.samples
        return fields

    @property
    def bytes_per_token(self) -> int:
        """Stored bytes per real token: log-probabilities, indices and the rest mass."""
        value = np.dtype(VALUE_DTYPES[self.dtype]).itemsize
        return self.width * (value + np.dtype(self.index_dtype).itemsize) + 4

    def nbytes(self, lengths: Sequence[int]) -> int:
        """The entry's array bytes for examples of ``lengths`` real tokens (index included;
        the ``.npy`` headers and ``topk.json`` add a few hundred bytes)."""
        return int(sum(lengths)) * self.bytes_per_token + 16 * len(lengths)


class TopKWriter:
    """Writes a split's top-k targets into ``<path>.tmp``, one example at a time (any order);
    :meth:`publish` renames the finished entry to ``path``, :meth:`discard` removes it.

    Args:
        path: where the finished entry goes (the caller checks :func:`published` first,
            holding the entry's lock).
        spec: k, dtype and vocabulary size.
        lengths: the real-token count of every row.
    """

    def __init__(self, path: Path, spec: TopKSpec, lengths: Sequence[int]) -> None:
        self.path, self.spec, self.tmp = path, spec, fresh_tmp(path)
        n = np.asarray(lengths, dtype=np.int64)
        self.index = np.stack([row_offsets(n), n], axis=1) if len(n) else np.zeros((0, 2),
                                                                                   np.int64)
        self.tokens = int(n.sum())
        np.save(self.tmp / "index.npy", self.index)
        open_ = np.lib.format.open_memmap
        shape = (self.tokens, spec.width)
        self.log_probs = open_(self.tmp / "log_probs.npy", "w+", VALUE_DTYPES[spec.dtype], shape)
        self.indices = open_(self.tmp / "indices.npy", "w+", spec.index_dtype, shape)
        self.rest = open_(self.tmp / "rest.npy", "w+", np.float32, (self.tokens,))

    def write(self, example: int, targets: TopKTargets) -> None:
        """Stores one example's targets (leading dim ``[L]``, its real tokens in order)."""
        start, length = (int(v) for v in self.index[example])
        if targets.log_probs.shape != (length, self.spec.width):
            raise ValueError(f"example {example}: top-k targets of shape "
                             f"{tuple(targets.log_probs.shape)}, expected ({length}, "
                             f"{self.spec.width})")
        end = start + length
        self.log_probs[start:end] = targets.log_probs.float().clamp_min(LOG_FLOOR).cpu().numpy()
        self.indices[start:end] = targets.indices.cpu().numpy().astype(self.spec.index_dtype)
        self.rest[start:end] = targets.rest_log_prob.float().clamp_min(LOG_FLOOR).cpu().numpy()

    def publish(self, info: dict[str, Any]) -> None:
        """Flushes the arrays, writes ``topk.json`` and renames the entry into place."""
        for array in (self.log_probs, self.indices, self.rest):
            array.flush()
        self._close()
        meta = {**self.spec.as_dict(), "examples": len(self.index), "tokens": self.tokens,
                "bytes": entry_bytes(self.tmp), **info}
        (self.tmp / META).write_text(json.dumps(meta, indent=1))
        self.tmp.rename(self.path)

    def discard(self) -> None:
        """Removes the unfinished entry."""
        self._close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _close(self) -> None:
        self.log_probs = self.indices = self.rest = None


def published(path: Path) -> bool:
    """Whether ``path`` is a complete entry."""
    return (path / META).is_file()


class TopKStore:
    """Reads a published entry, one example at a time (lazy memory maps, re-opened in each
    worker process rather than copied).

    Args:
        path: the entry directory.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.meta = json.loads((self.path / META).read_text())
        self.spec = TopKSpec(int(self.meta["k"]), str(self.meta["dtype"]),
                             int(self.meta["vocab"]), int(self.meta.get("samples", 0)))
        self._arrays: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.meta["examples"])

    @property
    def k(self) -> int:
        """The teacher's top tokens per position."""
        return self.spec.k

    @property
    def width(self) -> int:
        """Entries per token (the top ``k`` and any sampled tail slots)."""
        return self.spec.width

    def __getstate__(self) -> dict[str, Any]:  # worker processes re-open the memory maps
        return {**self.__dict__, "_arrays": None}

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            arrays = {"index": np.load(self.path / "index.npy")}
            for name in ("log_probs", "indices", "rest"):
                arrays[name] = np.load(self.path / f"{name}.npy", mmap_mode="r")
            self._arrays = arrays
        return self._arrays

    def example(self, i: int) -> TopKTargets:
        """Example ``i``'s targets over its real tokens: log-probabilities ``[L, k]``
        float32, indices ``[L, k]`` int64, rest ``[L]`` float32."""
        a = self._open()
        start, length = (int(v) for v in a["index"][i])
        rows = slice(start, start + length)
        return TopKTargets(torch.from_numpy(a["log_probs"][rows].astype(np.float32)),
                           torch.from_numpy(a["indices"][rows].astype(np.int64)),
                           torch.from_numpy(np.array(a["rest"][rows], dtype=np.float32)))
