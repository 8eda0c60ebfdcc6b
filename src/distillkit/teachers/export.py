"""``mode=export_logits``: write the teacher's logits for one split to a file, then stop.

The run builds the data and the teacher, runs the teacher stage (fine-tune if needed; cached),
computes the teacher's raw (pre-temperature) logits for ``export.split`` in one inference pass
and writes them with their row ids (``data.id_column``, or the row index) to ``export.path``
(TSV or Parquet, see :mod:`distillkit.teachers.offline`). Nothing is distilled. ``teacher=offline``
reads such a file back.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from distillkit.engine import EngineSettings
from distillkit.errors import ConfigError
from distillkit.models import ModelBundle
from distillkit.runtime.io import write_metrics
from distillkit.teachers.offline import EXTENSIONS, logits_format, write_logits
from distillkit.teachers.outputs import compute_logits

log = logging.getLogger(__name__)

MODES = ("distil", "export_logits")
ROLES = ("train", "eval", "test", "transfer")


@dataclass
class ExportRequest:
    """What ``mode=export_logits`` writes (the ``export`` config section).

    Attributes:
        split: a split role (``train``, ``eval``, ``test``, ``transfer``) or a split name of
            the data (``validation``).
        path: the file to write; None: ``<run dir>/teacher_logits_<split>.<ext>``.
        format: ``tsv`` or ``parquet`` (from the extension when None; ``tsv`` without a path).
        overwrite: replace an existing file at the path (its permissions are kept); false:
            refuse before any teacher work.
    """

    split: str = "train"
    path: Path | None = None
    format: str = "tsv"
    overwrite: bool = False

    @classmethod
    def from_config(cls, cfg: DictConfig) -> ExportRequest | None:
        """The request of an ``export_logits`` run; None for ``mode=distil``.

        Raises:
            ConfigError: for an unknown mode, format or file extension.
        """
        mode = cfg.get("mode", "distil")
        if mode not in MODES:
            raise ConfigError(f"mode={mode} is not one of {', '.join(MODES)}")
        if mode != "export_logits":
            return None
        export = cfg.get("export") or {}
        path = export.get("path")
        fmt = export.get("format")
        overwrite = bool(export.get("overwrite", False))
        if path is None:
            if fmt is not None and fmt not in EXTENSIONS:
                raise ConfigError(f"export.format={fmt} is not a logits file format; "
                                  "choose tsv or parquet")
            return cls(split=str(export.get("split", "train")), path=None, format=fmt or "tsv",
                       overwrite=overwrite)
        path = Path(str(path)).expanduser()
        request = cls(split=str(export.get("split", "train")), path=path,
                      format=logits_format(path, fmt, "export.format"), overwrite=overwrite)
        request.refuse_existing(path)
        return request

    def refuse_existing(self, path: Path) -> None:
        """Refuses to replace an existing file at ``path`` unless :attr:`overwrite`.

        Raises:
            ConfigError: naming the file and the fix.
        """
        if not self.overwrite and os.path.lexists(path):
            raise ConfigError(f"export.path={path} exists: mode=export_logits does not replace "
                              "an existing file; choose another export.path, or set "
                              "export.overwrite=true to replace it (its permissions are kept)")

    def role(self, data: Any) -> str:
        """The data role of :attr:`split` (split roles and the data's split names both work).

        Raises:
            ConfigError: when the data has no such split.
        """
        names = {name: role for role, name in data.split_names.items() if name is not None}
        if self.split in ROLES and data.has_split(self.split):
            return self.split
        if self.split in names:
            return names[self.split]
        choices = ", ".join(f"{role} ({name})" for name, role in names.items())
        raise ConfigError(f"export.split={self.split} is not a split of this data; choose one "
                          f"of: {choices}")

    def check(self, data: Any, teacher: ModelBundle) -> None:
        """Fails before any teacher work: a known split and a teacher model to run.

        Raises:
            ConfigError: for an unknown split or a teacher without a model.
        """
        self.role(data)
        if teacher.model is None:
            raise ConfigError(f"mode=export_logits runs a teacher model, but the teacher "
                              f"({teacher.name}) has none; pick a model teacher (minilm6, "
                              "tiny, hub)")


def export_teacher_logits(teacher: ModelBundle, data: Any, request: ExportRequest,
                          settings: EngineSettings, out_dir: Path) -> dict[str, Any]:
    """Computes the teacher's logits for the requested split and writes the file.

    Args:
        teacher: the ready teacher (after the teacher stage).
        data: the tokenised data.
        request: split, path and format.
        settings: the run's loop settings (device, precision, eval batch size, progress).
        out_dir: the run directory (``metrics.json`` goes there; also the file, by default).

    Returns:
        The run summary, also written to ``<out_dir>/metrics.json``.
    """
    role = request.role(data)
    split = data.split_names[role]
    path = request.path or out_dir / f"teacher_logits_{split}{EXTENSIONS[request.format]}"
    request.refuse_existing(path)
    start = time.perf_counter()
    logits = compute_logits(teacher, data, role, settings)
    ids = data.row_ids(role)
    try:
        write_logits(path, ids, logits, request.format, replace=request.overwrite)
    except FileExistsError:  # created while the teacher ran
        request.refuse_existing(path)
        raise
    seconds = time.perf_counter() - start
    labels = np.asarray(data.raw[role]["labels"])
    labelled = labels != -100
    accuracy = (float((logits.argmax(-1)[labelled] == labels[labelled]).mean())
                if labelled.any() else None)
    log.info("teacher logits for split '%s' (%d x %d) written to %s (%s) in %.1fs",
             split, *logits.shape, path.resolve(), request.format, seconds)
    if accuracy is not None:
        log.info("teacher accuracy on '%s': %.4f (%d labelled rows)", split, accuracy,
                 int(labelled.sum()))
    summary = {
        "mode": "export_logits",
        "export": {"split": split, "role": role, "path": str(path.resolve()),
                   "format": request.format, "rows": int(logits.shape[0]),
                   "labels": data.labels,
                   "id_column": data.id_column, "seconds": round(seconds, 3)},
        "teacher": {"name": teacher.name, "accuracy": accuracy,
                    "examples": int(labelled.sum())},
        "stages": {"teacher": teacher.origin, "teacher_logits": {role: "computed"}},
    }
    write_metrics(out_dir, summary)
    log.info("run output: %s", out_dir)
    return summary
