"""The teacher stages: train the teacher on the task once (cached), then precompute what the
student learns from (cached)."""

from __future__ import annotations

from functools import partial
from typing import Any

from distillkit.errors import ConfigError
from distillkit.models import EnsembleTeacher
from distillkit.pipeline.context import RunContext
from distillkit.teachers.features import check_settings
from distillkit.teachers.setup import prepare_teachers
from distillkit.teachers.topk_cache import check_topk_settings


class TeacherStage:
    """Fine-tunes the teacher on the task when its head is untrained (``teacher.finetune``),
    once: later runs read it from the cache; an ensemble runs this per member."""

    name = "teacher"
    main_first = True

    def prepare(self, ctx: RunContext) -> None:
        """Nothing to check before the build stage has run."""

    def run(self, ctx: RunContext) -> Any:
        plan = ctx.teacher_plan
        labels = ctx.data.labels if plan.members is not None else []
        ctx.teacher = teacher = prepare_teachers(ctx.teacher, plan, labels,
                                                 partial(ctx.task.finetune, ctx))
        if isinstance(teacher, EnsembleTeacher):
            return {name: member.origin for name, member in teacher.members.items()}
        return teacher.origin


class TeacherTargetsStage:
    """The teacher's outputs the student learns from, computed once per split and cached (or
    read from a file): logits, and the hidden states and attention maps a layer-wise loss
    reads; generations for seq-KD and step by step. ``skipped`` when the loss reads no
    teacher, or the live one (teacher dropout, a feature cache over its budget)."""

    name = "teacher_targets"
    main_first = True

    def prepare(self, ctx: RunContext) -> None:
        """Checks the feature-cache settings before any stage runs."""
        trainer = ctx.cfg.trainer
        check_settings(str(trainer.feature_cache_dtype), float(trainer.feature_cache_max_gb))
        k = int(trainer.get("teacher_topk", 0) or 0)
        if k:
            if not ctx.task.sparse_targets:
                raise ConfigError(f"trainer.teacher_topk={k} caches a causal LM's top-k "
                                  f"next-token targets, but task={ctx.task.name}; remove "
                                  "trainer.teacher_topk or use task=causal_lm")
            check_topk_settings(k, str(trainer.get("teacher_topk_dtype", "fp16")),
                                float(trainer.feature_cache_max_gb),
                                int(trainer.get("teacher_topk_samples", 0) or 0))

    def run(self, ctx: RunContext) -> Any:
        return ctx.task.teacher_targets(ctx)
