"""Teacher logits in files: written by ``mode=export_logits``, distilled from by ``teacher=offline``.

EasyNLP's ``vanilla_kd`` flow: run the teacher once over the training data, save its logits to
a file, then train the student from that file without the teacher. Two formats, chosen by the
file's extension (``.tsv``/``.txt``, ``.parquet``/``.pq``) or a ``format`` setting:

* **TSV** (EasyNLP style): a header ``id<TAB>logits``, then one row per example, its raw
  (pre-temperature) logits comma-separated: ``3416050480.jpg#4r1n<TAB>2.41,-0.73,-1.90``.
  Reading also accepts other column names (``id_column``/``logits_column``), extra columns
  and a header-less two-column file (``id<TAB>logits``). Values are written with 9
  significant digits, which read back as exactly the same float32 numbers.
* **Parquet**: columns ``id`` (string) and ``logits`` (``list<float>``).

An :class:`OfflineTeacher` (``teacher=offline``) is a teacher bundle with a tokenizer but no
model: the run skips the teacher stage, matches the file's rows to every distillation split by
row id (``data.id_column``, or the row index) and hands the engine no teacher at all.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distillkit.errors import ConfigError, DataError, ModelError
from distillkit.losses.contract import KDLoss
from distillkit.models import ModelBundle
from distillkit.runtime.io import write_file

log = logging.getLogger(__name__)

FORMATS = {".tsv": "tsv", ".txt": "tsv", ".parquet": "parquet", ".pq": "parquet"}
EXTENSIONS = {"tsv": ".tsv", "parquet": ".parquet"}
# Packaged model assets whose tokenizer teacher.tokenizer may name (distillkit.runtime.assets).
TOKENIZER_ASSETS = ("minilm6",)
_SHOW = 5  # ids quoted in a missing-id error


def logits_format(path: Path, fmt: str | None = None, key: str = "format") -> str:
    """The file format: ``fmt`` if given, else from the extension of ``path``.

    Raises:
        ConfigError: for an unknown format, an extension that contradicts ``fmt``, or no
            ``fmt`` and an unknown extension.
    """
    by_suffix = FORMATS.get(path.suffix.lower())
    if fmt is not None:
        if fmt not in EXTENSIONS:
            raise ConfigError(f"{key}={fmt} is not a logits file format; choose tsv or parquet")
        if by_suffix is not None and by_suffix != fmt:
            raise ConfigError(f"{key}={fmt} but the file {path} has a {by_suffix} extension; "
                              "make them agree")
        return fmt
    if by_suffix is None:
        raise ConfigError(f"cannot tell the format of {path} from its extension; name it "
                          f".tsv or .parquet, or set {key}=tsv|parquet")
    return by_suffix


@dataclass
class LogitsTable:
    """Logits read from a file.

    Attributes:
        path: the file.
        ids: row ids, in file order.
        logits: float32 array ``(rows, classes)``.
        where: for each row, how to point at it in a message (``line 3`` / ``row 2``).
    """

    path: Path
    ids: list[str]
    logits: np.ndarray
    where: list[str] = field(default_factory=list)

    def rows_for(self, ids: Sequence[str], split: str, id_source: str, hint: str) -> np.ndarray:
        """The row index of every id in ``ids`` (``hint``: how to fix missing ones).

        Raises:
            DataError: naming how many ids are missing, the first few and the file.
        """
        index = {value: row for row, value in enumerate(self.ids)}
        missing = [value for value in ids if value not in index]
        if missing:
            shown = ", ".join(repr(v) for v in missing[:_SHOW])
            raise DataError(
                f"{len(missing)} of the {len(ids)} ids of split '{split}' ({id_source}) are not "
                f"in the logits file {self.path}: {shown}{', ...' if len(missing) > _SHOW else ''}"
                f"; {hint}")
        return np.fromiter((index[v] for v in ids), dtype=np.int64, count=len(ids))


def write_logits(path: Path, ids: Sequence[str], logits: np.ndarray,
                 fmt: str | None = None, replace: bool = True) -> str:
    """Writes ids and logits to ``path`` atomically (temp file + rename); returns the format.

    ``replace=False`` never replaces an existing file (FileExistsError, nothing written).

    Raises:
        DataError: when the counts differ, or an id cannot be written to a TSV file.
    """
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2 or len(ids) != len(logits):
        raise DataError(f"{len(ids)} ids for logits of shape {logits.shape}")
    fmt = logits_format(path, fmt)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        n, k = logits.shape
        offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32) if n else [0],
                           type=pa.int32())
        column = pa.ListArray.from_arrays(offsets, pa.array(logits.reshape(-1),
                                                            type=pa.float32()))
        table = pa.table({"id": pa.array(list(ids), type=pa.string()), "logits": column})
        write_file(path, lambda fh: pq.write_table(table, fh), replace)
        return fmt
    for row, value in enumerate(ids):
        if "\t" in value or "\n" in value or "\r" in value:
            raise DataError(f"id {value!r} (row {row}) contains a tab or line break, which a "
                            "TSV file cannot hold; export to .parquet instead")

    def write(fh: Any) -> None:
        fh.write(b"id\tlogits\n")
        for value, row in zip(ids, logits.tolist(), strict=True):
            fh.write(f"{value}\t{','.join(f'{v:.9g}' for v in row)}\n".encode())
    write_file(path, write, replace)
    return fmt


def _parse_logits(text: str) -> list[float] | None:
    """``"0.1, -2,3e-1"`` (optionally in brackets) as floats; None when not all numbers."""
    parts = text.strip().strip("[]").split(",")
    try:
        return [float(p) for p in parts]
    except ValueError:
        return None


def _read_tsv(path: Path, id_column: str, logits_column: str) -> LogitsTable:
    ids: list[str] = []
    rows: list[list[float]] = []
    where: list[str] = []
    columns: tuple[int, int, int] | None = None  # (id index, logits index, fields per line)
    with path.open(encoding="utf-8", newline="") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if columns is None:
                if id_column in fields and logits_column in fields:
                    columns = (fields.index(id_column), fields.index(logits_column), len(fields))
                    continue
                if len(fields) == 2 and _parse_logits(fields[1]) is not None:
                    columns = (0, 1, 2)  # header-less id<TAB>logits
                else:
                    raise DataError(
                        f"{path}:{lineno}: expected a header with the columns '{id_column}' and "
                        f"'{logits_column}' (teacher.id_column, teacher.logits_column) or a "
                        f"header-less id<TAB>logits line; found {fields[:6]}")
            id_at, logits_at, width = columns
            if len(fields) != width:
                raise DataError(f"{path}:{lineno}: expected {width} tab-separated fields, found "
                                f"{len(fields)}; fix or remove that line")
            values = _parse_logits(fields[logits_at])
            if values is None:
                raise DataError(
                    f"{path}:{lineno}: logits {fields[logits_at][:60]!r} are not comma-separated "
                    "numbers; fix or remove that line")
            if not all(math.isfinite(v) for v in values):
                raise DataError(f"{path}:{lineno}: non-finite logits {fields[logits_at][:60]!r}")
            if rows and len(values) != len(rows[0]):
                raise DataError(f"{path}:{lineno}: {len(values)} logits, but the rows before it "
                                f"have {len(rows[0])}")
            ids.append(fields[id_at])
            rows.append(values)
            where.append(f"line {lineno}")
    if not rows:
        raise DataError(f"the logits file {path} has no rows")
    return LogitsTable(path, ids, np.asarray(rows, dtype=np.float32), where)


def _read_parquet(path: Path, id_column: str, logits_column: str) -> LogitsTable:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read the Parquet file {path}: {exc}") from exc
    for key, column in (("teacher.id_column", id_column),
                        ("teacher.logits_column", logits_column)):
        if column not in table.column_names:
            raise DataError(f"{path} has no column '{column}' ({key}); its columns: "
                            f"{', '.join(table.column_names)}")
    if not table.num_rows:
        raise DataError(f"the logits file {path} has no rows")
    id_column_data = table.column(id_column).combine_chunks()
    lists = table.column(logits_column).combine_chunks()
    kind = lists.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)
            or pa.types.is_fixed_size_list(kind)) or not (
            pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        raise DataError(f"{path}: column '{logits_column}' holds {kind}, expected a list of "
                        "floats per row")
    for what, array in (("id", id_column_data), ("logits", lists)):
        if array.null_count:
            row = int(np.flatnonzero(np.asarray(array.is_null()))[0])
            raise DataError(f"{path}: row {row} has no {what}")
    lengths = np.asarray(pc.list_value_length(lists))
    bad = np.flatnonzero(lengths != lengths[0])
    if bad.size:
        raise DataError(f"{path}: row {bad[0]} has {lengths[bad[0]]} logits, but row 0 has "
                        f"{lengths[0]}")
    flat = lists.flatten()
    if flat.null_count:
        raise DataError(f"{path}: column '{logits_column}' holds empty (null) values")
    raw_ids = id_column_data.to_pylist()
    logits = flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(raw_ids), -1)
    finite = np.isfinite(logits).all(axis=1)
    if not finite.all():
        raise DataError(f"{path}: row {np.flatnonzero(~finite)[0]} has non-finite logits")
    return LogitsTable(path, [str(v) for v in raw_ids], logits,
                       [f"row {i}" for i in range(len(raw_ids))])


def read_logits(path: str | Path, fmt: str | None = None, id_column: str = "id",
                logits_column: str = "logits") -> LogitsTable:
    """Reads a TSV or Parquet logits file (see the module docstring).

    Raises:
        DataError: for a missing file, a malformed line or row (with its line/row number),
            rows of different lengths, non-finite values or an id that occurs twice.
        ConfigError: for a format that cannot be told or is unknown.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"logits file not found: {path}; write one with mode=export_logits "
                        "export.path=<file>")
    fmt = logits_format(path, fmt, "teacher.format")
    reader = _read_parquet if fmt == "parquet" else _read_tsv
    table = reader(path, id_column, logits_column)
    first: dict[str, int] = {}
    for row, value in enumerate(table.ids):
        if value in first:
            raise DataError(f"{path}: id {value!r} occurs twice ({table.where[first[value]]} and "
                            f"{table.where[row]}); ids must be unique")
        first[value] = row
    return table


def load_tokenizer(name: str):
    """A tokenizer by local path, packaged asset name (``minilm6``) or hub name.

    Raises:
        ModelError: when it cannot be loaded.
    """
    from transformers import AutoTokenizer

    from distillkit.runtime.assets import asset_path

    local = Path(name).expanduser()
    source = (str(local) if local.exists() else
              str(asset_path(name)) if name in TOKENIZER_ASSETS else name)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"could not load the tokenizer '{name}' (teacher.tokenizer): {first}. "
                         "Use a local directory, a hub name or minilm6") from exc


@dataclass
class OfflineTeacher(ModelBundle):
    """A teacher known only by its logits in a file (``teacher=offline``); ``model`` is None.

    Attributes:
        logits_path: the file for the train split (and the transfer split, unless
            ``transfer_logits_path`` is set).
        transfer_logits_path: a separate file for the transfer split (None: ``logits_path``).
        format: ``tsv`` or ``parquet`` (None: from the extension).
        id_column: the file's id column.
        logits_column: the file's logits column.
    """

    logits_path: Path | None = None
    transfer_logits_path: Path | None = None
    format: str | None = None
    id_column: str = "id"
    logits_column: str = "logits"


def offline_teacher(logits_path: str, tokenizer: str = "minilm6",
                    transfer_logits_path: str | None = None, format: str | None = None,  # noqa: A002
                    id_column: str = "id", logits_column: str = "logits", *,
                    labels: list[str]) -> OfflineTeacher:
    """The ``teacher=offline`` builder: a tokenizer and where the teacher's logits are.

    Args:
        logits_path: TSV or Parquet file of teacher logits (``mode=export_logits`` writes one).
        tokenizer: tokenizer for the data and the student: a local directory, a hub name or
            ``minilm6`` (the packaged all-MiniLM-L6-v2 asset).
        transfer_logits_path: a separate file for the transfer split (None: ``logits_path``).
        format: ``tsv`` or ``parquet``; None tells it from the extension.
        id_column: the file's id column (TSV header / Parquet column).
        logits_column: the file's logits column.
        labels: the data's label names (the file must hold one logit per label).

    Raises:
        DataError: when a file does not exist.
    """
    del labels  # checked against the file when it is read
    paths = []
    for key, value in (("teacher.logits_path", logits_path),
                       ("teacher.transfer_logits_path", transfer_logits_path)):
        path = None if value is None else Path(value).expanduser()
        if path is not None:
            if not path.is_file():
                raise DataError(f"{key}: logits file not found: {path}; write one with "
                                "mode=export_logits export.path=<file>")
            logits_format(path, format, "teacher.format")
        paths.append(path)
    return OfflineTeacher(model=None, tokenizer=load_tokenizer(str(tokenizer)),
                          name=f"offline logits file {paths[0]}", trained_head=True,
                          origin="offline", logits_path=paths[0], transfer_logits_path=paths[1],
                          format=format, id_column=id_column, logits_column=logits_column)


def check_offline(teacher: OfflineTeacher, loss: KDLoss, mapping_target: str) -> None:
    """Refuses what an offline teacher cannot give: hidden states, attentions, layers.

    Raises:
        ConfigError: for a loss with intermediate-layer terms or a layer mapping.
    """
    terms = loss.layer_terms()
    if terms:
        raise ConfigError(
            f"the loss's intermediate terms ({', '.join(terms)}) need the teacher's hidden "
            "states or attention maps, but teacher=offline has only its logits; use loss=kd, "
            "loss=kl or loss=mse_logits")
    if not str(mapping_target).endswith("none_mapping"):
        raise ConfigError("teacher=offline has no layers to map; use mapping=none")


def match_offline_logits(teacher: OfflineTeacher, data: Any) -> dict[str, np.ndarray]:
    """Reads the logits file(s) and picks each distillation split's rows by id.

    Args:
        teacher: the offline teacher.
        data: the data module (prepared; tokenising is not needed).

    Returns:
        For each of ``data.distil_roles()``, the logits in the split's row order.

    Raises:
        ConfigError: when train and transfer would share row-index ids in one file.
        DataError: for a missing id, a label-count mismatch or a malformed file.
    """
    roles = data.distil_roles()
    if "transfer" in roles and teacher.transfer_logits_path is None and not data.id_column:
        raise ConfigError(
            "the train and transfer splits both use row-index ids (data.id_column is null), so "
            "one logits file cannot tell their rows apart; set data.id_column, or give the "
            "transfer split its own file with teacher.transfer_logits_path=<file>")
    labels = data.labels
    tables: dict[Path, LogitsTable] = {}
    matched = {}
    for role in roles:
        path = (teacher.transfer_logits_path if role == "transfer"
                and teacher.transfer_logits_path is not None else teacher.logits_path)
        if path not in tables:
            tables[path] = read_logits(path, teacher.format, teacher.id_column,
                                       teacher.logits_column)
        table = tables[path]
        if table.logits.shape[1] != len(labels):
            raise DataError(
                f"the logits file {path} has {table.logits.shape[1]} logits per row but "
                f"data.labels has {len(labels)} ({', '.join(labels)}); use logits of a "
                "teacher trained on these labels, in this order")
        split = data.split_names[role]
        id_source = (f"data.id_column '{data.id_column}'" if data.id_column
                     else "row index, data.id_column is null")
        hint = ("write them with mode=export_logits export.split=transfer and pass that file "
                "as teacher.transfer_logits_path, or drop the split (data.transfer_split=null)"
                if role == "transfer" else
                f"write this split's logits with mode=export_logits export.split={role}, or "
                "check data.id_column")
        rows = table.rows_for(data.row_ids(role), split, id_source, hint)
        matched[role] = table.logits[rows]
        log.info("teacher logits for '%s' (%d x %d) matched by id in %s: no teacher model",
                 role, *matched[role].shape, path)
    return matched
