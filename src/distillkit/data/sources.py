"""Raw data sources. Each returns a ``datasets.DatasetDict`` keyed by split name."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from datasets import DatasetDict

from distillkit.data.checks import decode_error, encoding, to_dataset
from distillkit.errors import DataError

log = logging.getLogger(__name__)

_FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}


def hub_dataset(path: str, name: str | None = None, revision: str | None = None) -> DatasetDict:
    """Loads a dataset with ``datasets.load_dataset`` (hub name or loading script).

    Args:
        path: dataset id, e.g. ``glue`` or ``stanfordnlp/snli``.
        name: configuration, e.g. ``mnli`` or ``sst2``.
        revision: hub revision.

    Raises:
        DataError: when the dataset cannot be loaded (unknown name, no network, ...).
    """
    from datasets import load_dataset

    try:
        # never a loading script (datasets < 3 ran one by default)
        data = load_dataset(path, name, revision=revision, trust_remote_code=False)
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFound, ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(
            f"could not load dataset '{path}'{f' ({name})' if name else ''}: {first}. Check the "
            "name and network access, or use local files (data=files data.source.train=...)"
        ) from exc
    if not isinstance(data, DatasetDict):
        raise DataError(f"dataset '{path}' has no named splits")
    return data


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding=encoding()) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{lineno}: malformed JSON line ({exc.msg}); fix or remove that line"
                ) from exc
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object per line, got "
                                f"{type(row).__name__}; write each row as {{\"text\": ...}}")
            rows.append(row)
    return rows


def _read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding=encoding()))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}); fix the file at "
                        "that line") from exc
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a list of objects (or {{\"data\": [...]}})")
    return data


def _read_delimited(path: Path, delimiter: str) -> list[dict]:
    with path.open(encoding=encoding(), newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        if not reader.fieldnames:
            return []
        rows = []
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise DataError(
                    f"{path}:{reader.line_num}: expected {len(reader.fieldnames)} fields "
                    f"({', '.join(reader.fieldnames)}); fix that line or the delimiter"
                )
            rows.append(row)
    return rows


def read_rows(path: str | Path, fmt: str | None = None, key: str = "the data config"
              ) -> list[dict]:
    """Reads a jsonl, json, csv or tsv file into a list of row dicts.

    Args:
        path: the file.
        fmt: ``jsonl``, ``json``, ``csv`` or ``tsv``; None: from the suffix.
        key: the config key that names the file (for messages).

    Raises:
        DataError: for a missing file, an unknown format, a malformed line (with its line
            number) or an empty file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data file not found: {path}; check the path in {key} (relative "
                        "paths start from the directory you run in)")
    fmt = fmt or _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"cannot tell the format of {path}; name it .jsonl/.json/.csv/.tsv or set format"
        )
    readers = {
        "jsonl": _read_jsonl,
        "json": _read_json,
        "csv": lambda p: _read_delimited(p, ","),
        "tsv": lambda p: _read_delimited(p, "\t"),
    }
    if fmt not in readers:
        raise DataError(f"unknown data format '{fmt}'; choose one of {sorted(readers)}")
    try:
        rows = readers[fmt](path)
    except (UnicodeError, LookupError) as exc:  # data.encoding (distillkit.data.checks)
        raise decode_error(path, exc) from exc
    if not rows:
        raise DataError(f"data file is empty: {path} has no rows; fill it or point {key} "
                        "at another file")
    return rows


def local_files(
    train: str | None = None,
    validation: str | None = None,
    test: str | None = None,
    format: str | None = None,  # noqa: A002 - mirrors the config key
) -> DatasetDict:
    """Loads local jsonl/json/csv/tsv files, one per split.

    Args:
        train: path of the training file.
        validation: path of the validation file.
        test: path of the test file.
        format: ``jsonl``, ``json``, ``csv`` or ``tsv``; inferred from the suffix if None.
    """
    files = {"train": train, "validation": validation, "test": test}
    splits = {}
    for split, path in files.items():
        if path:
            splits[split] = to_dataset(read_rows(path, format, f"data.source.{split}"), path)
            log.info("read %d rows of split '%s' from %s", len(splits[split]), split, path)
    if not splits:
        raise DataError("data.source names no files; set data.source.train=<path> at least")
    return DatasetDict(splits)
