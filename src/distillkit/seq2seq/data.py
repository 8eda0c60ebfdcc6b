"""Source-target text data for seq2seq distillation, tokenised and padded for a decoder.

Each example of a split is a list of *parts*, each one ``(source text, target text, task)``:
one part for plain training (``source_prefix + source -> target``), two for distilling step
by step (``label_prefix + source -> label`` with task 0 and ``rationale_prefix + source ->
rationale`` with task 1), and with sequence-level KD the train split's targets are the
teacher's generations (:meth:`Seq2SeqData.replace_targets`). A batch holds every part of its
examples, so both tasks of an example always train in the same step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler
from transformers import PreTrainedTokenizerBase

from distillkit.data.checks import text_encoding
from distillkit.errors import ConfigError, DataError

log = logging.getLogger(__name__)
ROLES = ("train", "eval", "test")
METRICS = ("exact_match", "bleu", "chrf")

Part = tuple[str, str, int]  # (source text, target text, task: 0 label, 1 rationale)


class Seq2SeqData:
    """Text-to-text data: source and target columns, optional rationale and LLM columns.

    Args:
        source: a callable returning a ``DatasetDict`` (generated, hub or local files).
        source_column: column with the input text.
        target_column: column with the gold target (a label such as ``16``, or free text).
        rationale_column: column with a rationale per row (distilling step by step); None
            when the data has none.
        llm_label_column: column with labels from a teacher/LLM (``loss.label_type=llm``).
        llm_rationale_column: column with rationales from a teacher/LLM; None uses
            ``rationale_column``.
        source_prefix: text put before every source (T5-style task prefix, e.g.
            ``"translate English to German: "``); step by step uses its own prefixes.
        train_split: split to train on.
        eval_split: split evaluated during/after training.
        test_split: optional split evaluated at the end (the final metrics).
        max_source_length: truncation length of sources, in tokens.
        max_target_length: truncation length of targets (and generation), in tokens.
        max_train_samples: keep only the first N training rows (None: all).
        max_eval_samples: keep only the first N rows of the eval and test splits.
        metric: the headline metric (``exact_match`` for label-style targets, ``bleu`` or
            ``chrf`` for free text); all three are always reported.
        eval_num_beams: beam size of the final evaluation's generation (1: greedy).
        encoding: text encoding of local data files (``data.encoding``).
    """

    def __init__(
        self,
        source: Callable[[], DatasetDict],
        source_column: str = "source",
        target_column: str = "target",
        rationale_column: str | None = None,
        llm_label_column: str | None = None,
        llm_rationale_column: str | None = None,
        source_prefix: str = "",
        train_split: str = "train",
        eval_split: str = "validation",
        test_split: str | None = None,
        max_source_length: int = 128,
        max_target_length: int = 64,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        metric: str = "exact_match",
        eval_num_beams: int = 1,
        encoding: str = "utf-8",
    ) -> None:
        if metric not in METRICS:
            raise ConfigError(f"data.metric='{metric}' is not one of {', '.join(METRICS)}")
        self._source = source
        self.encoding = encoding
        self.columns = {"source_column": source_column, "target_column": target_column,
                        "rationale_column": rationale_column,
                        "llm_label_column": llm_label_column,
                        "llm_rationale_column": llm_rationale_column or rationale_column}
        self.source_prefix = source_prefix
        self.split_names = {"train": train_split, "eval": eval_split, "test": test_split}
        self.max_source_length = int(max_source_length)
        self.max_target_length = int(max_target_length)
        self.limits = {"train": max_train_samples, "eval": max_eval_samples,
                       "test": max_eval_samples}
        self.metric = metric
        self.eval_num_beams = int(eval_num_beams)
        self.raw: dict[str, Dataset] = {}
        self.parts: dict[str, list[list[Part]]] = {}
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.decoder_start_token_id = 0
        self._encoded: dict[str, list[list[tuple[list[int], list[int], int]]]] = {}

    # -- raw data -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Loads the raw splits and checks the configured columns (idempotent)."""
        if self.raw:
            return
        with text_encoding(self.encoding):  # distillkit.data.checks
            data = self._source() if callable(self._source) else self._source
        for role, split in self.split_names.items():
            if split is None:
                continue
            if split not in data:
                raise DataError(f"split '{split}' (data.{role}_split) not found; available: "
                                f"{', '.join(data)}")
            ds = data[split]
            limit = self.limits[role]
            if limit is not None and limit < len(ds):
                ds = ds.select(range(limit))
            for key in ("source_column", "target_column"):
                self._need(ds, key, split)
            self.raw[role] = ds
            log.info("%s split '%s': %d examples", role, split, len(ds))
        self.parts = {role: [[(self.source_prefix + s, t, 0)] for s, t in
                             zip(self.sources(role, prefix=""), self.column(role, "target_column"),
                                 strict=True)] for role in self.raw}

    def _need(self, ds: Dataset, key: str, split: str) -> str:
        column = self.columns[key]
        if column is None:
            raise ConfigError(f"data.{key} is null but this run needs it; set data.{key} to a "
                              f"column of split '{split}' ({', '.join(ds.column_names)})")
        if column not in ds.column_names:
            raise DataError(f"column '{column}' (data.{key}) not in split '{split}'; its "
                            f"columns are: {', '.join(ds.column_names)}. Set data.{key} to "
                            "one of them")
        return column

    def has_split(self, role: str) -> bool:
        """Whether a split is configured for ``role`` (train, eval or test)."""
        return self.split_names.get(role) is not None

    def column(self, role: str, key: str) -> list[str]:
        """A configured column (``target_column``, ``rationale_column``, ...) of a split, as
        whitespace-normalised strings."""
        self.prepare()
        name = self._need(self.raw[role], key, self.split_names[role])
        return [" ".join(str(v).split()) for v in self.raw[role][name]]

    def sources(self, role: str, prefix: str | None = None) -> list[str]:
        """The split's source texts with ``prefix`` (None: ``data.source_prefix``)."""
        self.prepare()
        prefix = self.source_prefix if prefix is None else prefix
        return [prefix + text for text in self.column(role, "source_column")]

    def references(self, role: str) -> list[str]:
        """The split's gold targets (what evaluation compares generations with)."""
        return self.column(role, "target_column")

    # -- what the student trains on -------------------------------------------------------
    def use_step_by_step(self, label_prefix: str, rationale_prefix: str, label_key: str,
                         rationale_key: str, rationales: Sequence[str] | None = None,
                         labels: Sequence[str] | None = None) -> None:
        """Every train example becomes two parts: ``label_prefix + source -> label``
        (task 0) and ``rationale_prefix + source -> rationale`` (task 1).

        Args:
            label_prefix: prefix of the label task (also the only one used at inference).
            rationale_prefix: prefix of the rationale task.
            label_key: the column key of the labels (``target_column`` or
                ``llm_label_column``).
            rationale_key: the column key of the rationales.
            rationales: train-split rationales given directly (e.g. generated by a teacher),
                instead of the column.
            labels: train-split labels given directly, instead of the column.
        """
        ys = list(labels) if labels is not None else self.column("train", label_key)
        reasons = (list(rationales) if rationales is not None
                   else self.column("train", rationale_key))
        self.parts["train"] = [
            [(label_prefix + s, y, 0), (rationale_prefix + s, r, 1)]
            for s, y, r in zip(self.sources("train", ""), ys, reasons, strict=True)]
        self._encoded.pop("train", None)

    def replace_targets(self, role: str, generations: Sequence[Sequence[str]],
                        mix_original: bool = False) -> None:
        """Sequence-level KD: the split's targets become the teacher's generations.

        Args:
            role: the split (``train``).
            generations: per example, its n-best teacher outputs (each one becomes a part).
            mix_original: keep the gold target as one more part of every example.
        """
        sources = [parts[0][0] for parts in self.parts[role]]
        if len(generations) != len(sources):
            raise ValueError(f"{len(generations)} generations for {len(sources)} examples")
        gold = [parts[0][1] for parts in self.parts[role]]
        self.parts[role] = [[(s, g, 0) for g in gens] + ([(s, y, 0)] if mix_original else [])
                            for s, gens, y in zip(sources, generations, gold, strict=True)]
        self._encoded.pop(role, None)

    # -- tokenised batches ----------------------------------------------------------------
    def tokenize(self, tokenizer: PreTrainedTokenizerBase, decoder_start_token_id: int) -> None:
        """Sets the tokenizer (the teacher's) and the decoder's start token."""
        self.prepare()
        self.tokenizer = tokenizer
        self.decoder_start_token_id = int(decoder_start_token_id)
        self._encoded.clear()

    def encode_sources(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of source texts (truncated to ``max_source_length``)."""
        return self.tokenizer(list(texts), truncation=True,
                              max_length=self.max_source_length)["input_ids"]

    def encode_targets(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of target texts, ending with the end-of-sequence token and without a
        leading ``[CLS]``/``<s>`` (the decoder's start token comes from the model)."""
        ids = self.tokenizer(list(texts), truncation=True,
                             max_length=self.max_target_length + 1)["input_ids"]
        first = self.tokenizer.cls_token_id if self.tokenizer.cls_token_id is not None \
            else self.tokenizer.bos_token_id
        return [seq[1:] if first is not None and seq and seq[0] == first else seq
                for seq in ids]

    def encoded(self, role: str) -> list[list[tuple[list[int], list[int], int]]]:
        """Per example, its parts as ``(input_ids, label_ids, task)`` (computed once)."""
        if self.tokenizer is None:
            raise RuntimeError("call tokenize(tokenizer, decoder_start_token_id) first")
        if role not in self._encoded:
            flat = [p for parts in self.parts[role] for p in parts]
            sources = self.encode_sources([p[0] for p in flat])
            targets = self.encode_targets([p[1] for p in flat])
            rows, i = [], 0
            for parts in self.parts[role]:
                rows.append([(sources[i + j], targets[i + j], parts[j][2])
                             for j in range(len(parts))])
                i += len(parts)
            self._encoded[role] = rows
        return self._encoded[role]

    def collate(self, examples: list[list[tuple[list[int], list[int], int]]]) -> dict:
        """Pads every part of the examples into one batch: ``input_ids``, ``attention_mask``,
        ``decoder_input_ids`` (the labels shifted right after the start token), ``labels``
        (-100 at padding) and ``loss_task`` (0 label, 1 rationale)."""
        flat = [p for parts in examples for p in parts]
        pad = self.tokenizer.pad_token_id or 0
        src_len = max(len(s) for s, _, _ in flat)
        tgt_len = max(len(t) for _, t, _ in flat)
        input_ids = torch.full((len(flat), src_len), pad, dtype=torch.long)
        attention = torch.zeros((len(flat), src_len), dtype=torch.long)
        labels = torch.full((len(flat), tgt_len), -100, dtype=torch.long)
        decoder = torch.full((len(flat), tgt_len), pad, dtype=torch.long)
        for i, (src, tgt, _) in enumerate(flat):
            input_ids[i, :len(src)] = torch.tensor(src)
            attention[i, :len(src)] = 1
            labels[i, :len(tgt)] = torch.tensor(tgt)
            decoder[i, 0] = self.decoder_start_token_id
            decoder[i, 1:len(tgt)] = torch.tensor(tgt[:-1])
        return {"input_ids": input_ids, "attention_mask": attention,
                "decoder_input_ids": decoder, "labels": labels,
                "loss_task": torch.tensor([t for _, _, t in flat], dtype=torch.long)}

    def loader(self, role: str, batch_size: int, shuffle: bool = False, seed: int = 0,
               num_workers: int = 0, **_: object) -> DataLoader:
        """A DataLoader over the examples of a split (every part of an example together)."""
        rows = self.encoded(role)
        generator = torch.Generator().manual_seed(seed)
        sampler = (RandomSampler(rows, generator=generator) if shuffle
                   else SequentialSampler(rows))
        return DataLoader(rows, batch_size=batch_size, sampler=sampler, collate_fn=self.collate,
                          num_workers=num_workers, generator=generator)

    def num_parts(self, role: str) -> int:
        """How many (source, target) pairs the split trains on."""
        return sum(len(parts) for parts in self.parts[role])
