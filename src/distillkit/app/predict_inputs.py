"""What ``distillkit predict`` reads: the texts to classify, from a file or stdin.

Formats: ``csv``, ``tsv``, ``jsonl``, ``json`` (a list of objects, or ``{"data": [...]}``) by
the file's extension, and ``lines``: one text per line (``.txt``). Standard input (``-``) is
JSON lines when its first non-blank line starts with ``{``, else one text per line. In
``lines`` mode blank lines are skipped; in every other mode an empty text is an error.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from distillkit.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".txt": "lines"}
LINE_COLUMN = "text"  # the column of one-text-per-line input


@dataclass
class Inputs:
    """The texts to classify, in input order.

    Attributes:
        texts: the (first) text of every row.
        pairs: the second text of every row (text-pair models), else None.
        ids: the id of every row (from ``id_column``), else None.
        id_column: the name of the id column, else None.
    """

    texts: list[str]
    pairs: list[str] | None = None
    ids: list[str] | None = None
    id_column: str | None = None


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{where}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save "
                        "the input as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from exc


def _jsonl_rows(text: str, where: str) -> list[dict]:
    rows = []
    for lineno, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}:{lineno}: malformed JSON line ({exc.msg}); fix or remove "
                            "that line") from exc
        if not isinstance(row, dict):
            raise DataError(f"{where}:{lineno}: expected a JSON object per line, like "
                            "{\"text\": ...}")
        rows.append(row)
    return rows


def _line_rows(text: str) -> list[dict]:
    return [{LINE_COLUMN: line.rstrip("\r")} for line in text.split("\n") if line.strip()]


def read_input(source: str, fmt: str | None = None) -> tuple[list[dict], str]:
    """The rows of ``source`` (a path, or ``-`` for stdin) and the format they were read as.

    Raises:
        DataError: for a missing or unreadable file, an unknown extension, non-UTF-8 bytes,
            a malformed line, or no rows.
    """
    try:
        return _read(source, fmt)
    except OSError as exc:  # e.g. permission denied
        raise DataError(f"cannot read {source}: {exc.strerror or exc}; check the input "
                        "path") from exc


def _read(source: str, fmt: str | None) -> tuple[list[dict], str]:
    if source == "-":
        text = _decode(sys.stdin.buffer.read(), "<stdin>")
        first = next((line.lstrip() for line in text.splitlines() if line.strip()), "")
        fmt = fmt or ("jsonl" if first.startswith("{") else "lines")
        if fmt not in ("jsonl", "lines"):
            raise DataError(f"--input-format {fmt} cannot be read from stdin; pipe JSON lines "
                            "or one text per line, or pass a file")
        rows = _jsonl_rows(text, "<stdin>") if fmt == "jsonl" else _line_rows(text)
        if not rows:
            raise DataError("no input on stdin; pipe JSON lines or one text per line")
        return rows, fmt
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"input file not found: {path}; check the path (or pass - to read "
                        "stdin)")
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"cannot tell the format of {path} from its extension; name it "
                        f"{'/'.join(FORMATS)} or pass --input-format")
    if fmt == "lines":
        rows = _line_rows(_decode(path.read_bytes(), str(path)))
        if not rows:
            raise DataError(f"input file is empty: {path} has no text lines")
        return rows, fmt
    _decode(path.read_bytes(), str(path))  # one clear line for bytes that are not UTF-8
    from distillkit.data.sources import read_rows  # (datasets: only once it is needed)

    return read_rows(path, fmt, "the input argument"), fmt


def _column(rows: list[dict], column: str, flag: str, where: str, text: bool) -> list[str]:
    """The values of ``column``, checked: present in every row and, for ``text``, non-empty."""
    values = []
    for i, row in enumerate(rows):
        if column not in row:
            raise DataError(
                f"column '{column}' ({flag}) not in {where}"
                f"{f' (row {i + 1})' if i else ''}; its columns are: "
                f"{', '.join(map(str, row))}. Pass {flag} <one of them>")
        value = row[column]
        value = "" if value is None else str(value)
        if text and not value.strip():
            raise DataError(f"row {i + 1} of {where} has an empty text in column '{column}'; "
                            "fill it or remove the row")
        values.append(value)
    return values


def select_columns(rows: list[dict], fmt: str, where: str, text_column: str,
                   pair_column: str | None, id_column: str | None,
                   id_flag_given: bool) -> Inputs:
    """The texts (and pairs, ids) of ``rows``, every column checked.

    ``id_column`` is used when the rows have it; when it was given as ``--id-column``
    (``id_flag_given``), rows without it are an error.
    """
    if fmt == "lines":
        if pair_column is not None:
            raise DataError(
                f"this model classifies text pairs ('{text_column}', '{pair_column}'), but "
                f"{where} is one text per line; give a csv/tsv/jsonl file with both columns")
        text_column = LINE_COLUMN
    texts = _column(rows, text_column, "--text-column", where, text=True)
    pairs = (None if pair_column is None else
             _column(rows, pair_column, "--text-pair-column", where, text=True))
    ids = None
    if id_column is not None and (id_flag_given or id_column in rows[0]):
        ids = _column(rows, id_column, "--id-column", where, text=False)
    return Inputs(texts, pairs, ids, id_column if ids is not None else None)
