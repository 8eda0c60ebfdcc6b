"""Small, crash-safe file writers for run output."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_file(path: Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Writes a file through ``writer(binary_handle)`` atomically (temp file + rename).

    Readers never see half a file; on any failure the temp file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Writes ``data`` as JSON atomically (see :func:`write_file`)."""
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    write_file(path, lambda fh: fh.write(text.encode("utf-8")))


def write_dir(path: Path, writer: Callable[[Path], None]) -> None:
    """Fills a directory through ``writer(tmp_dir)`` then renames it into place atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        writer(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
