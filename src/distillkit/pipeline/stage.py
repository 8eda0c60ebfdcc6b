"""The contract every stage of the run graph keeps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from distillkit.pipeline.context import RunContext

# Where a stage's result came from, as metrics.json records it ("stages": {name: origin}).
# computed: this run did the work; cache: read from distillkit's cache (keyed by what made it);
# file: read from a file the config names (teacher=offline); fine-tuned: a teacher trained by
# this run (and cached for the next); resumed: continued from a checkpoint; as given: a teacher used as loaded; offline: no teacher
# model (teacher=offline); skipped: nothing to do in this run (no teacher targets for
# loss=hard, no export with export_student=false).
ORIGINS = ("computed", "cache", "file", "fine-tuned", "resumed", "as given", "offline",
           "skipped")


@runtime_checkable
class Stage(Protocol):
    """One step of the run graph.

    Attributes:
        name: the stage's name in ``task.pipeline`` and in ``metrics.json``'s ``stages``.
        main_first: in a data-parallel run, rank 0 runs it before the other ranks (which then
            read what it cached: the teacher, its outputs).
    """

    name: str
    main_first: bool

    def prepare(self, ctx: RunContext) -> None:
        """Cheap checks, run for every stage of the pipeline before any stage runs, so a bad
        setting of a late stage fails before the expensive early ones (no training here)."""

    def run(self, ctx: RunContext) -> Any:
        """Does the stage's work on ``ctx``; returns its origin: one of :data:`ORIGINS`, or a
        ``{part: origin}`` mapping for a stage with several parts (e.g. per split)."""
