"""Small generated csv files for the data=files, predict and docs/own-data.md tests.

A review's label is carried by a marker word (``yes``-like: positive, ``no``-like: negative)
among words of the tiny tokenizer, so tiny models can learn it; a pair's label by a marker in
its hypothesis, as in ``data=tiny``.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from distillkit.data.synthetic import synthetic_nli

_FILLER = ("a", "the", "man", "woman", "dog", "cat", "child", "park", "house", "street", "red",
           "blue", "big", "small", "happy", "old", "runs", "sits", "eats", "plays", "in", "on")
_MARKERS = {"positive": ("yes", "true", "indeed", "surely"),
            "negative": ("no", "not", "never", "false")}


def reviews(n: int, seed: int = 0, start: int = 0) -> list[dict[str, str]]:
    """``n`` rows ``{id, text, label}``; ids ``r<start>``, ``r<start+1>``, ..."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 5 < 3 else "negative"  # 60/40
        words = [rng.choice(_FILLER) for _ in range(rng.randint(3, 7))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(_MARKERS[label]))
        rows.append({"id": f"r{start + i}", "text": " ".join(words), "label": label})
    return rows


def pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` NLI-style rows ``{premise, hypothesis, label}`` (three labels)."""
    rows = synthetic_nli(n_train=n, n_validation=0, n_test=0, seed=seed)["train"]
    return [dict(r) for r in rows]


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> Path:
    """Writes ``rows`` (only ``columns``, if given) as a csv file with a header."""
    columns = columns or list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a csv file with a header."""
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
