"""Crash-safe training checkpoints: written atomically, pruned to the last K and the best.

Layout: ``<run>/checkpoints/step-00000120.pt`` (one file per kept checkpoint, written through
a temp file + rename, so a file that exists is complete) and ``index.json`` (each kept file's
step and metric, and which one is best). A checkpoint is written every
``trainer.checkpoint_every_steps`` optimizer steps and right after each evaluation (so the best
checkpoint is a model that was evaluated); only the newest ``trainer.keep_checkpoints`` and the
best (highest student eval accuracy) stay.

``resume=auto`` continues from the newest checkpoint of the run directory (point Hydra at the
old run with ``hydra.run.dir=<run>``); ``resume=<path>`` takes a checkpoint file, a
``checkpoints/`` folder or a run directory.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from distillkit.errors import DistillkitError, OutputError
from distillkit.runtime.io import write_file, write_json

log = logging.getLogger(__name__)

DIRNAME = "checkpoints"
_NAME = re.compile(r"^step-(\d+)\.pt$")
# Config keys that may differ between a checkpoint's run and the run resuming it.
RESUMABLE_CHANGES = frozenset({"resume", "export_student", "trainer.progress",
                               "trainer.num_workers", "trainer.keep_freed_memory",
                               "trainer.checkpoint_every_steps",
                               "trainer.keep_checkpoints", "allow_targets"})


class CheckpointError(DistillkitError):
    """A checkpoint cannot be found, read or resumed with this config."""


def _step_of(path: Path) -> int | None:
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


def checkpoint_files(directory: Path) -> list[Path]:
    """The complete checkpoint files in ``directory``, oldest step first."""
    if not directory.is_dir():
        return []
    files = [p for p in directory.iterdir() if _step_of(p) is not None]
    return sorted(files, key=_step_of)


class CheckpointManager:
    """Writes, prunes and finds the checkpoints of one run.

    Args:
        directory: where the checkpoints go (``<run>/checkpoints``).
        every_steps: checkpoint every N optimizer steps (None: only after evaluations).
        keep_last: how many of the newest checkpoints to keep (the best is kept as well).
        meta: stored with every checkpoint (the run config, to refuse an incompatible resume).
    """

    def __init__(self, directory: Path, every_steps: int | None, keep_last: int = 2,
                 meta: dict[str, Any] | None = None) -> None:
        self.directory = Path(directory)
        self.every_steps = every_steps
        self.keep_last = max(1, int(keep_last))
        self.meta = meta or {}
        self._index = self._read_index()

    def _read_index(self) -> dict[str, Any]:
        path = self.directory / "index.json"
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                log.warning("unreadable %s; rebuilding the checkpoint index", path)
        return {"metrics": {}, "best": None}

    def due(self, step: int, evaluated: bool) -> bool:
        """Checkpoint after step ``step``: every ``every_steps`` and after each evaluation."""
        return evaluated or (self.every_steps is not None and step % self.every_steps == 0)

    def save(self, step: int, state: dict[str, Any], metric: float | None) -> Path:
        """Writes ``state`` (plus :attr:`meta`) as ``step-<step>.pt`` atomically, then prunes.

        Args:
            step: the optimizer step the state was taken after.
            state: the training state (see :meth:`Distiller.fit`).
            metric: student eval accuracy at this step (None when no eval ran at it).

        Raises:
            CheckpointError: when the disk is full; the checkpoints written before stay intact.
        """
        path = self.directory / f"step-{step:08d}.pt"
        payload = {**state, "meta": self.meta}
        before = self.latest()
        try:
            write_file(path, lambda fh: torch.save(payload, fh))
        except OutputError as exc:
            kept = (f"the checkpoint before it, {before}, is intact: continue from it with "
                    "resume=auto once there is space" if before is not None
                    else "no earlier checkpoint exists")
            raise CheckpointError(f"checkpoint at step {step} not saved: {exc}; {kept}") from exc
        metrics = self._index.setdefault("metrics", {})
        if metric is not None:
            metrics[path.name] = float(metric)
        best = self._index.get("best")
        if metric is not None and (best is None or best not in metrics
                                   or metric > metrics[best]):
            self._index["best"] = path.name
        self._prune()
        log.info("checkpoint at step %d: %s%s", step, path,
                 " (best so far)" if self._index.get("best") == path.name else "")
        return path

    def _prune(self) -> None:
        files = checkpoint_files(self.directory)
        keep = {p.name for p in files[-self.keep_last:]}
        if self._index.get("best"):
            keep.add(self._index["best"])
        for p in files:
            if p.name not in keep:
                p.unlink(missing_ok=True)
        self._index["metrics"] = {k: v for k, v in self._index.get("metrics", {}).items()
                                  if k in keep}
        self._index["kept"] = sorted(keep)
        write_json(self.directory / "index.json", self._index)

    def latest(self) -> Path | None:
        """The newest complete checkpoint file (None before the first)."""
        files = checkpoint_files(self.directory)
        return files[-1] if files else None

    def best(self) -> Path | None:
        """The kept checkpoint with the highest metric (None before any evaluation)."""
        name = self._index.get("best")
        return self.directory / name if name and (self.directory / name).is_file() else None


def find_checkpoint(resume: Any, run_dir: Path) -> Path | None:
    """The checkpoint ``resume`` points at.

    Args:
        resume: None/false (start fresh), ``auto`` (the newest checkpoint of ``run_dir``, or
            none), or a path to a checkpoint file, a ``checkpoints/`` folder or a run directory.
        run_dir: this run's output directory.

    Raises:
        CheckpointError: a path that holds no checkpoint.
    """
    if resume in (None, False, "", "null", "none", "false"):
        return None
    if resume == "auto":
        files = checkpoint_files(run_dir / DIRNAME)
        if not files:
            log.info("resume=auto: no checkpoint in %s; starting from step 0", run_dir / DIRNAME)
            return None
        return files[-1]
    path = Path(str(resume)).expanduser()
    if path.is_file():
        return path
    for folder in (path / DIRNAME, path):
        files = checkpoint_files(folder)
        if files:
            return files[-1]
    raise CheckpointError(
        f"resume={resume}: no checkpoint there (looked for step-*.pt in {path / DIRNAME} and "
        f"{path}); point resume at a run directory, its checkpoints/ folder or a step-*.pt "
        "file, or use resume=auto with hydra.run.dir=<the run to continue>")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Reads a checkpoint written by :class:`CheckpointManager` (CPU tensors)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # needs code to load: never run
        raise CheckpointError(
            f"cannot read checkpoint {path}: it holds Python objects that only a full unpickle "
            "could load, which can run any code, so it was refused unread (checkpoints are read "
            "with weights_only=True; distillkit's own never need more). Point resume at a "
            "checkpoint distillkit wrote, or start fresh with resume=null") from exc
    except Exception as exc:  # a foreign or damaged file: name it
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot read checkpoint {path}: {first}; delete it to resume "
                              "from the one before, or start fresh with resume=null") from exc


def check_resumable(checkpoint_meta: dict[str, Any], config: dict[str, Any],
                     path: Path) -> None:
    """Refuses to resume a checkpoint written under a different config.

    Args:
        checkpoint_meta: the ``meta`` stored in the checkpoint.
        config: the flat resolved config of the resuming run.
        path: the checkpoint (for the message).

    Raises:
        CheckpointError: naming the keys that differ.
    """
    saved = checkpoint_meta.get("config")
    if saved is None:
        return
    keys = sorted((set(saved) | set(config)) - RESUMABLE_CHANGES)
    changed = [k for k in keys if saved.get(k) != config.get(k)]
    if changed:
        shown = "; ".join(f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in changed[:5])
        more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
        raise CheckpointError(
            f"checkpoint {path} was written with a different config ({shown}{more}); resume "
            "with the original settings, or start fresh with resume=null in a new run directory")


def flat_config(container: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, f"{name}."))
        else:
            out[name] = value
    return out
