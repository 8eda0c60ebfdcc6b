"""Tokenised text(-pair) classification data with label mapping and dynamic padding."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from datasets import ClassLabel, Dataset, DatasetDict
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from distillkit.errors import DataError

log = logging.getLogger(__name__)


class TextClassificationData:
    """Single-text or text-pair classification data.

    Loads raw splits from ``source``, maps label values to ids, drops unwanted labels,
    tokenises with the teacher's tokenizer (truncation to ``max_length``) and serves
    dynamically padded batches.

    Args:
        source: a callable returning a ``DatasetDict`` (hub, local files or generated data).
        text_column: column with the (first) text.
        text_pair_column: column with the second text of a pair, or None.
        label_column: column with the gold label (names or ids).
        labels: label names in id order; None infers them (ClassLabel names, else the sorted
            distinct values of the train split).
        drop_labels: label values whose rows are removed (e.g. SNLI's ``-``, GLUE's ``-1``).
        train_split: split to train on.
        eval_split: split to evaluate on.
        test_split: optional extra split evaluated at the end.
        max_length: truncation length in tokens.
        max_train_samples: keep only the first N training rows (None: all).
        max_eval_samples: keep only the first N rows of the eval and test splits.
    """

    def __init__(
        self,
        source: Callable[[], DatasetDict],
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        labels: Sequence[str] | None = None,
        drop_labels: Sequence[str] = (),
        train_split: str = "train",
        eval_split: str = "validation",
        test_split: str | None = None,
        max_length: int = 128,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
    ) -> None:
        self._source = source
        self.text_column = text_column
        self.text_pair_column = text_pair_column
        self.label_column = label_column
        self._labels = [str(x) for x in labels] if labels else None
        self.drop_labels = {str(x) for x in drop_labels}
        self.split_names = {"train": train_split, "eval": eval_split, "test": test_split}
        self.max_length = int(max_length)
        self.limits = {"train": max_train_samples, "eval": max_eval_samples,
                       "test": max_eval_samples}
        self.raw: dict[str, Dataset] = {}
        self.tokenized: dict[str, Dataset] = {}
        self.tokenizer: PreTrainedTokenizerBase | None = None

    # -- raw data -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Loads the raw splits, checks columns and resolves the label list (idempotent)."""
        if self.raw:
            return
        data = self._source() if callable(self._source) else self._source
        for role, split in self.split_names.items():
            if split is None:
                continue
            if split not in data:
                raise DataError(
                    f"split '{split}' (data.{role}_split) not found; available: "
                    f"{', '.join(data)}"
                )
            self.raw[role] = self._check_columns(data[split], split)
        if self._labels is None:
            self._labels = self._infer_labels(self.raw["train"])
            log.info("labels inferred from the train split: %s", self._labels)
        label2id = {name: i for i, name in enumerate(self._labels)}
        for role, ds in list(self.raw.items()):
            ds = self._encode_labels(ds, label2id, self.split_names[role])
            limit = self.limits[role]
            if limit is not None and limit < len(ds):
                ds = ds.select(range(limit))
            self.raw[role] = ds
            log.info("%s split '%s': %d examples", role, self.split_names[role], len(ds))

    @property
    def labels(self) -> list[str]:
        """Label names in id order (loads the data on first use)."""
        self.prepare()
        return list(self._labels)

    def _check_columns(self, ds: Dataset, split: str) -> Dataset:
        wanted = {"data.text_column": self.text_column, "data.label_column": self.label_column}
        if self.text_pair_column:
            wanted["data.text_pair_column"] = self.text_pair_column
        for key, column in wanted.items():
            if column not in ds.column_names:
                raise DataError(
                    f"column '{column}' ({key}) not in split '{split}'; its columns are: "
                    f"{', '.join(ds.column_names)}. Set {key} to one of them"
                )
        return ds

    def _label_names(self, ds: Dataset) -> list[str]:
        feature = ds.features[self.label_column]
        values = ds[self.label_column]
        if isinstance(feature, ClassLabel):
            return [feature.int2str(v) if v >= 0 else str(v) for v in values]
        return [str(v) for v in values]

    def _infer_labels(self, ds: Dataset) -> list[str]:
        feature = ds.features[self.label_column]
        if isinstance(feature, ClassLabel):
            return [n for n in feature.names if n not in self.drop_labels]
        return sorted(set(self._label_names(ds)) - self.drop_labels)

    def _encode_labels(self, ds: Dataset, label2id: dict[str, int], split: str) -> Dataset:
        names = self._label_names(ds)
        keep = [i for i, n in enumerate(names) if n not in self.drop_labels]
        ids = []
        for i in keep:
            if names[i] not in label2id:
                raise DataError(
                    f"row {i} of split '{split}' has label '{names[i]}', which is not in "
                    f"data.labels {list(label2id)}; add it to data.labels or to data.drop_labels"
                )
            ids.append(label2id[names[i]])
        if len(keep) < len(ds):
            log.info("split '%s': dropped %d rows with labels in %s", split,
                     len(ds) - len(keep), sorted(self.drop_labels))
            ds = ds.select(keep)
        if not len(ds):
            raise DataError(f"split '{split}' has no rows left after dropping labels")
        columns = [self.text_column] + ([self.text_pair_column] if self.text_pair_column else [])
        ds = ds.select_columns(columns)
        return ds.add_column("labels", ids)

    # -- tokenised data -------------------------------------------------------------------
    def tokenize(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Tokenises every split with ``tokenizer`` (the teacher's)."""
        self.prepare()
        self.tokenizer = tokenizer
        text, pair = self.text_column, self.text_pair_column

        def encode(batch: dict) -> dict:
            args = (batch[text], batch[pair]) if pair else (batch[text],)
            return tokenizer(*args, truncation=True, max_length=self.max_length)

        for role, ds in self.raw.items():
            self.tokenized[role] = ds.map(
                encode, batched=True, remove_columns=[c for c in ds.column_names
                                                      if c != "labels"],
                desc=f"tokenise {role}",
            )

    def has_split(self, role: str) -> bool:
        """Whether a split is configured for ``role`` (``train``, ``eval`` or ``test``)."""
        return self.split_names.get(role) is not None

    def loader(
        self, role: str, batch_size: int, shuffle: bool = False, seed: int = 0,
        num_workers: int = 0,
    ) -> DataLoader:
        """A DataLoader over a tokenised split with dynamic padding.

        Args:
            role: ``train``, ``eval`` or ``test``.
            batch_size: examples per batch.
            shuffle: reshuffle every epoch (seeded with ``seed``).
            seed: shuffling seed.
            num_workers: DataLoader worker processes.
        """
        if self.tokenizer is None:
            raise RuntimeError("call tokenize(tokenizer) before loader()")
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(
            self.tokenized[role],
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=DataCollatorWithPadding(self.tokenizer, return_tensors="pt"),
            num_workers=num_workers,
        )
