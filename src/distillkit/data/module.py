"""Tokenised text(-pair) classification data with label mapping and dynamic padding."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, concatenate_datasets
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from distillkit.data.checks import check_row_ids, check_texts, inferred_labels, text_encoding
from distillkit.data.feature_rows import ROW, ExampleFeatures, FeatureCollator
from distillkit.data.logit_rows import WithTeacherLogits
from distillkit.data.sampling import (
    LengthGroupedBatchSampler,
    ShardedBatchSampler,
    SortedBatchSampler,
)
from distillkit.data.splits import resolve_splits
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
        transfer_split: optional split of extra text for distillation only (Hinton et al.'s
            "transfer set"): its labels are hidden (-100), so only the teacher's soft targets
            train on it. The teacher stage never sees it.
        max_transfer_samples: keep only the first N rows of the transfer split.
        id_column: column with a unique id per row (e.g. SNLI's ``pairID``), used to match
            rows with offline teacher logits (``teacher=offline``, ``mode=export_logits``);
            None uses the row's position in the source split (0-based, as a string). Ids are
            kept beside the tokenised data (:meth:`row_ids`), never fed to the model.
        domain_column: column naming each row's domain (multi-domain data, e.g. Meta-KD's
            ``experiment=meta_kd``); kept beside the tokenised data (:meth:`domains`).
        domain: the target domain: every split keeps only its rows, and the train split with
            every domain stays available as the ``all_train`` role (what a meta-teacher
            trains on, ``teacher.finetune_settings.domains=all``). Needs ``domain_column``.
        validation_fraction: when the source has no ``eval_split``, carve this share of the
            train split into it (seeded, stratified by label; 0: never, a missing split is an
            error). See :mod:`distillkit.data.splits`.
        split_seed: seed of that carving.
        optional_test: a ``test_split`` the source lacks is no error: the final evaluation is
            then on the eval split (``data=files`` without a test file).
        encoding: text encoding of local data files (``data.encoding``).
        drop_empty: drop rows with an empty or whitespace-only text with a warning instead of
            refusing them (then row indices count the kept rows). See
            :mod:`distillkit.data.checks`.
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
        transfer_split: str | None = None,
        max_transfer_samples: int | None = None,
        id_column: str | None = None,
        domain_column: str | None = None,
        domain: str | None = None,
        validation_fraction: float = 0.0,
        split_seed: int = 0,
        optional_test: bool = False,
        encoding: str = "utf-8",
        drop_empty: bool = False,
    ) -> None:
        if domain is not None and domain_column is None:
            raise DataError(f"data.domain={domain} needs data.domain_column (the column that "
                            "names each row's domain)")
        self._source = source
        self.encoding, self.drop_empty = encoding, bool(drop_empty)
        self.text_column = text_column
        self.text_pair_column = text_pair_column
        self.label_column = label_column
        self.id_column = id_column
        self.domain_column = domain_column
        self.domain = None if domain is None else str(domain)
        self._labels = [str(x) for x in labels] if labels else None
        self.drop_labels = {str(x) for x in drop_labels}
        self.split_names = {"train": train_split, "eval": eval_split, "test": test_split,
                            "transfer": transfer_split}
        if self.domain is not None:  # the train split of every domain, for a meta-teacher
            self.split_names["all_train"] = train_split
        self._splitting = (float(validation_fraction), int(split_seed), bool(optional_test))
        self.carved: dict | None = None  # the validation split carved from train, if any
        self.max_length = int(max_length)
        self.limits = {"train": max_train_samples, "eval": max_eval_samples,
                       "test": max_eval_samples, "transfer": max_transfer_samples,
                       "all_train": None}
        self.raw: dict[str, Dataset] = {}
        self.tokenized: dict[str, Dataset] = {}
        self._ids: dict[str, list[str]] = {}  # role -> row ids, aligned with raw/tokenized
        self._domains: dict[str, list[str]] = {}  # role -> row domains (with domain_column)
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.teacher_logits: dict[str, np.ndarray] = {}
        self.teacher_features: dict[str, ExampleFeatures] = {}

    # -- raw data -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Loads the raw splits, checks columns and resolves the label list (idempotent)."""
        if self.raw:
            return
        with text_encoding(self.encoding):
            data = self._source() if callable(self._source) else self._source
        data, self.carved = resolve_splits(data, self.split_names, self.label_column,
                                           *self._splitting)
        for role, split in self.split_names.items():
            if split is None:
                continue
            ds = self._check_columns(data[split], split, need_label=role != "transfer")
            self.raw[role] = check_texts(  # null / empty texts (distillkit.data.checks)
                ds, self._text_columns(), split, self.drop_empty,
                self._label_names(ds) if role != "transfer" else None, self.drop_labels)
        if self._labels is None:
            self._labels = self._infer_labels(self.raw["train"])
            log.info("labels inferred from the train split: %s", self._labels)
        label2id = {name: i for i, name in enumerate(self._labels)}
        for role, ds in list(self.raw.items()):
            ids = (["" if v is None else str(v) for v in ds[self.id_column]] if self.id_column
                   else [str(i) for i in range(len(ds))])
            domains = ([str(v) for v in ds[self.domain_column]] if self.domain_column
                       else None)
            if role == "transfer":
                ds = self._hide_labels(ds)
            else:
                ds, kept = self._encode_labels(ds, label2id, self.split_names[role])
                ids = [ids[i] for i in kept]
                domains = None if domains is None else [domains[i] for i in kept]
            keep = None
            if self.domain is not None and role != "all_train":
                keep = [i for i, d in enumerate(domains) if d == self.domain]
                if not keep:
                    raise DataError(
                        f"split '{self.split_names[role]}' has no rows of domain "
                        f"'{self.domain}' (data.domain) in column '{self.domain_column}'; its "
                        f"domains are: {', '.join(sorted(set(domains)))}")
            limit = self.limits[role]
            if limit is not None:
                keep = (keep if keep is not None else list(range(len(ds))))[:limit]
            if keep is not None and len(keep) < len(ds):
                ds = ds.select(keep)
                ids = [ids[i] for i in keep]
                domains = None if domains is None else [domains[i] for i in keep]
            self.raw[role], self._ids[role] = ds, ids
            if domains is not None:
                self._domains[role] = domains
            log.info("%s split '%s': %d examples", role, self.split_names[role], len(ds))

    @property
    def labels(self) -> list[str]:
        """Label names in id order (loads the data on first use)."""
        self.prepare()
        return list(self._labels)

    def _text_columns(self) -> list[str]:
        return [self.text_column] + ([self.text_pair_column] if self.text_pair_column else [])

    def _hide_labels(self, ds: Dataset) -> Dataset:
        ds = ds.select_columns(self._text_columns())
        return ds.add_column("labels", [-100] * len(ds))

    def _check_columns(self, ds: Dataset, split: str, need_label: bool = True) -> Dataset:
        wanted = {"data.text_column": self.text_column}
        if need_label:
            wanted["data.label_column"] = self.label_column
        if self.text_pair_column:
            wanted["data.text_pair_column"] = self.text_pair_column
        if self.id_column:
            wanted["data.id_column"] = self.id_column
        if self.domain_column:
            wanted["data.domain_column"] = self.domain_column
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
        return inferred_labels(self._label_names(ds), self.drop_labels, self.split_names["train"])

    def _encode_labels(self, ds: Dataset, label2id: dict[str, int],
                       split: str) -> tuple[Dataset, list[int]]:
        """The split with label ids in ``labels``, and the source rows it kept."""
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
        ds = ds.select_columns(self._text_columns())
        return ds.add_column("labels", ids), keep

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

    def domains(self, role: str) -> list[str]:
        """The domain of every row of a split, in dataset order (``domain_column``).

        Raises:
            DataError: when the data has no ``domain_column``.
        """
        self.prepare()
        if not self.domain_column:
            raise DataError("this needs the domain of every row: set data.domain_column to "
                            "the column naming it (e.g. data=snli_domains)")
        return list(self._domains[role])

    def has_split(self, role: str) -> bool:
        """Whether a split is configured for ``role`` (train, eval, test or transfer)."""
        return self.split_names.get(role) is not None

    def drop_transfer(self) -> None:
        """Stops using the transfer split (e.g. when no teacher labels it)."""
        self.split_names["transfer"] = None
        self.raw.pop("transfer", None)
        self.tokenized.pop("transfer", None)
        self.teacher_logits.pop("transfer", None)
        self.teacher_features.pop("transfer", None)
        self._ids.pop("transfer", None)
        self._domains.pop("transfer", None)

    def distil_roles(self) -> list[str]:
        """The splits the student trains on: train, plus the transfer split if configured."""
        return ["train"] + (["transfer"] if self.has_split("transfer") else [])

    def row_ids(self, role: str) -> list[str]:
        """The id of every row of a split, in dataset order (see ``id_column``).

        Raises:
            DataError: when an id is empty or occurs twice in the split.
        """
        self.prepare()
        return check_row_ids(self._ids[role], f"split '{self.split_names[role]}'",
                             self.id_column)

    def _roles(self, role: str) -> list[str]:
        """The splits behind ``role``: ``distil`` is train plus transfer, others themselves."""
        return self.distil_roles() if role == "distil" else [role]

    def attach_teacher_logits(self, role: str, logits: np.ndarray) -> None:
        """Attaches precomputed teacher logits (one row per example, in split order) to a
        tokenised split; its batches then carry them as ``teacher_logits``.

        The array is kept as given, not copied: a memory-mapped ``.npy`` stays on disk and
        each batch reads only its own rows.
        """
        ds = self.tokenized[role]
        if len(logits) != len(ds):
            raise ValueError(f"{len(logits)} teacher logit rows for {len(ds)} {role} examples")
        self.teacher_logits[role] = logits

    def attach_teacher_features(self, role: str, features: ExampleFeatures) -> None:
        """Attaches a split's cached teacher features (one entry per example, in split
        order); its batches then carry them (:mod:`distillkit.data.feature_rows`)."""
        if len(features) != len(self.tokenized[role]):
            raise ValueError(f"{len(features)} cached feature rows for "
                             f"{len(self.tokenized[role])} {role} examples")
        self.teacher_features[role] = features

    def lengths(self, role: str) -> list[int]:
        """Token count of every example of a tokenised split (``distil``: train + transfer)."""
        roles = self._roles(role)
        return [len(ids) for r in roles for ids in self.tokenized[r]["input_ids"]]

    def loader(
        self, role: str, batch_size: int, shuffle: bool = False, seed: int = 0,
        num_workers: int = 0, by_length: bool = True, pin_memory: bool = False,
        shard: tuple[int, int] | None = None,
        columns: dict[str, Sequence[float | int]] | None = None,
    ) -> DataLoader:
        """A DataLoader over a tokenised split with dynamic padding.

        Args:
            role: ``train``, ``eval``, ``test``, ``transfer``, or ``distil`` (train and
                transfer together: what the student trains on).
            batch_size: examples per batch.
            shuffle: reshuffle every epoch (seeded with ``seed``).
            seed: shuffling seed.
            num_workers: DataLoader worker processes.
            by_length: batch examples of similar length together (see
                :mod:`distillkit.data.sampling`): with ``shuffle``, random length-grouped
                batches; without, batches in length order (per-example outputs go back in
                dataset order with :func:`~distillkit.data.sampling.restore_order`).
            pin_memory: batches in page-locked memory (asynchronous copies to a GPU).
            shard: ``(rank, world_size)`` in a data-parallel run: ``batch_size`` is the global
                batch and this loader yields the rank's share of each global batch (see
                :class:`~distillkit.data.sampling.ShardedBatchSampler`); with ``shuffle``
                (training) every rank yields the same number of batches.
            columns: extra per-row values for the loss only (names starting ``loss_``, e.g.
                a teacher stage's sample weights), one per row of a single split; the data
                itself is left as it is.
        """
        if self.tokenizer is None:
            raise RuntimeError("call tokenize(tokenizer) before loader()")
        # Always an own generator: iterating a loader then never draws from the global RNG,
        # so dropout and initialisation do not depend on which loaders ran before.
        generator = torch.Generator().manual_seed(seed)
        roles = self._roles(role)
        parts = [self.tokenized[r] for r in roles]
        dataset = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
        for name, values in (columns or {}).items():
            if not name.startswith("loss_") or len(values) != len(dataset):
                raise ValueError(f"column {name}: needs a loss_ name and one value per row")
            dataset = dataset.add_column(name, list(values))
        with_features = [r for r in roles if r in self.teacher_features]
        if with_features:
            if len(with_features) != len(roles):
                raise ValueError(f"teacher features attached to {with_features} but not to "
                                 f"all of {roles}")
            dataset = dataset.add_column(ROW, list(range(len(dataset))))
        with_logits = [r for r in roles if r in self.teacher_logits]
        if with_logits:
            if len(with_logits) != len(roles):
                raise ValueError(f"teacher logits attached to {with_logits} but not to all of "
                                 f"{roles}")
            dataset = WithTeacherLogits(dataset, [self.teacher_logits[r] for r in roles])
        collate = DataCollatorWithPadding(self.tokenizer, return_tensors="pt")
        if with_features:
            collate = FeatureCollator(collate, [self.teacher_features[r] for r in roles])
        if by_length:
            lengths = self.lengths(role)
            sampler = (LengthGroupedBatchSampler(lengths, batch_size, generator) if shuffle
                       else SortedBatchSampler(lengths, batch_size))
        elif shard is not None:  # the batches DataLoader(batch_size, shuffle) would draw
            order = (RandomSampler(dataset, generator=generator) if shuffle
                     else SequentialSampler(dataset))
            sampler = BatchSampler(order, batch_size, drop_last=False)
        else:
            return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                              generator=generator, collate_fn=collate, num_workers=num_workers,
                              pin_memory=pin_memory)
        if shard is not None:
            sampler = ShardedBatchSampler(sampler, len(dataset), batch_size, *shard, even=shuffle)
        # the generator also seeds worker processes: iterating never touches the global RNG
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                          generator=generator, num_workers=num_workers, pin_memory=pin_memory)
