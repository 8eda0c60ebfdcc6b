"""Text(-pair) classification: SNLI, MNLI, SST-2, own files; accuracy is the headline metric.

The task's parts of the shared stages: the teacher (one model, an ensemble, a Meta-KD
teacher or a logits file) fine-tuned once and cached (:mod:`distillkit.teachers.finetune`), the
teacher's logits cached per split (:mod:`distillkit.teachers.outputs`), evaluation by
accuracy (:mod:`distillkit.engine.evaluate`), the teacher's evaluation cached with its logits.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from transformers import set_seed

from distillkit.losses.contract import KDLoss
from distillkit.models import EnsembleTeacher, ModelBundle, count_parameters
from distillkit.pipeline.context import Evaluation, RunContext
from distillkit.reporting.metrics import collect_metrics, evaluate_teacher, format_summary
from distillkit.tasks.base import Evaluator, Task
from distillkit.teachers.features import cache_teacher_features
from distillkit.teachers.finetune import prepare_teacher
from distillkit.teachers.offline import OfflineTeacher, check_offline, match_offline_logits
from distillkit.teachers.outputs import attach_teacher_logits, teacher_evaluation
from distillkit.teachers.setup import build_teacher, check_student, student_basis

log = logging.getLogger(__name__)

def student_and_pairs(cfg: DictConfig, teacher: ModelBundle, labels: list[str], loss: KDLoss,
                      seed: int) -> tuple[ModelBundle, list]:
    """Builds the student, resolves the layer mapping and binds the loss to it."""
    set_seed(seed)  # the student (and any projection) starts alike in every run
    extra = {}
    if cfg.student.get("init") == "auto":  # a copied student: fine-tuned layers to distil,
        # pretrained ones for a loss that never reads the teacher (training alone)
        extra["init"] = "finetuned" if loss.needs_teacher else "pretrained"
    student: ModelBundle = instantiate(cfg.student, **extra)(teacher=student_basis(teacher),
                                                             labels=labels)
    check_student(teacher, student)
    pairs = instantiate(cfg.mapping)(teacher_layers=teacher.num_layers,
                                     student_layers=student.num_layers)
    loss.bind(pairs, student_width=int(student.model.config.hidden_size),
              teacher_width=teacher.hidden_size)
    return student, pairs


class ClassificationTask(Task):
    """Distils a sequence classifier into a smaller one, judged by accuracy."""

    option_prefixes = ()  # every option that no other task claims
    option_task = "classification"
    option_hint = ("a classification option (teacher=minilm6|tiny|hub, student=copy3|bert4l|"
                   "tiny, data=snli|files|tiny, loss=kd|hard|kl)")

    def metric(self, ctx: RunContext) -> str:
        return "accuracy"

    def build(self, ctx: RunContext) -> None:
        """Data, loss and the teacher as configured; the student, mapping and loss are built
        once against it here, so a bad layer index or loss setting fails before any teacher
        training; ``teacher=offline`` reads its logits file now."""
        cfg, seed = ctx.cfg, ctx.settings.seed
        set_seed(seed)  # a fresh teacher head (and its cache key) is the same for every caller
        ctx.data = data = instantiate(cfg.data)
        teacher, ctx.teacher_plan = build_teacher(cfg, data.labels)
        if ctx.mode == "distil":
            ctx.loss = loss = instantiate(cfg.loss)
            if isinstance(teacher, OfflineTeacher):
                check_offline(teacher, loss, cfg.mapping.get("_target_", ""))
                if loss.needs_teacher:
                    ctx.details["offline_logits"] = match_offline_logits(teacher, data)
            student_and_pairs(cfg, teacher, data.labels, loss, seed)
        elif ctx.export is not None:  # mode=export_logits: a known split, a teacher model
            ctx.export.check(data, teacher)
        data.tokenize(teacher.tokenizer)
        ctx.teacher = teacher

    def finetune(self, ctx: RunContext, teacher: ModelBundle, mode: Any,
                 settings: Any) -> ModelBundle:
        return prepare_teacher(teacher, mode, settings, ctx.data, ctx.settings)

    def teacher_targets(self, ctx: RunContext) -> Any:
        """The teacher's logits in every batch: from its file (``teacher=offline``), or
        computed once per split and cached, for a loss that reads only logits."""
        data, loss, settings = ctx.data, ctx.loss, ctx.settings
        if data.has_split("transfer") and not loss.needs_teacher:
            log.info("transfer split ignored: this loss uses no teacher to label it")
            data.drop_transfer()
        offline = ctx.details.pop("offline_logits", None)
        if offline:
            for role, logits in offline.items():
                data.attach_teacher_logits(role, logits)
            ctx.cached_logits = True
            return dict.fromkeys(offline, "file")
        if not (ctx.cfg.trainer.get("teacher_cache", True) and loss.needs_teacher):
            return "skipped"
        if settings.teacher_dropout:
            log.info("trainer.teacher_dropout=true: teacher outputs change every pass, the "
                     "teacher-output cache is bypassed")
            return "skipped"
        if loss.teacher_features():  # a layer-wise loss: the teacher's features, cached
            trainer = ctx.cfg.trainer
            features = cache_teacher_features(
                ctx.teacher, loss, data, settings, str(trainer.feature_cache_dtype),
                float(trainer.feature_cache_max_gb))
            ctx.details["teacher_features"] = features.record()
            log.info("%s", features.describe())
            if features.source == "live":
                return "skipped"
            ctx.cached_logits = True
            if loss.teacher_depth() is None:  # the loss reads the logits too
                attach_teacher_logits(ctx.teacher, data, settings)
            return {role: split["origin"] for role, split in features.splits.items()}
        if not loss.required_features() <= {"logits"}:
            return "skipped"
        ctx.cached_logits = True
        return attach_teacher_logits(ctx.teacher, data, settings)

    def build_student(self, ctx: RunContext) -> None:
        teacher = ctx.teacher
        ctx.student, ctx.pairs = student_and_pairs(ctx.cfg, teacher, ctx.data.labels, ctx.loss,
                                                   ctx.settings.seed)
        log.info("teacher: %s (%d layers, %s params)", teacher.name, teacher.num_layers,
                 f"{count_parameters(teacher.model):,}" if teacher.model is not None else "no")
        if isinstance(teacher, EnsembleTeacher):
            log.info("ensemble: %s logits of %s; the layer mapping and intermediate terms read "
                     "member '%s'", teacher.combine, ", ".join(teacher.members),
                     teacher.intermediate)
        log.info("student: %s (%d layers, %s params)", ctx.student.name,
                 ctx.student.num_layers, f"{count_parameters(ctx.student.model):,}")
        log.info("labels: %s; layer mapping (student-teacher): %s", ctx.data.labels,
                 ", ".join(f"{p.student}-{p.teacher}" for p in ctx.pairs) or "none")
        if (layers := ctx.loss.describe_layers()) is not None:
            log.info("intermediate terms: %s", layers)

    def _loading(self, ctx: RunContext) -> dict[str, Any]:
        # asynchronous host-to-GPU copies; with several processes, each rank's share
        return {"num_workers": ctx.settings.num_workers, "shard": ctx.dist.shard(),
                "pin_memory": ctx.settings.resolve_device().type == "cuda"}

    def train_loader(self, ctx: RunContext) -> Any:
        s = ctx.settings
        return ctx.data.loader("distil", s.batch_size, shuffle=True, seed=s.seed,
                               by_length=s.group_by_length, **self._loading(ctx))

    def evaluator(self, ctx: RunContext) -> tuple[Evaluator, Any]:
        loader = ctx.data.loader("eval", ctx.settings.eval_batch_size, **self._loading(ctx))
        return ctx.distiller.evaluate, loader

    def evaluate(self, ctx: RunContext) -> Evaluation:
        """Teacher (in its own precision; read from its output cache when fixed) and student
        on the test split, or the validation split without one."""
        data, distiller, teacher = ctx.data, ctx.distiller, ctx.teacher
        role = "test" if data.has_split("test") else "eval"
        log.info("final evaluation on split '%s' (%s)", data.split_names[role],
                 "the test split" if role == "test" else "no test split: the eval split")
        loader = data.loader(role, ctx.settings.eval_batch_size, **self._loading(ctx))
        cached = None
        if (teacher.model is not None and not isinstance(teacher, EnsembleTeacher)
                and not ctx.dist.enabled and bool(ctx.cfg.trainer.get("teacher_cache", True))
                and not ctx.settings.teacher_dropout):  # a fixed teacher: cached with its logits
            cached = partial(teacher_evaluation, teacher, data, role, ctx.settings)
        teacher_metrics, members = evaluate_teacher(distiller, teacher, loader, cached)
        student = distiller.evaluate(ctx.student.model, loader, desc="eval student")
        validation = None
        if self.objective(ctx.cfg, "accuracy") == "validation":
            validation = student if role == "eval" else distiller.evaluate(
                ctx.student.model, self.evaluator(ctx)[1], desc="eval student val")
        return Evaluation(split=data.split_names[role], role=role, teacher=teacher_metrics,
                          student=student, members=members, validation=validation)

    def record(self, ctx: RunContext) -> dict[str, Any]:
        ev = ctx.evaluation
        metrics = collect_metrics(ctx.teacher, ctx.student, ctx.data, ev.role, ev.teacher,
                                  ev.student, ctx.distiller, ctx.result, ev.members)
        if ev.validation is not None:
            metrics["validation"] = {"split": ctx.data.split_names["eval"],
                                     "student": ev.validation}
        return metrics

    def summary(self, metrics: dict[str, Any]) -> str:
        return "summary\n" + format_summary(metrics)
