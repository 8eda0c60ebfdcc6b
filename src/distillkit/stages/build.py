"""The ``build`` stage: everything the run is made of, checked before any expensive work."""

from __future__ import annotations

from distillkit.pipeline.context import RunContext


class BuildStage:
    """Builds data, loss and the teacher as configured through the task; the student, layer
    mapping and loss are checked against the teacher here, and the objective against the
    task's metric, so a bad setting fails before the teacher trains."""

    name = "build"
    main_first = True  # rank 0 first: the others read what it cached

    def prepare(self, ctx: RunContext) -> None:
        ctx.task.check(ctx.cfg, ctx.dist)

    def run(self, ctx: RunContext) -> str:
        ctx.task.build(ctx)
        if ctx.mode == "distil":
            ctx.task.objective(ctx.cfg, ctx.task.metric(ctx))
        return "computed"
