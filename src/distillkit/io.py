"""Small, crash-safe file writers for run output."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from distillkit.errors import OutputError

# OSError numbers that mean the device or the user's quota is full.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def _full_device(exc: BaseException, path: Path) -> None:
    """Raises :class:`OutputError` naming ``path`` when ``exc`` means the disk is full.

    The OSError may sit behind another exception: ``torch.save`` reports a failed write as a
    RuntimeError whose context is the OSError.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in _FULL:
            break
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    if not isinstance(exc, OSError) or exc.errno not in _FULL:
        return
    raise OutputError(
        f"cannot write {path}: {os.strerror(exc.errno)}; nothing was left half-written. "
        "Free space on that device, or write the run elsewhere "
        "(hydra.run.dir=<a disk with space>)") from exc


def write_file(path: Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Writes a file through ``writer(binary_handle)`` atomically (temp file + rename).

    Readers never see half a file; on any failure the temp file is removed.

    Raises:
        OutputError: when the device (or quota) is full; the temp file is gone by then.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        _full_device(exc, path)
        raise


def write_json(path: Path, data: Any) -> None:
    """Writes ``data`` as JSON atomically (see :func:`write_file`)."""
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    write_file(path, lambda fh: fh.write(text.encode("utf-8")))


def write_dir(path: Path, writer: Callable[[Path], None]) -> None:
    """Fills a directory through ``writer(tmp_dir)`` then renames it into place atomically.

    Raises:
        OutputError: when the device (or quota) is full; the temp directory is gone by then.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        writer(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _full_device(exc, path)
        raise


def write_pretrained(path: Path, *parts: Any) -> None:
    """Writes ``save_pretrained`` directories of ``parts`` (e.g. a model and its tokenizer)
    into one directory, atomically (:func:`write_dir`)."""
    def save(tmp: Path) -> None:
        for part in parts:
            part.save_pretrained(tmp)
    write_dir(path, save)


def write_metrics(out_dir: Path, metrics: dict[str, Any]) -> None:
    """Stamps ``metrics`` with ``finished_at`` and writes ``<out_dir>/metrics.json``: the last
    file of a run, so its presence means the run finished."""
    metrics["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json(out_dir / "metrics.json", metrics)
