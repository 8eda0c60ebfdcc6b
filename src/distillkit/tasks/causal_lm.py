"""Causal-LM distillation (``task=causal_lm``): a decoder-only teacher into a smaller decoder,
token by token; judged by held-out perplexity, agreement with the teacher and KL.

The task's parts of the shared stages: data, evaluation and losses live in
:mod:`distillkit.causal` (:mod:`~distillkit.causal.data`, :mod:`~distillkit.causal.evaluate`,
:mod:`~distillkit.causal.losses`); the teacher stage uses the teacher as given unless
``teacher.finetune=true`` (:mod:`distillkit.causal.teacher_stage`: fine-tuned on the train split
once, cached). The loop runs both models through :class:`~distillkit.causal.lean.LeanCausalLM` (last hidden
states and the output layer, no full-vocabulary logits); the headline metric is
``neg_perplexity`` (``-perplexity``: higher is better, as best-checkpoint selection and
sweeps need); ``retention`` is ``teacher perplexity / student perplexity``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from transformers import set_seed

from distillkit.causal.evaluate import generate_side_by_side
from distillkit.causal.generation import pad_id, stop_ids
from distillkit.causal.lean import LeanCausalLM
from distillkit.causal.models import CausalBundle
from distillkit.causal.on_policy import OnPolicyBatches
from distillkit.causal.rank_scores import score_shared
from distillkit.causal.sequence_kd import sequence_kd_targets
from distillkit.causal.targets import cache_train_topk, topk_collate
from distillkit.causal.teacher_stage import prepare_causal_teacher
from distillkit.causal.vocab import align_vocab
from distillkit.engine import frozen
from distillkit.models import count_parameters
from distillkit.pipeline.context import Evaluation, RunContext, TeacherPlan
from distillkit.runtime.io import write_file
from distillkit.tasks.base import Evaluator, Task
from distillkit.teachers.finetune import FinetuneSettings, plain_stage_settings

log = logging.getLogger(__name__)
METRIC = "neg_perplexity"
GENERATIONS = "generations.jsonl"


class CausalLMTask(Task):
    """Distils a causal language model into a smaller one on the same tokenizer."""

    option_prefixes = ("distillkit.causal.",)
    option_task = "causal_lm"
    sparse_targets = True
    option_hint = ("a causal_lm option (teacher=smollm2|causal_hub|tiny_llama, "
                   "student=smollm2_copy|smollm2_small|tiny_llama_student, data=causal_text|"
                   "causal_pairs|causal_chat|snli_text|snli_pairs|tiny_causal, loss=causal_kd|"
                   "causal_rkl|causal_jsd|causal_tvd|causal_skew_kl|causal_ce|causal_hidden) or "
                   "experiment=tiny_causal_lm|smollm2_kd")

    def metric(self, ctx: RunContext) -> str:
        return METRIC

    def build(self, ctx: RunContext) -> None:
        """Data, the teacher as given, the student on it, the loss with the shared
        vocabulary size (:func:`~distillkit.causal.vocab.align_vocab`: padding rows aligned,
        other tokenizers refused) bound to the layer mapping (``ctx.pairs``, resolved against
        the decoder layer counts; a bad index fails here); the data is tokenised with the
        teacher's tokenizer."""
        cfg, settings = ctx.cfg, ctx.settings
        ctx.data = data = instantiate(cfg.data)
        spec = OmegaConf.to_container(cfg.teacher, resolve=True)
        mode, ft = plain_stage_settings(spec)
        ctx.teacher_plan = TeacherPlan(modes={"teacher": (mode, ft)})
        set_seed(settings.seed)
        teacher: CausalBundle = instantiate(spec)()
        set_seed(settings.seed)  # the student starts alike in every run
        student: CausalBundle = instantiate(cfg.student)(teacher=teacher)
        vocab = align_vocab(student.vocab_size, teacher.vocab_size,
                            student.tokenizer.get_vocab(), teacher.tokenizer.get_vocab())
        ctx.loss = instantiate(cfg.loss, vocab_size=vocab)
        ctx.pairs = instantiate(cfg.mapping)(teacher_layers=teacher.num_layers,
                                             student_layers=student.num_layers)
        ctx.loss.bind(ctx.pairs, student_width=student.hidden_size,
                      teacher_width=teacher.hidden_size)
        ctx.details["vocab_size"] = vocab
        data.tokenize(teacher.tokenizer)
        ctx.teacher, ctx.student = teacher, student

    def finetune(self, ctx: RunContext, teacher: CausalBundle, mode: Any,
                 settings: FinetuneSettings) -> CausalBundle:
        """The teacher as given, or fine-tuned on the train split (``teacher.finetune=true``;
        :mod:`distillkit.causal.teacher_stage`). The student keeps the layers it copied from
        the given teacher."""
        tuned, info = prepare_causal_teacher(teacher, mode, settings, ctx.data, ctx.settings,
                                             ctx.details["vocab_size"])
        if info is not None:
            ctx.details["teacher_finetune"] = info
        return tuned

    def teacher_targets(self, ctx: RunContext) -> Any:
        """The teacher's responses for sequence-level KD (``loss.seq_kd``), then with
        ``trainer.teacher_topk=k`` its top-k targets of the training split, from the cache or
        one teacher pass (:mod:`distillkit.causal.targets`); ``skipped`` when neither applies:
        the loss reads no teacher, the teacher runs with dropout, ``k`` is 0 (the dense, live
        teacher) or the entry would exceed its budget."""
        trainer, loss = ctx.cfg.trainer, ctx.loss
        origins: dict[str, Any] = {}
        if loss.sequence_kd is not None:
            ctx.details["sequence_kd"] = sequence_kd_targets(
                ctx.teacher, ctx.data, ctx.settings, loss.generation, ctx.out_dir,
                write=ctx.dist.is_main)
            origins["sequence_kd"] = ctx.details["sequence_kd"]["generations"]
        k = int(trainer.get("teacher_topk", 0) or 0)
        if not (k and loss.needs_teacher and trainer.get("teacher_cache", True)):
            return origins or "skipped"
        if loss.teacher_features():
            log.info("trainer.teacher_topk=%d: the loss reads the teacher's hidden states, which "
                     "its top-k cache does not hold; the teacher runs live", k)
            return origins or "skipped"
        if ctx.settings.teacher_dropout:
            log.info("trainer.teacher_dropout=true: the teacher's outputs change every pass, "
                     "its top-k targets are not cached")
            return origins or "skipped"
        cache = cache_train_topk(ctx.teacher.model, ctx.data, ctx.settings, k=k,
                                 dtype=str(trainer.get("teacher_topk_dtype", "fp16")),
                                 samples=int(trainer.get("teacher_topk_samples", 0) or 0),
                                 max_gb=float(trainer.feature_cache_max_gb),
                                 vocab_size=ctx.details["vocab_size"])
        ctx.details["teacher_topk"] = cache
        log.info("%s", cache.describe())
        if cache.source == "live":
            return origins or "skipped"
        ctx.cached_logits = True
        return {**origins, **{role: split["origin"] for role, split in cache.splits.items()}}

    def build_student(self, ctx: RunContext) -> None:
        """The student was built with the teacher; the training RNG restarts from the seed."""
        set_seed(ctx.settings.seed)
        log.info("teacher: %s (%s params); student: %s (%s params); %d training examples, "
                 "%d learnt tokens", ctx.teacher.name,
                 f"{count_parameters(ctx.teacher.model):,}", ctx.student.name,
                 f"{count_parameters(ctx.student.model):,}", len(ctx.data.encoded["train"]),
                 ctx.data.num_tokens("train"))
        if ctx.pairs:
            log.info("layer mapping (student-teacher): %s; intermediate terms: %s",
                     ", ".join(f"{p.student}-{p.teacher}" for p in ctx.pairs),
                     ctx.loss.describe_layers())

    def train_modules(self, ctx: RunContext) -> tuple[nn.Module, nn.Module | None]:
        """Both models wrapped in :class:`~distillkit.causal.lean.LeanCausalLM` (the teacher
        only when the loss reads it and the batches do not carry its outputs)."""
        teacher = None
        loss = ctx.loss
        if loss.needs_teacher and (not ctx.cached_logits or loss.lmbda > 0):
            teacher = LeanCausalLM(ctx.teacher.model)  # on-policy batches: scored live
        return LeanCausalLM(ctx.student.model), teacher

    def batch_hook(self, ctx: RunContext) -> OnPolicyBatches | None:
        """With ``loss.lmbda`` > 0: GKD's on-policy batches (:mod:`distillkit.causal.on_policy`)."""
        loss = ctx.loss
        if not loss.lmbda:
            return None
        student, tokenizer = ctx.student.model, ctx.student.tokenizer
        return OnPolicyBatches(student, ctx.data.collate, loss.lmbda, loss.generation,
                               pad_id(tokenizer), stop_ids(student, tokenizer),
                               ctx.settings.seed, ctx.settings.resolve_device(),
                               weights=lambda: ctx.distiller.full_weights(student))

    def train_loader(self, ctx: RunContext) -> Any:
        """The training batches (carrying the teacher's top-k targets when they are cached)."""
        cache = ctx.details.get("teacher_topk")
        collate = None
        if ctx.cached_logits:
            head_only = _tail_read(cache, ctx.loss) == "rest mass"
            if head_only:
                log.info("the loss is not forward KL at T=1, for which the %d sampled tail slots "
                         "are unbiased: it reads the entry as plain top-%d targets (the slots "
                         "folded into the rest mass)", cache.samples, cache.k)
            collate = topk_collate(ctx.data, cache, head_only=head_only)
        return ctx.data.loader("train", ctx.settings.batch_size, shuffle=True,
                               seed=ctx.settings.seed, collate=collate, shard=ctx.dist.shard())

    def _batches(self, ctx: RunContext, role: str) -> list[dict]:
        return list(ctx.data.loader(role, ctx.settings.eval_batch_size))

    def evaluator(self, ctx: RunContext) -> tuple[Evaluator, Any] | None:
        """The student's perplexity on the eval split (no teacher pass: cheap)."""
        batches = self._batches(ctx, "eval")
        vocab = ctx.details["vocab_size"]

        def evaluate(model: Any, source: Any, desc: str) -> dict[str, Any]:
            distiller = ctx.distiller
            with distiller.full_weights(ctx.student.model):  # sharded: gathered (no collective)
                return score_shared(ctx.dist, ctx.student.model, None, source,
                                    device=distiller.device, vocab_size=vocab,
                                    student_dtype=distiller.autocast_dtype)["student"]
        return evaluate, batches

    def evaluate(self, ctx: RunContext) -> Evaluation:
        data, distiller = ctx.data, ctx.distiller
        role = "test" if data.has_split("test") else "eval"
        device, vocab = distiller.device, ctx.details["vocab_size"]
        teacher, student = ctx.teacher.model, ctx.student.model
        frozen(teacher, device, distiller.teacher_dtype)
        prompts = data.prompts(role, data.num_generations)
        with distiller.full_weights(student, teacher):  # each rank scores its share
            scores = score_shared(ctx.dist, student, teacher, self._batches(ctx, role),
                                  device=device, vocab_size=vocab,
                                  student_dtype=distiller.autocast_dtype)
            speed = None
            if ctx.dist.is_main:  # rank 0 alone generates and writes
                rows, speed = generate_side_by_side(teacher, student, ctx.student.tokenizer,
                                                    prompts, data.max_new_tokens, device)
                text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
                write_file(ctx.out_dir / GENERATIONS, lambda fh: fh.write(text.encode()))
        speed = ctx.dist.broadcast_object(speed)
        for who in ("teacher", "student"):
            model = teacher if who == "teacher" else student
            scores[who].update(params=count_parameters(model),
                               generation_tokens_per_second=speed[who])
            log.info("%s on %s: perplexity %.3f%s, %.1f generated tokens/s", who, role,
                     scores[who]["perplexity"],
                     "" if who == "teacher" else f", agreement {scores[who]['agreement']:.4f}, "
                     f"KL {scores[who]['kl']:.4f}", speed[who])
        validation = None
        if self.objective(ctx.cfg, METRIC) == "validation":
            score, batches = self.evaluator(ctx)
            validation = scores["student"] if role == "eval" else score(student, batches,
                                                                        "validation")
        return Evaluation(split=data.split_names[role], role=role, teacher=scores["teacher"],
                          student=scores["student"], validation=validation)

    def record(self, ctx: RunContext) -> dict[str, Any]:
        ev, result, data, loss = ctx.evaluation, ctx.result, ctx.data, ctx.loss
        metrics = {
            "teacher": ev.teacher, "student": ev.student,
            "retention": ev.teacher["perplexity"] / ev.student["perplexity"],
            "params": {"teacher": ev.teacher["params"], "student": ev.student["params"]},
            "eval_split": ev.split, "generations": GENERATIONS,
            "loss": {"divergence": type(loss.divergence).__name__, "alpha": loss.alpha,
                     "temperature": loss.temperature, "lmbda": loss.lmbda,
                     "seq_kd": loss.sequence_kd is not None},
            "vocab_size": ctx.details["vocab_size"],
            "data": {"format": data.format, "max_length": data.max_length,
                     "examples": {r: len(rows) for r, rows in data.encoded.items()},
                     "tokens": {r: data.num_tokens(r) for r in data.encoded}},
            "train": {"steps": result.steps, "epochs": result.epochs_completed,
                      "examples": len(data.encoded["train"]),
                      "seconds": round(result.train_seconds, 3),
                      "last_losses": result.last_losses, "evals": result.evals},
        }
        if "sequence_kd" in ctx.details:
            metrics["sequence_kd"] = ctx.details["sequence_kd"]
        if loss.lmbda:
            hook, micro = ctx.distiller.batch_hook, result.steps * ctx.settings.grad_accum_steps
            metrics["on_policy"] = {"lmbda": loss.lmbda, "generation": loss.generation.as_dict(),
                                    "batches": sum(map(hook.chosen, range(micro))),
                                    "of": micro}
        if "teacher_topk" in ctx.details:
            cache = ctx.details["teacher_topk"]
            metrics["teacher_topk"] = {**cache.record(), "tail_read": _tail_read(cache, loss)}
        if "teacher_finetune" in ctx.details:
            metrics["teacher_finetune"] = ctx.details["teacher_finetune"]
        if ev.validation is not None:
            metrics["validation"] = {"split": data.split_names["eval"], "student": ev.validation}
        return metrics

    def summary(self, metrics: dict[str, Any]) -> str:
        t, s = metrics["teacher"], metrics["student"]
        return (f"summary: perplexity teacher {t['perplexity']:.3f}, student "
                f"{s['perplexity']:.3f} (retention {metrics['retention']:.4f}); student "
                f"agreement {s['agreement']:.4f}, KL {s['kl']:.4f} on {metrics['eval_split']} "
                f"[{s['tokens']} tokens]")

    def export_note(self) -> str:
        return ("load it with AutoModelForCausalLM.from_pretrained, or "
                "pipeline('text-generation', model=<dir>)")


def _tail_read(cache: Any, loss: Any) -> str | None:
    """How the loss reads a top-k entry's sampled tail: ``samples`` (forward KL at T=1, where
    they are unbiased), ``rest mass`` (folded into plain top-k targets), None without one."""
    if not cache.samples:
        return None
    return "samples" if loss.reads_sampled_tail else "rest mass"
