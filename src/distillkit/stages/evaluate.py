"""The ``evaluate`` stage: teacher and student on the final split, by the task's metrics."""

from __future__ import annotations

from typing import Any

from distillkit.pipeline.context import RunContext


class EvaluateStage:
    """The final evaluation (the test split, or the validation split without one); the
    teacher's is read from its output cache when it is fixed (classification)."""

    name = "evaluate"
    main_first = False

    def prepare(self, ctx: RunContext) -> None:
        """Nothing to check: the build stage checked the objective against the task."""

    def run(self, ctx: RunContext) -> dict[str, Any]:
        ctx.evaluation = ev = ctx.task.evaluate(ctx)
        metric = ctx.task.metric(ctx)
        finals = {"teacher": ev.teacher, "student": ev.student,
                  **{f"teacher/{name}": m for name, m in ev.members.items()}}
        if ctx.writer is not None:
            for who, m in finals.items():
                if m is not None:
                    ctx.writer.add_scalar(f"final/{who}/{metric}", m[metric], ctx.result.steps)
        teacher = "offline" if ev.teacher is None else ev.teacher.get("evaluation", "computed")
        return {"teacher": teacher, "student": "computed"}
