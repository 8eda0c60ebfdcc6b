"""The ``student`` stage: the student built on the teacher as trained."""

from __future__ import annotations

from distillkit.pipeline.context import RunContext


class StudentStage:
    """Builds the student on the trained teacher (a copied student takes the fine-tuned
    teacher's layers), resolves the layer mapping and binds the loss to it. It runs before
    the teacher-targets stage, which runs the teacher frozen (and, on some devices, cast to a
    lower precision) for its outputs: the student is copied from the teacher as trained."""

    name = "student"
    main_first = False

    def prepare(self, ctx: RunContext) -> None:
        """Nothing to check: the build stage built and checked a student already."""

    def run(self, ctx: RunContext) -> str:
        ctx.task.build_student(ctx)
        return "computed"
