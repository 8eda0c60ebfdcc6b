"""Small, crash-safe file writers for run output."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import stat
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


def _fresh(parent: Path, name: str, make: Callable[[Path], None]) -> Path:
    """A new, uniquely named ``.<name>.<random>.tmp`` in ``parent``, created by ``make`` (which
    must fail if the path exists). Unlike ``mkstemp``/``mkdtemp`` (0600/0700), it gets the
    modes a plain ``open``/``mkdir`` would (the umask applies)."""
    while True:
        tmp = parent / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            make(tmp)
            return tmp
        except FileExistsError:
            continue


def _keep_mode(tmp: Path, path: Path) -> None:
    """Gives ``tmp`` the permissions of the ``path`` it replaces: replacing a file never
    changes the permissions found there."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return  # nothing there (yet)
    os.chmod(tmp, mode)


def _place(tmp: Path, path: Path, replace: bool) -> None:
    """Renames ``tmp`` to ``path``; without ``replace``, never over an existing file.

    Raises:
        FileExistsError: ``path`` exists and ``replace`` is false.
    """
    if replace:
        _keep_mode(tmp, path)
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic: fails if path exists, even if created meanwhile
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def write_file(path: Path, writer: Callable[[IO[bytes]], None], replace: bool = True) -> None:
    """Writes a file through ``writer(binary_handle)`` atomically (temp file + rename).

    Readers never see half a file; on any failure the temp file is removed. A file that is
    replaced keeps its permissions; a new one gets the modes of a plain ``open``.

    Args:
        path: the file.
        writer: writes the content.
        replace: replace an existing file (false: raise FileExistsError, nothing written).

    Raises:
        OutputError: when the device (or quota) is full; the temp file is gone by then.
        FileExistsError: ``path`` exists and ``replace`` is false.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not replace and os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
    tmp = _fresh(path.parent, path.name,
                 lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    try:
        with tmp.open("wb") as fh:
            writer(fh)
        _place(tmp, path, replace)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
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
    tmp = _fresh(path.parent, path.name, lambda p: p.mkdir(0o777))
    try:
        writer(tmp)
        _keep_mode(tmp, path)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _full_device(exc, path)
        raise


def write_pretrained(path: Path, *parts: Any, state_dict: dict[str, Any] | None = None) -> None:
    """Writes ``save_pretrained`` directories of ``parts`` (e.g. a model and its tokenizer)
    into one directory, atomically (:func:`write_dir`). ``state_dict``: the first part's
    weights, when they are not its own ``state_dict()`` (a sharded model's gathered ones)."""
    def save(tmp: Path) -> None:
        for i, part in enumerate(parts):
            if i == 0 and state_dict is not None:
                part.save_pretrained(tmp, state_dict=state_dict)
            else:
                part.save_pretrained(tmp)
    write_dir(path, save)


def write_metrics(out_dir: Path, metrics: dict[str, Any]) -> None:
    """Stamps ``metrics`` with ``finished_at`` and writes ``<out_dir>/metrics.json``: the last
    file of a run, so its presence means the run finished."""
    metrics["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json(out_dir / "metrics.json", metrics)
