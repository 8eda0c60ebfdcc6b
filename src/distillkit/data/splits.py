"""Which raw split plays which role, and the validation split carved from the training data.

Local files (``data=files``) hold only the splits the user gave. Without a validation file, a
seeded, stratified share of the training file becomes the validation split
(``data.validation_fraction``, ``data.split_seed``); without a test file
(``data.optional_test``), the final evaluation is on the validation split. Carving is
deterministic: the same file, fraction and seed always give the same rows, in file order, so
the teacher-stage cache key (which hashes the train split's rows) stays the same. Without a
``data.id_column``, row ids (offline teacher logits) are positions within the carved splits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from datasets import DatasetDict

from distillkit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Data keys that point a role at another split, or make one, named by the messages below.
_FIXES = {
    "train": "set data.train_split to one of them (data=files: data.source.train=<file>)",
    "eval": ("give a validation file (data=files: data.source.validation=<file>), carve one "
             "from the training data (data.validation_fraction=0.1), or evaluate on a split "
             "the data has (data.eval_split=<one of them>)"),
    "test": ("set data.test_split to one of them, or data.test_split=null to run the final "
             "evaluation on the eval split"),
    "transfer": "set data.transfer_split to one of them, or null for no transfer split",
}


def stratified_indices(labels: Sequence[object], fraction: float, seed: int
                       ) -> tuple[list[int], list[int]]:
    """Splits row indices into (kept, carved): ``fraction`` of the rows, stratified by label.

    Each label gives ``fraction`` of its rows (largest-remainder rounding, so the carved total
    is ``round(fraction * len(labels))`` where possible) and keeps at least one row. Which rows
    go is drawn with ``numpy.random.default_rng(seed)``, label by label in sorted order; both
    lists come back in row order.

    Args:
        labels: the label of every row (any values; compared as strings).
        fraction: share of rows to carve, in [0, 1).
        seed: seed of the draw.
    """
    by_label: dict[str, list[int]] = {}
    for i, value in enumerate(labels):
        by_label.setdefault(str(value), []).append(i)
    names = sorted(by_label)
    quota = {n: fraction * len(by_label[n]) for n in names}
    take = {n: min(math.floor(quota[n]), len(by_label[n]) - 1) for n in names}
    left = math.floor(fraction * len(labels) + 0.5) - sum(take.values())
    for n in sorted(names, key=lambda n: (-(quota[n] - math.floor(quota[n])), n)):
        if left <= 0:
            break
        if take[n] < len(by_label[n]) - 1:
            take[n] += 1
            left -= 1
    rng = np.random.default_rng(seed)
    carved: list[int] = []
    for n in names:
        carved += [int(i) for i in rng.permutation(by_label[n])[:take[n]]]
    chosen = set(carved)
    return [i for i in range(len(labels)) if i not in chosen], sorted(carved)


def _carve(data: DatasetDict, train: str, into: str, label_column: str, fraction: float,
           seed: int) -> DatasetDict:
    """``data`` with ``fraction`` of split ``train`` moved into a new split ``into``."""
    rows = data[train]
    if label_column not in rows.column_names:
        raise DataError(f"column '{label_column}' (data.label_column) not in split '{train}'; "
                        f"its columns are: {', '.join(rows.column_names)}. Set "
                        "data.label_column to one of them")
    labels = rows[label_column]
    kept, carved = stratified_indices(labels, fraction, seed)
    if not carved:
        raise DataError(
            f"cannot carve a validation split: split '{train}' has {len(rows)} rows and "
            f"data.validation_fraction={fraction} leaves none for validation (every label keeps "
            "one training row); give a validation file (data=files: "
            "data.source.validation=<file>) or raise data.validation_fraction")
    carved_set = set(carved)
    out = DatasetDict(dict(data))
    out[train], out[into] = rows.select(kept), rows.select(carved)
    counts = {str(v): [0, 0] for v in labels}  # label -> [kept, carved]
    for i, value in enumerate(labels):
        counts[str(value)][i in carved_set] += 1
    per_label = ", ".join(f"{n} {k}/{c}" for n, (k, c) in sorted(counts.items()))
    log.info("no '%s' split in the data: carved %d of the %d rows of split '%s' into '%s' "
             "(data.validation_fraction=%s, stratified by '%s', data.split_seed=%d); '%s' keeps "
             "%d rows, '%s' has %d (rows per label, %s/%s: %s)", into, len(carved), len(rows),
             train, into, fraction, label_column, seed, train, len(kept), into, len(carved),
             train, into, per_label)
    return out


def resolve_splits(data: DatasetDict, names: dict[str, str | None], label_column: str,
                   validation_fraction: float = 0.0, split_seed: int = 0,
                   optional_test: bool = False) -> tuple[DatasetDict, dict | None]:
    """Checks that every role's split exists, carving the eval split from train if allowed.

    ``names`` (role -> split name, the data module's ``split_names``) is updated in place:
    with ``optional_test`` a test split the data lacks is dropped (``names["test"] = None``),
    so the final evaluation is on the eval split.

    Returns:
        The data (with the carved split, if any) and a record of the carving (None if none).

    Raises:
        ConfigError: for a ``validation_fraction`` outside [0, 1).
        DataError: for a missing split, naming the settings that fix it.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ConfigError(f"data.validation_fraction={validation_fraction} must be in [0, 1): "
                          "the share of the training data carved into the validation split "
                          "(0: never carve)")
    carved = None
    train, evaluate = names.get("train"), names.get("eval")
    if (evaluate is not None and evaluate not in data and validation_fraction > 0
            and train in data):
        data = _carve(data, train, evaluate, label_column, validation_fraction, split_seed)
        carved = {"from": train, "into": evaluate, "fraction": validation_fraction,
                  "seed": split_seed, "rows": {train: len(data[train]),
                                               evaluate: len(data[evaluate])}}
    if optional_test and names.get("test") is not None and names["test"] not in data:
        log.info("no '%s' split in the data (data=files: no data.source.test): the final "
                 "evaluation is on the eval split '%s'", names["test"], evaluate)
        names["test"] = None
    for role, split in names.items():
        if split is not None and split not in data:
            key = "train" if role == "all_train" else role
            raise DataError(f"split '{split}' (data.{key}_split) not found; the data has: "
                            f"{', '.join(data)}. To fix: {_FIXES[key]}")
    unused = [s for s in data if s not in names.values()]
    if unused:
        log.info("split(s) %s of the data not used (no data.*_split names them)",
                 ", ".join(unused))
    return data, carved
