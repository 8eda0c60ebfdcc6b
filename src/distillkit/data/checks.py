"""Bad data gets one clear line: encodings, null/NaN values, empty texts, stray labels.

Called from a few hook points of :mod:`distillkit.data.sources` (reading files) and
:mod:`distillkit.data.module` (the splits of a classification task):

* a file that is not valid text in ``data.encoding`` (default utf-8) names the file, the byte
  offset and the line, and the fix (``data.encoding=<its encoding>``);
* a column whose rows mix types (a ``NaN`` or a number where the other rows hold text) names
  the file, the row and the column;
* a text that is null or not a string names its rows; empty or whitespace-only texts are
  refused with their count and rows, or dropped with a warning when ``data.drop_empty=true``;
* with labels inferred from the train split (no ``data.labels``), a *stray* label is refused:
  one seen in fewer than ``max(2, 0.1% of the rows)`` rows while the most common label has at
  least 10 times that many, which is what one mistyped value looks like (it would silently
  become a class of its own). The fix names ``data.labels=[...]``.

Rows are counted from 0 in the split (or file), as in the other data messages.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from datasets import Dataset

from distillkit.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_ENCODING = "utf-8"
_ENCODING: ContextVar[str] = ContextVar("distillkit_data_encoding", default=DEFAULT_ENCODING)
_SHOW = 10  # rows named in a message
STRAY_SHARE = 0.001  # a label in fewer than max(2, 0.1% of the rows) rows ...
COMMON_FACTOR = 10  # ... while the most common label has 10x as many is a stray value


@contextmanager
def text_encoding(encoding: str | None) -> Iterator[None]:
    """Files read inside this block are decoded with ``encoding`` (``data.encoding``)."""
    token = _ENCODING.set(encoding or DEFAULT_ENCODING)
    try:
        yield
    finally:
        _ENCODING.reset(token)


def encoding() -> str:
    """The text encoding of data files (:func:`text_encoding`; utf-8 outside it)."""
    return _ENCODING.get()


def decode_error(path: Path, exc: UnicodeError | LookupError) -> DataError:
    """The one-line error for a file that is not valid text in :func:`encoding`."""
    name = encoding()
    if isinstance(exc, LookupError):
        return DataError(f"data.encoding={name} is not a text encoding Python knows; use e.g. "
                         "utf-8, latin-1 or cp1252")
    raw = path.read_bytes()
    try:
        raw.decode(name)
        start, reason = getattr(exc, "start", 0), str(exc)
    except UnicodeDecodeError as full:  # the offset within the whole file
        start, reason = full.start, full.reason
    line = raw[:start].count(b"\n") + 1
    return DataError(f"{path}: not valid {name} text at byte offset {start} (line {line}: "
                     f"{reason}); set data.encoding to the file's encoding (e.g. "
                     f"data.encoding=latin-1) or save the file as {name}")


def _kind(value: object) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, int | float):
        return "a number"
    return "a list" if isinstance(value, list) else "an object"


def to_dataset(rows: list[dict], path: Path) -> Dataset:
    """``Dataset.from_list(rows)``; a column whose rows mix types is named with its row.

    Raises:
        DataError: naming the file, the row, the column and the value.
    """
    try:
        return Dataset.from_list(rows)
    except Exception as exc:  # pyarrow's ArrowInvalid / ArrowTypeError and the like
        kinds: dict[str, Counter] = {}
        for row in rows:
            for column, value in row.items():
                if value is not None:
                    kinds.setdefault(column, Counter())[_kind(value)] += 1
        for i, row in enumerate(rows):
            for column, value in row.items():
                usual = kinds[column].most_common(1)[0][0] if column in kinds else None
                if value is not None and _kind(value) != usual:
                    raise DataError(
                        f"{path}: row {i} has {value!r} ({_kind(value)}) in column '{column}', "
                        f"whose other rows hold {usual}; fix or remove that row (a text is a "
                        "quoted string)") from exc
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: its rows cannot be read as one table ({first}); give every "
                        "row the same columns and types") from exc


def _rows(rows: Sequence[int]) -> str:
    return ", ".join(map(str, rows[:_SHOW])) + (", ..." if len(rows) > _SHOW else "")


def _count(n: int, what: str = "row") -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def check_texts(ds: Dataset, columns: Sequence[str], split: str, drop_empty: bool = False,
                labels: Sequence[str] | None = None, drop_labels: Collection = ()) -> Dataset:
    """Refuses null/non-string texts; refuses (or drops) empty or whitespace-only ones.

    Rows whose label is in ``drop_labels`` are not checked (they are dropped anyway).

    Args:
        ds: a raw split.
        columns: its text columns (``data.text_column``, ``data.text_pair_column``).
        split: the split's name (for messages).
        drop_empty: drop empty texts with a warning instead (``data.drop_empty``).
        labels: the label name of every row (None: no labels, e.g. a transfer split).
        drop_labels: label values whose rows are removed later.

    Raises:
        DataError: naming the split, the column, the count and the rows.
    """
    ignored = {i for i, name in enumerate(labels or ()) if name in drop_labels}
    empty: set[int] = set()
    for column in columns:
        values = ds[column]
        missing = [i for i, v in enumerate(values) if not isinstance(v, str) and i not in ignored]
        if missing:
            raise DataError(
                f"split '{split}' has {_count(len(missing))} without a text in column '{column}' "
                f"(null or not a string, e.g. {values[missing[0]]!r}; rows {_rows(missing)}); "
                "fix or remove them")
        empty.update(i for i, v in enumerate(values) if not v.strip() and i not in ignored)
    if not empty:
        return ds
    rows = sorted(empty)
    if not drop_empty:
        raise DataError(
            f"split '{split}' has {_count(len(rows))} with an empty or whitespace-only text in "
            f"{', '.join(repr(c) for c in columns)} (rows {_rows(rows)}); fix or remove them, "
            "or set data.drop_empty=true to drop them")
    log.warning("split '%s': dropped %d rows with an empty or whitespace-only text (rows %s; "
                "data.drop_empty=true)", split, len(rows), _rows(rows))
    ds = ds.select(sorted(set(range(len(ds))) - empty))
    if not len(ds):
        raise DataError(f"split '{split}' has no rows left after dropping empty texts")
    return ds


def inferred_labels(names: Sequence[str], drop_labels: Collection, split: str) -> list[str]:
    """The sorted distinct labels of a split, refusing a stray one (module docstring).

    Raises:
        DataError: naming the stray label, its rows, and the fix ``data.labels=[...]``.
    """
    kept = [n for n in names if n not in drop_labels]
    counts = Counter(kept)
    labels = sorted(counts)
    if not counts:
        return labels
    floor = max(2, math.ceil(STRAY_SHARE * len(kept)))
    common, most = counts.most_common(1)[0]
    stray = sorted(label for label, n in counts.items() if n < floor)
    if not stray or most < COMMON_FACTOR * floor:
        return labels
    real = [label for label in labels if label not in stray]
    shown = "; ".join(
        f"'{s}' in {_count(counts[s])}: {_rows([i for i, n in enumerate(names) if n == s])}"
        for s in stray[:3])
    raise DataError(
        f"labels inferred from split '{split}': {_count(len(stray), 'label')} in very few of its "
        f"{len(kept)} rows ({shown}) while '{common}' is in {most}: a stray value would "
        f"become a class of its own. Name the labels: data.labels=[{','.join(real)}] (and "
        f"data.drop_labels=[{','.join(stray)}] to drop those rows), or include it if it is a "
        "real class")


def check_row_ids(ids: list[str], where: str, id_column: str | None) -> list[str]:
    """A split's row ids, checked: every row has one and none repeats.

    Raises:
        DataError: naming the first empty or repeated id and the setting that fixes it.
    """
    column = f"column '{id_column}' (data.id_column)" if id_column else "row index"
    first: dict[str, int] = {}
    for row, value in enumerate(ids):
        if not value:
            raise DataError(f"row {row} of {where} has no id in {column}; every row needs "
                            "one, or set data.id_column=null to use row indices")
        if value in first:
            raise DataError(
                f"{where} has duplicate ids in {column}: '{value}' at rows {first[value]} "
                f"and {row}; ids must be unique within a split (set data.id_column to a "
                "unique column, or null to use row indices)")
        first[value] = row
    return list(ids)
