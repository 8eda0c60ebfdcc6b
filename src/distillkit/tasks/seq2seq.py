"""Sequence-to-sequence distillation (``task=seq2seq``): word-level KD, sequence-level KD,
distilling step by step; judged by generation (exact match, BLEU, chrF; ``data.metric`` is the
headline).

The task's parts of the shared stages: the teacher trained on the task once and cached
(:mod:`distillkit.seq2seq.teacher_stage`), the teacher's generations as targets
(:mod:`distillkit.seq2seq.targets`), evaluation by generation
(:mod:`distillkit.seq2seq.evaluate`), predictions written to ``predictions_<who>.tsv``.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from distillkit.engine import frozen
from distillkit.errors import ConfigError, ModelError
from distillkit.models import ModelBundle, count_parameters
from distillkit.pipeline.context import Evaluation, RunContext, TeacherPlan
from distillkit.runtime.io import write_file
from distillkit.seq2seq.evaluate import evaluate_generation
from distillkit.seq2seq.losses import StepByStepLoss
from distillkit.seq2seq.models import decoder_start, vocab_size
from distillkit.seq2seq.targets import sequence_kd_targets, step_by_step_targets
from distillkit.seq2seq.teacher_stage import eval_settings, prepare_seq2seq_teacher
from distillkit.tasks.base import Evaluator, Task
from distillkit.teachers.finetune import plain_stage_settings

log = logging.getLogger(__name__)
# What the teacher_targets stage leaves in RunContext.details (seq2seq.targets), recorded.
TARGET_DETAILS = ("sequence_kd", "teacher_rationales", "teacher_labels")
class Seq2SeqTask(Task):
    """Distils an ``AutoModelForSeq2SeqLM`` teacher into a smaller one, judged by generation."""

    option_prefixes = ("distillkit.seq2seq.",)
    option_task = "seq2seq"
    option_hint = ("a seq2seq option (teacher=t5_small_scratch|bert2bert_minilm|t5_hub|flan_t5|"
                   "marian, student=t5_tiny, data=arith|s2s_files, loss=seq_word_kd|seq_kd|"
                   "step_by_step) or an experiment=arith_*")

    def check(self, cfg: DictConfig, dist: Any) -> None:
        super().check(cfg, dist)
        if dist.enabled:
            raise ConfigError("task=seq2seq runs in one process; launch it without torchrun/"
                              "accelerate")

    def metric(self, ctx: RunContext) -> str:
        return ctx.data.metric

    def _prefix(self, ctx: RunContext) -> str:
        """The source prefix inference uses (``predict: `` for step by step)."""
        return (ctx.loss.label_prefix if isinstance(ctx.loss, StepByStepLoss)
                else ctx.data.source_prefix)

    def build(self, ctx: RunContext) -> None:
        cfg, settings = ctx.cfg, ctx.settings
        ctx.data = data = instantiate(cfg.data)
        ctx.loss = loss = instantiate(cfg.loss)
        spec = OmegaConf.to_container(cfg.teacher, resolve=True)
        mode, ft = plain_stage_settings(spec)
        ctx.teacher_plan = TeacherPlan(modes={"teacher": (mode, ft)})
        set_seed(ft.engine(settings).seed)  # the teacher's seed, when it has its own
        teacher: ModelBundle = instantiate(spec)()
        set_seed(settings.seed)  # the student starts alike in every run
        student: ModelBundle = instantiate(cfg.student)(teacher=teacher)
        if vocab_size(student.model) != vocab_size(teacher.model):
            raise ModelError(f"student vocabulary ({vocab_size(student.model)}) differs from "
                             f"the teacher's ({vocab_size(teacher.model)}); build the student "
                             "on the teacher's tokenizer (student=t5_tiny does)")
        start = decoder_start(teacher.model)
        if decoder_start(student.model) != start:
            raise ModelError(f"student decoder_start_token_id {decoder_start(student.model)} "
                             f"!= teacher's {start}; both models must start decoding alike")
        data.tokenize(teacher.tokenizer, start)
        if isinstance(loss, StepByStepLoss):  # the teacher learns both tasks when it trains
            if data.columns["rationale_column"] is None:
                raise ConfigError("loss=step_by_step needs rationales: set "
                                  "data.rationale_column")
            data.use_step_by_step(loss.label_prefix, loss.rationale_prefix, "target_column",
                                  "rationale_column")
        ctx.teacher, ctx.student = teacher, student

    def finetune(self, ctx: RunContext, teacher: ModelBundle, mode: Any,
                 settings: Any) -> ModelBundle:
        return prepare_seq2seq_teacher(teacher, mode, settings, ctx.data, ctx.settings,
                                       self._prefix(ctx))

    def teacher_targets(self, ctx: RunContext) -> Any:
        loss, details = ctx.loss, ctx.details
        if isinstance(loss, StepByStepLoss):
            return step_by_step_targets(loss, ctx.data, ctx.teacher, ctx.settings, details)
        if loss.sequence_kd is not None:
            return sequence_kd_targets(loss, ctx.data, ctx.teacher, ctx.settings, ctx.out_dir,
                                       details)
        return "skipped"

    def build_student(self, ctx: RunContext) -> None:
        """The student was built with the teacher (its vocabulary checked before any teacher
        training); the training RNG restarts from the seed here, so a run whose teacher was
        trained in the same process and one that read it from the cache train alike."""
        set_seed(ctx.settings.seed)
        log.info("teacher: %s (%s params); student: %s (%s params); %d training pairs",
                 ctx.teacher.name, f"{count_parameters(ctx.teacher.model):,}",
                 ctx.student.name, f"{count_parameters(ctx.student.model):,}",
                 ctx.data.num_parts("train"))

    def train_loader(self, ctx: RunContext) -> Any:
        return ctx.data.loader("train", ctx.settings.batch_size, shuffle=True,
                               seed=ctx.settings.seed)

    def _generate(self, ctx: RunContext, model: Any, tokenizer: Any, role: str, dtype: Any,
                  desc: str, beams: int) -> tuple[dict[str, Any], list[str]]:
        data, settings = ctx.data, ctx.settings
        ids = data.encode_sources(data.sources(role, self._prefix(ctx)))
        return evaluate_generation(model, tokenizer, ids, data.references(role),
                                   eval_settings(data, settings.eval_batch_size, beams),
                                   settings.resolve_device(), dtype, desc=desc,
                                   progress=settings.progress)

    def evaluator(self, ctx: RunContext) -> tuple[Evaluator, Any] | None:
        """Greedy generation on the eval split (beam search is for the final evaluation)."""
        if not ctx.data.has_split("eval"):
            return None

        def evaluate(model: Any, role: str, desc: str) -> dict[str, Any]:
            return self._generate(ctx, model, ctx.student.tokenizer, role,
                                  ctx.distiller.autocast_dtype, desc, beams=1)[0]
        return evaluate, "eval"

    def _final(self, ctx: RunContext, bundle: ModelBundle, role: str, dtype: Any,
               who: str) -> dict[str, Any]:
        data, prefix = ctx.data, self._prefix(ctx)
        metrics, predictions = self._generate(ctx, bundle.model, bundle.tokenizer, role, dtype,
                                              f"eval {who}", data.eval_num_beams)
        rows = "".join(f"{s}\t{p}\t{r}\n" for s, p, r in
                       zip(data.sources(role, prefix), predictions, data.references(role),
                           strict=True))
        if ctx.dist.is_main:
            write_file(ctx.out_dir / f"predictions_{who}.tsv",
                       lambda fh: fh.write(("source\tprediction\treference\n" + rows).encode()))
        log.info("%s on %s: exact match %.4f, BLEU %.2f, chrF %.2f (%d examples, %.1fs)", who,
                 role, metrics["exact_match"], metrics["bleu"], metrics["chrf"],
                 metrics["examples"], metrics["seconds"])
        return metrics

    def evaluate(self, ctx: RunContext) -> Evaluation:
        role = "test" if ctx.data.has_split("test") else "eval"
        distiller = ctx.distiller
        frozen(ctx.teacher.model, distiller.device, distiller.teacher_dtype)
        teacher = self._final(ctx, ctx.teacher, role, distiller.teacher_dtype, "teacher")
        student = self._final(ctx, ctx.student, role, distiller.autocast_dtype, "student")
        validation = None
        if self.objective(ctx.cfg, self.metric(ctx)) == "validation":
            validation = student if role == "eval" else self._final(
                ctx, ctx.student, "eval", distiller.autocast_dtype, "student_validation")
        return Evaluation(split=ctx.data.split_names[role], role=role, teacher=teacher,
                          student=student, validation=validation)

    def record(self, ctx: RunContext) -> dict[str, Any]:
        ev, result, data = ctx.evaluation, ctx.result, ctx.data
        headline = data.metric
        t_value = ev.teacher[headline]
        metrics = {
            "teacher": ev.teacher, "student": ev.student,
            "retention": ev.student[headline] / t_value if t_value > 0 else None,
            "params": {"teacher": count_parameters(ctx.teacher.model),
                       "student": count_parameters(ctx.student.model)},
            "teacher_path": ctx.teacher.model.name_or_path or None,
            "eval_split": ev.split, "inference_prefix": self._prefix(ctx),
            "loss": type(ctx.loss).__name__,
            "train": {"steps": result.steps, "epochs": result.epochs_completed,
                      "pairs": data.num_parts("train"), "examples": len(data.parts["train"]),
                      "seconds": round(result.train_seconds, 3),
                      "last_losses": result.last_losses, "evals": result.evals},
        }
        if ev.validation is not None:
            metrics["validation"] = {"split": data.split_names["eval"], "student": ev.validation}
        targets = {key: ctx.details[key] for key in TARGET_DETAILS if key in ctx.details}
        if targets:  # what the teacher_targets stage generated, and from where
            metrics["targets"] = targets
        return metrics

    def summary(self, metrics: dict[str, Any]) -> str:
        headline = metrics["metric"]
        retention = metrics["retention"]
        return (f"summary: {headline} teacher {metrics['teacher'][headline]:.4f}, student "
                f"{metrics['student'][headline]:.4f} (retention "
                f"{'-' if retention is None else f'{retention:.4f}'}) on "
                f"{metrics['eval_split']} [{metrics['student']['examples']} examples]")

    def export_note(self) -> str:
        return "load it with AutoModelForSeq2SeqLM; generate with model.generate"
