"""The teacher as the run builds it: one model, or an ensemble of members (``teacher=ensemble``).

A ``teacher`` config with a ``members`` section is an ensemble: every member is a teacher
config of its own (any option of the ``teacher`` group, with its own ``finetune`` and
``finetune_settings``), built with the data's labels, and the ``teacher`` node's ``_target_``
(:func:`distillkit.models.teacher_ensemble`) combines the built members into one teacher
bundle (:class:`distillkit.models.EnsembleTeacher`). The teacher stage runs per member: each
member without a trained head is fine-tuned and cached under its own key, exactly as it would
be as the only teacher.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import set_seed

from distillkit.errors import ConfigError, ModelError
from distillkit.losses.contract import KDLoss
from distillkit.models import EnsembleTeacher, ModelBundle, check_compatible, first_layers
from distillkit.pipeline.context import TeacherPlan
from distillkit.teachers.finetune import FinetuneSettings, stage_settings

log = logging.getLogger(__name__)


def _seed_head(settings: FinetuneSettings) -> None:
    """Seeds a teacher's new head with the teacher's own seed, when it has one (else the
    run's seed, set by the caller, initialises it)."""
    if settings.seed is not None:
        set_seed(settings.seed)


def _build_member(name: str, spec: dict[str, Any], labels: list[str]) -> ModelBundle:
    """One member from its spec, its messages naming ``teacher.members.<name>``."""
    if not isinstance(spec, dict) or "_target_" not in spec:
        raise ConfigError(f"teacher.members.{name} is not a teacher config (no _target_); use "
                          f"an option of the teacher group, e.g. "
                          f"teacher@teacher.members.{name}=tiny")
    factory = instantiate(spec)
    kwargs: dict[str, Any] = {"labels": labels}
    try:
        if "role" in inspect.signature(factory).parameters:
            kwargs["role"] = f"teacher.members.{name}"  # pretrained_classifier's messages
    except (TypeError, ValueError):  # no signature to read: call it as a teacher
        pass
    return factory(**kwargs)


def build_teacher(cfg: DictConfig, labels: list[str]) -> tuple[ModelBundle, TeacherPlan]:
    """Builds the teacher as configured (before its teacher stage) and the plan the teacher
    stage follows: each teacher model's fine-tune mode and settings.

    For an ensemble the returned bundle combines the members as built; the plan holds the
    members and the combine function, so the teacher stage can combine them again after each
    member's own stage.
    """
    spec = OmegaConf.to_container(cfg.teacher, resolve=True)
    members = spec.pop("members", None)
    if members is None:
        mode, ft_settings = stage_settings(spec, "teacher")
        _seed_head(ft_settings)
        teacher: ModelBundle = instantiate(spec)(labels=labels)
        return teacher, TeacherPlan(modes={"teacher": (mode, ft_settings)})
    if not isinstance(members, dict):
        raise ConfigError("teacher.members must map member names to teacher configs")
    combine = instantiate(spec)  # partial: (members, labels) -> EnsembleTeacher
    modes = {str(n): stage_settings(m, f"teacher.members.{n}") if isinstance(m, dict)
             else ("auto", FinetuneSettings()) for n, m in members.items()}
    built = {}
    for name, member_spec in members.items():
        _seed_head(modes[str(name)][1])
        built[str(name)] = _build_member(str(name), member_spec, labels)
    teacher = combine(members=built, labels=labels)
    return teacher, TeacherPlan(modes=modes, members=built, combine=combine)


def prepare_teachers(teacher: ModelBundle, plan: TeacherPlan, labels: list[str],
                     prepare: Callable[[ModelBundle, Any, Any], ModelBundle]) -> ModelBundle:
    """Runs ``prepare(model, mode, settings)`` (one teacher model's stage) for the teacher, or
    for every member of an ensemble, which it then combines again."""
    if plan.members is None:
        return prepare(teacher, *plan.modes["teacher"])
    ready = {}
    for name, member in plan.members.items():
        log.info("teacher stage of ensemble member '%s' (%s)", name, member.name)
        ready[name] = prepare(member, *plan.modes[name])
    return plan.combine(members=ready, labels=labels)


def student_basis(teacher: ModelBundle) -> ModelBundle:
    """The teacher bundle a student builder receives: the teacher, or an ensemble's
    intermediate member (its tokenizer, vocabulary and layers)."""
    return teacher.basis if isinstance(teacher, EnsembleTeacher) else teacher


def check_student(teacher: ModelBundle, student: ModelBundle) -> None:
    """:func:`~distillkit.models.check_compatible` for the teacher, or for every member of an
    ensemble (the message then names the member)."""
    if not isinstance(teacher, EnsembleTeacher):
        check_compatible(teacher, student)
        return
    for name, member in teacher.members.items():
        try:
            check_compatible(member, student)
        except ModelError as exc:
            raise ModelError(f"teacher.members.{name}: {exc}") from exc


def live_teacher(teacher: ModelBundle, loss: KDLoss) -> nn.Module:
    """The teacher model the loop runs: without the layers above the deepest one the loss
    reads when it never reads the teacher's logits (of an ensemble, then only the
    intermediate member runs)."""
    depth = loss.teacher_depth()
    if depth is None:
        return teacher.model
    source = student_basis(teacher)
    if source is not teacher:
        log.info("the loss reads no teacher logits: of the ensemble only member '%s' runs",
                 teacher.intermediate)
    if depth >= source.num_layers:
        return source.model
    log.info("the loss reads teacher layers up to %d and no teacher logits: the teacher runs "
             "%d of its %d layers", depth, depth, source.num_layers)
    return first_layers(source.model, depth)
