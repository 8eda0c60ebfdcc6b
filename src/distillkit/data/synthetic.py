"""A generated sentence-pair task for tests and the offline tiny setup.

The label is carried by a marker word in the hypothesis (``yes``-like words mean entailment,
``no``-like words contradiction, ``maybe``-like words neutral), so a small model can learn it
and a teacher's soft labels carry real information.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from datasets import Dataset, DatasetDict

from distillkit.models.tokenizers import TINY_WORDS

LABELS = ("entailment", "neutral", "contradiction")
_MARKERS = {
    "entailment": ("yes", "true", "indeed", "surely"),
    "neutral": ("maybe", "perhaps", "might", "possibly"),
    "contradiction": ("no", "not", "never", "false"),
}
_FILLER = tuple(w for w in TINY_WORDS if not any(w in m for m in _MARKERS.values()))


def _example(rng: random.Random, label_noise: float) -> dict[str, str]:
    label = rng.choice(LABELS)
    premise = " ".join(rng.choice(_FILLER) for _ in range(rng.randint(4, 9)))
    words = [rng.choice(_FILLER) for _ in range(rng.randint(3, 7))]
    words.insert(rng.randrange(len(words) + 1), rng.choice(_MARKERS[label]))
    if rng.random() < label_noise:
        label = rng.choice(LABELS)
    return {"premise": premise, "hypothesis": " ".join(words), "label": label}


def synthetic_nli(
    n_train: int = 512,
    n_validation: int = 128,
    n_test: int = 128,
    label_noise: float = 0.1,
    seed: int = 0,
    domains: Sequence[str] = (),
) -> DatasetDict:
    """Generates the tiny NLI-style task (columns ``premise``, ``hypothesis``, ``label``).

    Args:
        n_train: training pairs.
        n_validation: validation pairs.
        n_test: test pairs.
        label_noise: fraction of labels replaced by a random label.
        seed: the generator's seed; the same seed gives the same data everywhere.
        domains: names of domains; when given, a ``domain`` column assigns them to the rows
            of every split in turn (row ``i`` gets ``domains[i % len(domains)]``); the texts
            are the same as without.
    """
    rng = random.Random(seed)
    splits = {"train": n_train, "validation": n_validation, "test": n_test}
    out = {}
    for name, n in splits.items():
        if n <= 0:
            continue
        rows = [_example(rng, label_noise) for _ in range(n)]
        if domains:
            rows = [{**r, "domain": str(domains[i % len(domains)])} for i, r in enumerate(rows)]
        out[name] = Dataset.from_list(rows)
    return DatasetDict(out)
