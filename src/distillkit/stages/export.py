"""The last stages: the run record and the student (``export``), or the teacher's logits for
a split (``export_logits``, ``mode=export_logits``)."""

from __future__ import annotations

import logging
from typing import Any

from distillkit.engine.sharding import full_model_state, is_sharded
from distillkit.pipeline.context import RunContext
from distillkit.reporting.hparams import hparams_of, log_hparams
from distillkit.reporting.record import run_record
from distillkit.runtime.io import write_metrics, write_pretrained
from distillkit.teachers.export import ExportRequest, export_teacher_logits

log = logging.getLogger(__name__)


class ExportStage:
    """Writes the run record (``metrics.json``, the HParams session) and, with
    ``export_student=true``, the student with ``save_pretrained`` (rank 0 alone)."""

    name = "export"
    main_first = False

    def prepare(self, ctx: RunContext) -> None:
        """Nothing to check: the run directory exists already."""

    def run(self, ctx: RunContext) -> str:
        exporting = bool(ctx.cfg.get("export_student", True))
        origin = "computed" if exporting else "skipped"
        ctx.metrics = metrics = run_record(ctx, {**ctx.origins, self.name: origin})
        if ctx.writer is not None:
            log_hparams(ctx.writer, hparams_of(ctx.cfg, ctx.launch.get("overrides", ()),
                                               ctx.launch.get("choices")),
                        metrics, ctx.result.steps)
            ctx.writer.close()
        model = ctx.student.model
        # a sharded student's full weights, gathered on rank 0 (every rank takes part)
        state = full_model_state(model) if exporting and is_sharded(model) else None
        if not ctx.dist.is_main:  # rank 0 exports and writes the record
            ctx.dist.barrier()
            return origin
        if exporting:
            write_pretrained(ctx.out_dir / "student", model, ctx.student.tokenizer,
                             state_dict=state)
            log.info("student exported to %s (%s)", ctx.out_dir / "student",
                     ctx.task.export_note())
        write_metrics(ctx.out_dir, metrics)
        log.info("%s", ctx.task.summary(metrics))
        log.info("run output: %s", ctx.out_dir)
        ctx.dist.barrier()  # every rank returns once the run's output is complete
        return origin


class ExportLogitsStage:
    """Writes the teacher's logits for ``export.split`` to ``export.path`` (rank 0 alone)."""

    name = "export_logits"
    main_first = False

    def prepare(self, ctx: RunContext) -> None:
        ctx.export = ExportRequest.from_config(ctx.cfg)

    def run(self, ctx: RunContext) -> Any:
        ctx.metrics = export_teacher_logits(ctx.teacher, ctx.data, ctx.export, ctx.settings,
                                            ctx.out_dir)
        return "computed"
