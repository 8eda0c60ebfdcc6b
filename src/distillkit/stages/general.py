"""The ``general`` stage: the student distilled on unlabelled text before the task (cached)."""

from __future__ import annotations

import logging
from typing import Any

from distillkit.general import GeneralSettings, general_distillation
from distillkit.general.corpus import check_corpus
from distillkit.general.distill import spec_of
from distillkit.pipeline.context import RunContext
from distillkit.teachers.setup import student_basis

log = logging.getLogger(__name__)


class GeneralStage:
    """General (task-agnostic) distillation (:mod:`distillkit.general`): with ``general``
    enabled, the freshly built student learns the teacher's intermediate representations on a
    corpus of plain text, once; later runs read its encoder from the cache. ``skipped`` with
    ``general=none``."""

    name = "general"
    main_first = True  # rank 0 trains (or reads) it; the other ranks then read the cache

    def prepare(self, ctx: RunContext) -> None:
        """Checks the ``general`` section (keys, choices, ranges, the corpus files) before
        any stage runs."""
        settings = GeneralSettings.from_config(spec_of(ctx.cfg.get("general")))
        if settings.enabled:
            check_corpus(settings.corpus)

    def run(self, ctx: RunContext) -> Any:
        spec = spec_of(ctx.cfg.get("general"))
        settings = GeneralSettings.from_config(spec)
        if not settings.enabled:
            return "skipped"
        if student_basis(ctx.teacher).model is None:  # teacher=offline: logits, no layers
            log.warning("general distillation skipped: teacher '%s' has no layers to learn "
                        "from (teacher=offline); the student starts from its own "
                        "initialisation", ctx.teacher.name)
            return "skipped"
        trainer = ctx.cfg.trainer
        cache = ((str(trainer.feature_cache_dtype), float(trainer.feature_cache_max_gb))
                 if not ctx.settings.teacher_dropout else ("fp16", 0.0))
        ctx.general = general_distillation(ctx.teacher, ctx.student, settings, spec,
                                           ctx.settings, feature_cache=cache)
        return ctx.general.origin
