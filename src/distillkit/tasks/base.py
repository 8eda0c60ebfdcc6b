"""The task contract the shared stages call (:mod:`distillkit.stages`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig
from torch import nn

from distillkit.engine.sharding import check_sharding
from distillkit.errors import ConfigError
from distillkit.models import ModelBundle
from distillkit.pipeline.context import Evaluation, RunContext
from distillkit.teachers.setup import live_teacher

# How the engine evaluates the student during training: (model, eval source, desc) -> metrics
# keyed by metric name (the task's headline metric among them).
Evaluator = Callable[[Any, Any, str], dict[str, Any]]
OPTION_GROUPS = ("teacher", "student", "data", "loss")
# Every Task subclass, registered when its module is imported (distillkit.tasks imports them
# all): which task owns an option is looked up here.
_TASK_CLASSES: list[type[Task]] = []


def option_owner(target: str) -> type[Task] | None:
    """The task class whose options ``target`` belongs to: the one whose
    :attr:`Task.option_prefixes` it starts with, else the task that claims no prefix (the
    options of no other task are its own)."""
    default = None
    for cls in _TASK_CLASSES:
        if not cls.option_prefixes:
            default = cls
        elif target.startswith(cls.option_prefixes):
            return cls
    return default


def check_options(cfg: DictConfig, task: Task) -> None:
    """Refuses an option of the teacher, student, data or loss group that belongs to another
    task, naming the option, the task it is for and the fix."""
    for group in OPTION_GROUPS:
        target = str(cfg[group].get("_target_", ""))
        owner = option_owner(target)
        if owner is None or isinstance(task, owner) or owner.option_task == task.option_task:
            continue
        raise ConfigError(f"{group} ({target}) is a {owner.option_task} option but "
                          f"task={task.name}; add task={owner.option_task}, or pick "
                          f"{task.option_hint}")


class Task(ABC):
    """A distillation task: its pipelines, metric, data and evaluation.

    Args:
        name: the task's name (``task=<name>``).
        pipeline: the stage names per mode (``{"distil": [...], "export_logits": [...]}``).
    """

    #: The ``_target_`` prefixes of this task's own options (``()``: every option no other
    #: task claims), the ``task=<name>`` that owns them, and the options to suggest instead.
    option_prefixes: tuple[str, ...] = ()
    option_task: str = ""
    option_hint: str = "an option of this task"
    #: Whether the teacher-targets stage can cache sparse (top-k) next-token targets
    #: (``trainer.teacher_topk``).
    sparse_targets: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _TASK_CLASSES.append(cls)

    def __init__(self, name: str, pipeline: Mapping[str, Sequence[str]]) -> None:
        self.name = name
        self.pipeline = {str(mode): [str(s) for s in names] for mode, names in pipeline.items()}

    def stages_for(self, mode: str) -> list[str]:
        """The stage names of ``mode``; a mode the task has no pipeline for is refused."""
        if mode not in self.pipeline:
            raise ConfigError(f"mode={mode} is not available for task={self.name}; pick one of "
                              f"{', '.join(self.pipeline)}")
        return self.pipeline[mode]

    def check(self, cfg: DictConfig, dist: Any) -> None:
        """Cheap checks of the config against the task, before anything is built: every
        option of the teacher, student, data and loss groups is one of this task's, and
        ``general`` is on only where the task's pipeline has a general stage."""
        check_options(cfg, self)
        trainer = cfg.get("trainer") or {}
        check_sharding(str(trainer.get("sharding", "none")),
                       dist.world_size if dist.enabled else 1,
                       bool(trainer.get("compile", False)))
        general = cfg.get("general")
        if general is not None and general.get("enabled", False) and not any(
                "general" in names for names in self.pipeline.values()):
            raise ConfigError(f"general distillation is on (general.enabled=true) but "
                              f"task={self.name} has no general stage in its pipeline; "
                              f"use general=none")

    @staticmethod
    def objective(cfg: DictConfig, metric: str) -> str:
        """What ``objective`` asks a sweeper to maximise: ``final`` (the student's headline
        metric on the final split) or ``validation`` (on the validation split: tune on this).

        ``objective`` is ``final`` or ``validation``, optionally with the task's metric:
        ``final_accuracy``, ``validation_exact_match``.
        """
        value = str(cfg.get("objective", "final"))
        kind = value.split("_", 1)[0]
        if kind not in ("final", "validation") or value not in (kind, f"{kind}_{metric}"):
            raise ConfigError(f"objective={value} is not one of final, validation, "
                              f"final_{metric}, validation_{metric} (this task's metric is "
                              f"{metric})")
        return kind

    @abstractmethod
    def metric(self, ctx: RunContext) -> str:
        """The headline metric's name (higher is better): best checkpoint, objective, report."""

    @abstractmethod
    def build(self, ctx: RunContext) -> None:
        """Builds data, loss, the teacher as configured (``ctx.teacher_plan`` says how the
        teacher stage treats it) and checks the student, mapping and loss against it."""

    @abstractmethod
    def finetune(self, ctx: RunContext, teacher: ModelBundle, mode: Any,
                 settings: Any) -> ModelBundle:
        """The teacher stage for one teacher model: as given, from the cache or trained now."""

    @abstractmethod
    def teacher_targets(self, ctx: RunContext) -> Any:
        """Precomputes what the student learns from (teacher logits, generations); returns the
        stage origin (``skipped`` when the loss reads the live teacher or no teacher)."""

    @abstractmethod
    def build_student(self, ctx: RunContext) -> None:
        """Builds the student on the teacher as trained (``ctx.student``, ``ctx.pairs``)."""

    def train_modules(self, ctx: RunContext) -> tuple[nn.Module, nn.Module | None]:
        """The student and teacher modules the loop runs: the student model, and the live
        teacher when the loss reads it and the batches do not carry its outputs."""
        teacher = None
        if not ctx.cached_logits and ctx.loss.needs_teacher:  # else batches carry its logits
            teacher = live_teacher(ctx.teacher, ctx.loss)
        return ctx.student.model, teacher

    def batch_hook(self, ctx: RunContext) -> Callable[[dict, int], dict] | None:
        """What the loop applies to each training batch just before its step (``hook(batch,
        micro)``; e.g. on-policy sampling), or None (the default: batches as loaded)."""
        return None

    @abstractmethod
    def train_loader(self, ctx: RunContext) -> Any:
        """The batches the student trains on."""

    @abstractmethod
    def evaluator(self, ctx: RunContext) -> tuple[Evaluator, Any] | None:
        """What the engine evaluates the student with during training: ``(evaluate, source)``,
        or None for no evaluation during training."""

    @abstractmethod
    def evaluate(self, ctx: RunContext) -> Evaluation:
        """The final evaluation of teacher and student (metrics keyed by metric name)."""

    @abstractmethod
    def record(self, ctx: RunContext) -> dict[str, Any]:
        """The task's own fields of the run record (``metrics.json``)."""

    @abstractmethod
    def summary(self, metrics: dict[str, Any]) -> str:
        """The summary the run logs at its end."""

    def export_note(self) -> str:
        """How to load the exported student (logged after the export)."""
        return "load it with transformers' from_pretrained"
