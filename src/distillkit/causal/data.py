"""Causal-LM data (``task=causal_lm``): splits of text, prompt/response pairs or chats,
tokenised once with the teacher's tokenizer and padded into next-token batches.

A batch holds

* ``input_ids``, ``attention_mask``: right-padded;
* ``labels``: position-aligned next-token targets
  (:func:`~distillkit.causal.token_loss.shift_for_next_token`), ``-100`` on prompt tokens,
  non-assistant turns and padding;
* ``loss_prompt_length``: per example, its tokens before the last response (what an on-policy
  step samples a response from);
* ``loss_row``: per example, its row number in the split (:meth:`CausalLMData.row_ids` names
  the rows), to which a cache of the teacher's outputs can attach its entries per batch.

The ``loss_`` entries never reach a model (:mod:`distillkit.engine.evaluate`). Without an eval
split, ``validation_fraction`` of the train split is carved out with ``split_seed``; without a
test split the final evaluation is on the eval split.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
from collections.abc import Callable

import torch
from datasets import Dataset, DatasetDict
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from transformers import PreTrainedTokenizerBase

from distillkit.causal.encode import (
    FORMATS,
    IGNORE,
    Encoded,
    encode_chat,
    encode_pair,
    encode_text,
)
from distillkit.causal.token_loss import shift_for_next_token
from distillkit.data.checks import text_encoding
from distillkit.data.sampling import ShardedBatchSampler
from distillkit.errors import ConfigError, DataError

log = logging.getLogger(__name__)
ROLES = ("train", "eval", "test")
ROW = "loss_row"
PROMPT_LENGTH = "loss_prompt_length"


def prompt_end(prompt_length: int, tokens: int) -> int:
    """Where an example's prompt ends: its prompt length, or for plain text (no prompt) half
    of its tokens (at least one)."""
    return int(prompt_length) or max(1, tokens // 2)


class CausalLMData:
    """Text for a causal LM: one format, three splits, tokenised by the teacher's tokenizer.

    Args:
        source: a callable returning a ``DatasetDict`` (generated, the SNLI asset, local
            files or a hub dataset).
        format: ``text`` (column ``text_column``), ``pairs`` (``prompt_column`` and
            ``response_column``) or ``chat`` (``messages_column``).
        text_column: the text of ``format=text``.
        prompt_column: the prompt of ``format=pairs``.
        response_column: the response of ``format=pairs``.
        messages_column: the conversation of ``format=chat``.
        separator: what joins a pair's prompt and response (``format=pairs``).
        chat_template: ``format=pairs`` rendered as a user/assistant chat with the tokenizer's
            chat template instead of ``prompt + separator + response``.
        train_split: the split trained on.
        eval_split: the split evaluated during training (carved from train when absent).
        test_split: the split of the final evaluation (null or absent: the eval split).
        max_length: tokens per example (longer ones are cut at the end).
        max_train_examples: keep the first N training rows (None: all).
        max_eval_examples: keep the first N rows of the eval and test splits (None: all).
        validation_fraction: share of train carved into the eval split when there is none.
        split_seed: seed of that carve.
        num_generations: held-out prompts both models answer greedily at the end.
        max_new_tokens: tokens each of those generations may add.
        encoding: text encoding of local data files.
    """

    def __init__(self, source: Callable[[], DatasetDict], format: str = "text",  # noqa: A002
                 text_column: str = "text", prompt_column: str = "prompt",
                 response_column: str = "response", messages_column: str = "messages",
                 separator: str = " ", chat_template: bool = False, train_split: str = "train",
                 eval_split: str = "validation", test_split: str | None = "test",
                 max_length: int = 128, max_train_examples: int | None = None,
                 max_eval_examples: int | None = None, validation_fraction: float = 0.1,
                 split_seed: int = 0, num_generations: int = 8, max_new_tokens: int = 32,
                 encoding: str = "utf-8") -> None:
        if format not in FORMATS:
            raise ConfigError(f"data.format='{format}' is not one of {', '.join(FORMATS)}")
        if int(max_length) < 2:
            raise ConfigError(f"data.max_length={max_length} must be at least 2 (a token and "
                              "the one it predicts)")
        if not 0.0 <= float(validation_fraction) < 1.0:
            raise ConfigError(f"data.validation_fraction={validation_fraction} must be in "
                              "[0, 1)")
        self._source = source
        self.format = format
        self.columns = {"text": text_column, "prompt": prompt_column,
                        "response": response_column, "messages": messages_column}
        self.separator = separator
        self.chat_template = bool(chat_template)
        self.split_names = {"train": train_split, "eval": eval_split, "test": test_split}
        self.max_length = int(max_length)
        self.limits = {"train": max_train_examples, "eval": max_eval_examples,
                       "test": max_eval_examples}
        self.validation_fraction = float(validation_fraction)
        self.split_seed = int(split_seed)
        self.num_generations = int(num_generations)
        self.max_new_tokens = int(max_new_tokens)
        self.encoding = encoding
        self.raw: dict[str, Dataset] = {}
        self.origin: dict[str, list[int]] = {}  # per role, each row's number in its split
        self.carved = False  # the eval split was carved from train
        self.encoded: dict[str, list[Encoded]] = {}
        self.tokenizer: PreTrainedTokenizerBase | None = None

    # -- raw splits -----------------------------------------------------------------------
    def _files(self) -> dict[str, str]:
        """The local files of a ``local_files`` source, by split (for messages)."""
        if isinstance(self._source, functools.partial):
            return {k: str(v) for k, v in self._source.keywords.items() if isinstance(v, str)}
        return {}

    def _needed(self) -> list[str]:
        if self.format == "text":
            return [self.columns["text"]]
        if self.format == "pairs":
            return [self.columns["prompt"], self.columns["response"]]
        return [self.columns["messages"]]

    def prepare(self) -> None:
        """Loads the splits, carves the eval split if needed and checks the columns."""
        if self.raw:
            return
        with text_encoding(self.encoding):
            data = self._source() if callable(self._source) else self._source
        names = dict(self.split_names)
        if names["train"] not in data:
            raise DataError(f"split '{names['train']}' (data.train_split) not found; available: "
                            f"{', '.join(data)}")
        train = data[names["train"]]
        origin = {}
        self.carved = names["eval"] not in data
        if self.carved:
            kept, carved = self._carve(len(train))
            train, origin["train"], origin["eval"] = train.select(kept), kept, carved
            data = DatasetDict({**data, names["eval"]: data[names["train"]].select(carved)})
        for role, split in names.items():
            if split is None or (role == "test" and split not in data):
                self.split_names[role] = None
                continue
            ds = train if role == "train" else data[split]
            limit = self.limits[role]
            if limit is not None and limit < len(ds):
                ds = ds.select(range(int(limit)))
            self.origin[role] = origin.get(role, list(range(len(ds))))[:len(ds)]
            if len(ds) == 0:
                raise DataError(f"split '{split}' (data.{role}_split) has no rows")
            self._check_columns(ds, split)
            self.raw[role] = ds
            log.info("%s split '%s': %d examples (%s)", role, split, len(ds), self.format)

    def _carve(self, rows: int) -> tuple[list[int], list[int]]:
        """The train rows kept and the ones carved into the eval split."""
        n = int(round(rows * self.validation_fraction))
        if n < 1 or n >= rows:
            raise DataError(
                f"there is no split '{self.split_names['eval']}' (data.eval_split) and "
                f"data.validation_fraction={self.validation_fraction} of {rows} training "
                "rows carves none; give an eval split or raise data.validation_fraction")
        order = list(range(rows))
        random.Random(self.split_seed).shuffle(order)
        log.info("no '%s' split: %d of %d training rows carved into it (seed %d)",
                 self.split_names["eval"], n, rows, self.split_seed)
        return sorted(order[n:]), sorted(order[:n])

    def _check_columns(self, ds: Dataset, split: str) -> None:
        where = self._files().get(split)
        for column in self._needed():
            if column not in ds.column_names:
                key = next(k for k, v in self.columns.items() if v == column)
                raise DataError(
                    f"column '{column}' (data.{key}_column) not in split '{split}'"
                    f"{f' ({where})' if where else ''}; its columns are: "
                    f"{', '.join(ds.column_names)}. Set data.{key}_column to one of them")

    def has_split(self, role: str) -> bool:
        """Whether the data has a split for ``role`` (after :meth:`prepare`)."""
        self.prepare()
        return role in self.raw

    # -- tokens -----------------------------------------------------------------------------
    def _encode(self, row: dict, split: str, i: int) -> Encoded:
        c, tok = self.columns, self.tokenizer
        if self.format == "text":
            return encode_text(tok, row[c["text"]], split, i, c["text"])
        if self.format == "chat":
            return encode_chat(tok, row[c["messages"]], split, i, c["messages"])
        if self.chat_template:
            messages = [{"role": "user", "content": row[c["prompt"]]},
                        {"role": "assistant", "content": row[c["response"]]}]
            return encode_chat(tok, messages, split, i, f"{c['prompt']}/{c['response']}")
        return encode_pair(tok, row[c["prompt"]], row[c["response"]], self.separator, split, i,
                           (c["prompt"], c["response"]))

    def tokenize(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Tokenises every split with ``tokenizer`` (the teacher's), cutting each example to
        ``max_length``; an example left with nothing to learn is dropped with a warning.

        Raises:
            DataError: a bad row (naming split, row and column), or a split left empty.
        """
        self.prepare()
        self.tokenizer = tokenizer
        for role, ds in self.raw.items():
            split = self._source_split(role)
            where = self._files().get(split)
            rows, dropped, kept = [], 0, []
            for i, row in zip(self.origin[role], ds, strict=True):
                try:
                    ex = self._encode(row, split, i)
                except DataError as exc:
                    raise DataError(f"{where}: {exc}" if where else str(exc)) from exc
                ids = ex.input_ids[:self.max_length]
                labels = ex.labels[:self.max_length]
                if sum(label != IGNORE for label in labels[1:]) == 0:
                    dropped += 1
                    continue
                rows.append(Encoded(ids, labels, min(ex.prompt_length, len(ids))))
                kept.append(i)
            if dropped:
                log.warning("split '%s': %d example(s) have nothing to learn within "
                            "data.max_length=%d tokens (prompt too long) and are left out",
                            split, dropped, self.max_length)
            if not rows:
                raise DataError(f"split '{split}' has no example with a token to learn within "
                                f"data.max_length={self.max_length}; raise data.max_length")
            self.encoded[role], self.origin[role] = rows, kept

    def _source_split(self, role: str) -> str:
        """The split a role's rows come from (an eval split carved from train: train)."""
        return self.split_names["train"] if role == "eval" and self.carved \
            else self.split_names[role]

    def row_ids(self, role: str) -> list[str]:
        """A stable id per example of a split, ``<source split>/<row in it>`` (batches carry
        the position in this list as :data:`ROW`); with :meth:`fingerprint`, what a
        teacher-output cache keys its entries by."""
        split = self._source_split(role)
        return [f"{split}/{i}" for i in self.origin[role]]

    def fingerprint(self, role: str) -> str:
        """A hash of the split's tokens and labels (changes when the data or tokenizer do)."""
        digest = hashlib.sha256()
        for ex in self.encoded[role]:
            digest.update(json.dumps([ex.input_ids, ex.labels]).encode())
        return digest.hexdigest()[:20]

    def num_tokens(self, role: str) -> int:
        """Learnt tokens of a split (labels other than -100, after the shift)."""
        return sum(sum(label != IGNORE for label in ex.labels[1:]) for ex in self.encoded[role])

    def collate(self, examples: list[tuple[int, Encoded]]) -> dict[str, torch.Tensor]:
        """Right-pads ``(row, example)`` pairs into a batch (see the module docstring)."""
        pad = self.tokenizer.pad_token_id
        pad = 0 if pad is None else int(pad)
        length = max(len(ex.input_ids) for _, ex in examples)
        input_ids = torch.full((len(examples), length), pad, dtype=torch.long)
        attention = torch.zeros((len(examples), length), dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
        for i, (_, ex) in enumerate(examples):
            n = len(ex.input_ids)
            input_ids[i, :n] = torch.tensor(ex.input_ids)
            attention[i, :n] = 1
            labels[i, :n] = torch.tensor(ex.labels)
        return {"input_ids": input_ids, "attention_mask": attention,
                "labels": shift_for_next_token(labels, attention),
                PROMPT_LENGTH: torch.tensor([ex.prompt_length for _, ex in examples]),
                ROW: torch.tensor([row for row, _ in examples])}

    def loader(self, role: str, batch_size: int, shuffle: bool = False, seed: int = 0,
               collate: Callable[[list], dict] | None = None,
               shard: tuple[int, int] | None = None) -> DataLoader:
        """Batches of a split; ``collate`` replaces :meth:`collate` (e.g. one that adds cached
        teacher outputs to its result by :data:`ROW`).

        ``shard`` is ``(rank, world_size)`` in a data-parallel run: ``batch_size`` is the
        global batch and the loader yields the rank's share of each one
        (:class:`~distillkit.data.sampling.ShardedBatchSampler`: the same global batches as
        one process, every rank the same number of batches when shuffling)."""
        rows = list(enumerate(self.encoded[role]))
        generator = torch.Generator().manual_seed(seed)
        sampler = RandomSampler(rows, generator=generator) if shuffle else SequentialSampler(rows)
        batches = BatchSampler(sampler, batch_size, drop_last=False)
        if shard is not None:
            batches = ShardedBatchSampler(batches, len(rows), batch_size, *shard, even=shuffle)
        return DataLoader(rows, batch_sampler=batches, collate_fn=collate or self.collate,
                          generator=generator)

    def replace_responses(self, role: str, prompts: list[list[int]],
                          responses: list[list[int]]) -> None:
        """Sequence-level KD: each example of a split becomes its prompt followed by the given
        response (learnt), cut to ``max_length``; rows and their ids stay."""
        if not len(prompts) == len(responses) == len(self.encoded[role]):
            raise ValueError(f"{len(prompts)} prompts and {len(responses)} responses for "
                             f"{len(self.encoded[role])} examples of split '{role}'")
        self.encoded[role] = [
            Encoded((p + r)[:self.max_length], ([IGNORE] * len(p) + r)[:self.max_length],
                    min(len(p), self.max_length))
            for p, r in zip(prompts, responses, strict=True)]

    def prompts(self, role: str, n: int) -> list[tuple[list[int], list[int]]]:
        """The first ``n`` examples of a split as ``(prompt ids, reference continuation
        ids)``: up to the prompt length, or for plain text its first half."""
        out = []
        for ex in self.encoded[role][:n]:
            cut = prompt_end(ex.prompt_length, len(ex.input_ids))
            out.append((ex.input_ids[:cut], ex.input_ids[cut:]))
        return out
