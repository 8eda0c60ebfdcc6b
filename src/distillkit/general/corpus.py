"""The general stage's unlabelled text and its batches.

``general.corpus``:

* ``snli``: the premises and hypotheses of the 100k SNLI training pairs of the offline asset
  (CC BY-SA 4.0), de-duplicated in order of first appearance (the test set is never read);
* a local file or a list of them: ``.txt`` (one text per line, blank lines skipped) or a table
  (``.jsonl``, ``.json``, ``.csv``, ``.tsv``) whose ``general.text_column`` holds the text;
* ``hub:<dataset>[:<config>]``: the ``train`` split of a datasets hub dataset (needs the
  internet; no dataset code is run).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from distillkit.data.feature_rows import ROW, FeatureCollator
from distillkit.data.sources import hub_dataset, read_rows
from distillkit.errors import DataError
from distillkit.runtime.assets import asset_path

log = logging.getLogger(__name__)
HUB_PREFIX = "hub:"


def _snli() -> list[str]:
    root = asset_path("snli")
    rows = read_rows(root / "snli_1.0_train_subset.jsonl", key="general.corpus")
    return [text for row in rows for text in (row.get("sentence1"), row.get("sentence2"))
            if isinstance(text, str)]


def _text_file(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"general.corpus file not found: {path}; give a .txt file (one text "
                        "per line), a table file, snli, or hub:<dataset>")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"general.corpus file {path}: not valid UTF-8 text at byte offset "
                        f"{exc.start} (line {line}); save it as UTF-8") from exc


def _column(rows: Sequence[Any], column: str, where: str) -> list[str]:
    texts = []
    for i, row in enumerate(rows):
        if column not in row:
            raise DataError(f"{where}: row {i + 1} has no column '{column}' (general."
                            f"text_column); its columns: {', '.join(map(str, row))}")
        texts.append(row[column])
    return texts


def _hub(spec: str, column: str) -> list[str]:
    name, _, config = spec[len(HUB_PREFIX):].partition(":")
    if not name:
        raise DataError("general.corpus=hub: names no dataset; use hub:<dataset>[:<config>]")
    data = hub_dataset(name, config or None)
    if "train" not in data:
        raise DataError(f"general.corpus={spec}: the dataset has no train split (it has "
                        f"{', '.join(data)})")
    if column not in data["train"].column_names:
        raise DataError(f"general.corpus={spec}: no column '{column}' (general.text_column); "
                        f"its columns: {', '.join(data['train'].column_names)}")
    return list(data["train"][column])


def _sources(corpus: Any) -> list[str]:
    return [str(s) for s in ([corpus] if isinstance(corpus, str) else list(corpus))]


def check_corpus(corpus: Any) -> None:
    """Cheap check before any stage runs: every local file of the corpus exists.

    Raises:
        DataError: naming the first missing file.
    """
    for source in _sources(corpus):
        if source != "snli" and not source.startswith(HUB_PREFIX) \
                and not Path(source).expanduser().is_file():
            raise DataError(f"general.corpus file not found: {source}; give a .txt file (one "
                            "text per line), a table file, snli, or hub:<dataset>")


def load_texts(corpus: Any, text_column: str = "text", max_texts: int | None = None
               ) -> list[str]:
    """The corpus's texts: stripped, non-empty, de-duplicated in order of first appearance.

    Raises:
        DataError: a missing or unreadable file, a missing column, or no text at all.
    """
    texts: list[str] = []
    for source in _sources(corpus):
        if source == "snli":
            texts += _snli()
        elif source.startswith(HUB_PREFIX):
            texts += _hub(source, text_column)
        else:
            path = Path(source).expanduser()
            if path.suffix.lower() == ".txt" or not path.suffix:
                texts += _text_file(path)
            else:
                texts += _column(read_rows(path, key="general.corpus"), text_column, str(path))
    unique = list(dict.fromkeys(t.strip() for t in texts if isinstance(t, str) and t.strip()))
    if max_texts is not None:
        unique = unique[:max_texts]
    if not unique:
        raise DataError(f"general.corpus={corpus} holds no text; point it at a file with "
                        "one text per line, or use general.corpus=snli")
    log.info("general corpus: %d distinct texts (of %d read) from %s", len(unique),
             len(texts), corpus)
    return unique


def padded(rows: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Token-id rows as a right-padded batch: ``input_ids`` and ``attention_mask``."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


class CorpusBatches:
    """Batches of token ids grouped by length (little padding), in a seeded random order that
    changes every epoch; each batch holds ``input_ids`` and ``attention_mask``.

    Args:
        ids: token ids per text.
        batch_size: texts per batch.
        pad_id: the padding token id.
        seed: the order's seed.
        features: the texts' cached teacher features
            (:func:`distillkit.general.features.corpus_feature_rows`), added to every batch;
            None: the teacher runs live.
    """

    def __init__(self, ids: Sequence[Sequence[int]], batch_size: int, pad_id: int,
                 seed: int, features: FeatureCollator | None = None) -> None:
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        self.batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        self.ids, self.pad_id, self.seed, self.epoch = ids, int(pad_id), int(seed), 0
        self.features = features

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = list(range(len(self.batches)))
        random.Random(self.seed + self.epoch).shuffle(order)
        self.epoch += 1
        for b in order:
            batch = padded([self.ids[i] for i in self.batches[b]], self.pad_id)
            if self.features is not None:
                batch[ROW] = torch.tensor(self.batches[b], dtype=torch.long)
                batch = self.features.add_features(batch)
            yield batch
