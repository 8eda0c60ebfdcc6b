"""The built-in stages of the run graph; ``conf/task/<task>.yaml`` lists them by name.

===================  ==========================================================================
``build``            data, loss, the teacher as configured; student/mapping/loss checked
``teacher``          fine-tune the teacher on the task once (per member of an ensemble); cached
``student``          build the student on the trained teacher; bind the loss to the mapping
``general``          ``general`` enabled: distil the student on unlabelled text first (cached)
``teacher_targets``  teacher logits per split (cached, or from ``teacher=offline``'s file), or
                     teacher generations (seq-KD, step by step; cached)
``distil``           train the student (resume, checkpoints, DDP, evaluation during training
                     by the task's metric)
``evaluate``         teacher and student on the final split, by the task's metrics
``export``           the student (``save_pretrained``) and the run record ``metrics.json``
``export_logits``    ``mode=export_logits``: the teacher's logits for a split, to a file
===================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Sequence

from distillkit.errors import ConfigError
from distillkit.pipeline.stage import Stage
from distillkit.stages.build import BuildStage
from distillkit.stages.distil import DistilStage
from distillkit.stages.evaluate import EvaluateStage
from distillkit.stages.export import ExportLogitsStage, ExportStage
from distillkit.stages.general import GeneralStage
from distillkit.stages.student import StudentStage
from distillkit.stages.teacher import TeacherStage, TeacherTargetsStage

STAGES: dict[str, type] = {stage.name: stage for stage in (
    BuildStage, TeacherStage, StudentStage, GeneralStage, TeacherTargetsStage, DistilStage, EvaluateStage, ExportStage,
    ExportLogitsStage)}


# What each stage reads from the context: the stages that must run before it.
NEEDS: dict[str, tuple[str, ...]] = {
    "build": (), "teacher": ("build",), "student": ("teacher",), "general": ("student",),
    "teacher_targets": ("student",), "distil": ("student", "teacher_targets"),
    "evaluate": ("distil",), "export": ("evaluate",), "export_logits": ("teacher",)}


def stages_named(names: Sequence[str]) -> list[Stage]:
    """The built-in stages ``names`` lists, in order.

    Raises:
        ConfigError: for an unknown name, a stage listed twice, or a stage listed before one
            it reads from (``export`` needs ``evaluate`` before it, ...).
    """
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ConfigError(f"task.pipeline names unknown stage(s) {', '.join(unknown)}; the "
                          f"stages are {', '.join(STAGES)}")
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"task.pipeline lists stage '{name}' twice; list it once")
        missing = [n for n in NEEDS[name] if n not in names[:i]]
        if missing:
            raise ConfigError(f"task.pipeline: stage '{name}' needs {', '.join(missing)} "
                              f"before it; e.g. {' -> '.join(_order(name))}")
    return [STAGES[name]() for name in names]


def _order(name: str) -> list[str]:
    """``name`` and every stage it needs, in an order that runs."""
    out: list[str] = []
    for need in NEEDS[name]:
        out += [n for n in _order(need) if n not in out]
    return [*out, name]
