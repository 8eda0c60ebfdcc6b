"""What the stages of one run hand each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from distillkit.engine import EngineSettings

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from distillkit.engine import Distiller
    from distillkit.engine.trainer import TrainResult
    from distillkit.general import GeneralResult
    from distillkit.losses.contract import KDLoss
    from distillkit.losses.mapping import LayerPair
    from distillkit.models import ModelBundle
    from distillkit.runtime.distributed import DistEnv
    from distillkit.tasks.base import Task
    from distillkit.teachers.export import ExportRequest


@dataclass
class TeacherPlan:
    """How the teacher stage treats each teacher model: ``{name: (finetune mode, settings)}``
    (one entry, ``teacher``, for a single teacher; one per member of an ensemble)."""

    modes: dict[str, tuple[Any, Any]]
    members: dict[str, ModelBundle] | None = None  # an ensemble's members, as built
    combine: Any = None  # an ensemble's combine function: (members, labels) -> EnsembleTeacher


@dataclass
class Evaluation:
    """The evaluate stage's result: metrics keyed by metric name, for each side."""

    split: str  # the data split's name
    role: str  # its role: test, or eval when the data has no test split
    teacher: dict[str, Any] | None  # None: no teacher model (teacher=offline)
    student: dict[str, Any]
    members: dict[str, dict[str, Any]] = field(default_factory=dict)  # an ensemble's members
    validation: dict[str, Any] | None = None  # objective=validation_*: the eval split's


@dataclass
class RunContext:
    """The run's state, filled stage by stage (read a run top to bottom in :mod:`distillkit.run`).

    Attributes:
        cfg: the composed config.
        out_dir: the run directory.
        settings: the engine settings of the ``trainer`` group.
        dist: the process group (one process: disabled).
        task: the task (metric, data, evaluation).
        mode: ``distil`` or ``export_logits``.
        launch: how Hydra launched the run (overrides, choices), for provenance and HParams.
        data: the data module (build).
        loss: the loss (build).
        teacher: the teacher bundle (build; the teacher stage replaces it with the trained one).
        teacher_plan: per teacher model, its fine-tune mode and settings (build).
        student: the student bundle (build).
        pairs: the layer mapping (build).
        general: what the general stage did (None: not run or ``general=none``).
        cached_logits: whether every batch carries the teacher's logits (teacher_targets), so
            the loop never runs the teacher.
        export: ``mode=export_logits``: what to export (export_logits' prepare); the build
            stage checks it against the data and teacher before any teacher work.
        details: what stages add to the record besides their origin (e.g. seq-KD files).
        distiller: the engine (distil).
        result: the training result (distil).
        writer: the TensorBoard writer (rank 0; distil to export).
        evaluation: the final evaluation (evaluate).
        metrics: the run record, written to ``metrics.json`` (export).
        origins: each stage's origin, by stage name.
        stage_seconds: each stage's wall time, by stage name.
    """

    cfg: DictConfig
    out_dir: Path
    settings: EngineSettings
    dist: DistEnv
    task: Task
    mode: str = "distil"
    launch: dict[str, Any] = field(default_factory=dict)
    data: Any = None
    loss: KDLoss | None = None
    teacher: ModelBundle | None = None
    teacher_plan: TeacherPlan | None = None
    student: ModelBundle | None = None
    pairs: list[LayerPair] = field(default_factory=list)
    general: GeneralResult | None = None
    cached_logits: bool = False
    export: ExportRequest | None = None
    details: dict[str, Any] = field(default_factory=dict)
    distiller: Distiller | None = None
    result: TrainResult | None = None
    writer: SummaryWriter | None = None
    evaluation: Evaluation | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, Any] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
