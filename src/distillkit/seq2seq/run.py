"""The seq2seq run graph (``task=seq2seq``), dispatched to by :func:`distillkit.run.run`.

build data, teacher, student, loss → task format (plain, or both step-by-step tasks)
  → teacher stage (train the teacher on the task once; cached)
  → teacher generation stages (cached): rationales / labels for step by step when they come
    from the teacher; the train split's outputs for sequence-level KD (written to
    ``<run>/seqkd/train.{src,tgt,scores}``, the student's new targets)
  → distil (word-level KD / seq-KD / step by step) → evaluate teacher and student by
    generation (exact match, BLEU, chrF) → export student → ``metrics.json``.

Only this module (and :mod:`distillkit.run`) instantiates config nodes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from transformers import set_seed

from distillkit.engine import Distiller, EngineSettings, frozen
from distillkit.errors import ConfigError, ModelError
from distillkit.models import ModelBundle, count_parameters
from distillkit.runtime.io import write_file, write_metrics, write_pretrained
from distillkit.seq2seq.data import Seq2SeqData
from distillkit.seq2seq.evaluate import evaluate_generation
from distillkit.seq2seq.generation import GenerationSettings, cached_generations, write_parallel
from distillkit.seq2seq.losses import StepByStepLoss, TokenDistillationLoss
from distillkit.seq2seq.models import decoder_start, vocab_size
from distillkit.seq2seq.teacher_stage import eval_settings, prepare_seq2seq_teacher
from distillkit.teachers.finetune import FinetuneSettings

log = logging.getLogger(__name__)
SEQ2SEQ_PREFIX = "distillkit.seq2seq."


def _stage(name: str) -> None:
    log.info("== stage: %s", name)


def check_task(cfg: DictConfig, export: bool = False, distributed: bool = False) -> str:
    """The run's ``task``; refuses a mix of classification and seq2seq options (naming the
    option and the fix), and what seq2seq runs do not support yet."""
    task = cfg.get("task", "classification")
    if task not in ("classification", "seq2seq"):
        raise ConfigError(f"task={task} is not one of classification, seq2seq")
    for group in ("teacher", "student", "data", "loss"):
        target = str(cfg[group].get("_target_", ""))
        seq2seq = target.startswith(SEQ2SEQ_PREFIX)
        if seq2seq != (task == "seq2seq"):
            kind = "a seq2seq" if seq2seq else "a classification"
            fix = ("add task=seq2seq" if seq2seq else
                   "pick a seq2seq option (teacher=t5_small_scratch|bert2bert_minilm|t5_hub|"
                   "flan_t5|marian, student=t5_tiny, data=arith, loss=seq_word_kd|seq_kd|"
                   "step_by_step) or an experiment=arith_*")
            raise ConfigError(f"{group} ({target}) is {kind} option but task={task}; {fix}")
    if task == "seq2seq" and export:
        raise ConfigError("mode=export_logits exports classification logits; with task=seq2seq "
                          "use the seq-KD stage's files (loss=seq_kd) and set mode=distil")
    if task == "seq2seq" and distributed:
        raise ConfigError("task=seq2seq runs in one process; launch it without torchrun/"
                          "accelerate")
    return task


def _build(cfg: DictConfig, settings: EngineSettings) -> dict[str, Any]:
    data = instantiate(cfg.data)
    loss = instantiate(cfg.loss)
    teacher_cfg = OmegaConf.to_container(cfg.teacher, resolve=True)
    mode = teacher_cfg.pop("finetune", "auto")
    ft = FinetuneSettings.from_config(teacher_cfg.pop("finetune_settings", None))
    if ft.meta():
        raise ConfigError("teacher.finetune_settings domains/sample_weights/domain_loss_weight "
                          "(Meta-KD) apply to task=classification only; remove them")
    set_seed(ft.engine(settings).seed)  # the teacher's seed, when it has its own
    teacher: ModelBundle = instantiate(teacher_cfg)()
    set_seed(settings.seed)  # the student starts alike in every run
    student: ModelBundle = instantiate(cfg.student)(teacher=teacher)
    if vocab_size(student.model) != vocab_size(teacher.model):
        raise ModelError(f"student vocabulary ({vocab_size(student.model)}) differs from the "
                         f"teacher's ({vocab_size(teacher.model)}); build the student on the "
                         "teacher's tokenizer (student=t5_tiny does)")
    start = decoder_start(teacher.model)
    if decoder_start(student.model) != start:
        raise ModelError(f"student decoder_start_token_id {decoder_start(student.model)} != "
                         f"teacher's {start}; both models must start decoding alike")
    data.tokenize(teacher.tokenizer, start)
    return {"data": data, "loss": loss, "teacher": teacher, "student": student,
            "mode": mode, "ft": ft}


def _step_by_step(loss: StepByStepLoss, data: Seq2SeqData, teacher: ModelBundle,
                  engine: EngineSettings, stages: dict) -> None:
    """Sets the student's two tasks; generates rationales/labels with the teacher if asked."""
    has_llm = data.columns["llm_label_column"] is not None
    label_key = "llm_label_column" if loss.label_type == "llm" and has_llm else "target_column"
    rationale_key = "llm_rationale_column" if loss.label_type == "llm" else "rationale_column"
    generate_labels = loss.label_type == "llm" and not has_llm
    if loss.rationale_source == "data" and not generate_labels:
        data.use_step_by_step(loss.label_prefix, loss.rationale_prefix, label_key,
                              rationale_key)
        return
    _stage("teacher generates rationales/labels")
    device = engine.resolve_device()
    settings = GenerationSettings(num_beams=1, max_new_tokens=data.max_target_length,
                                  batch_size=engine.eval_batch_size)
    given: dict[str, list[str]] = {}
    for what, prefix, wanted in (("rationales", loss.rationale_prefix,
                                  loss.rationale_source == "teacher"),
                                 ("labels", loss.label_prefix, generate_labels)):
        if wanted:
            ids = data.encode_sources(data.sources("train", prefix))
            texts, _, origin, _ = cached_generations(
                teacher, ids, settings, device, engine.teacher_dtype(device),
                f"train {what}", engine.progress)
            given[what] = [t[0] for t in texts]
            stages[f"teacher_{what}"] = origin
    data.use_step_by_step(loss.label_prefix, loss.rationale_prefix, label_key, rationale_key,
                          rationales=given.get("rationales"), labels=given.get("labels"))


def _sequence_kd(loss: TokenDistillationLoss, data: Seq2SeqData, teacher: ModelBundle,
                 engine: EngineSettings, out_dir: Path, stages: dict) -> None:
    """The seq-KD stage: the teacher decodes the train split; its outputs become the targets."""
    settings = GenerationSettings.from_config(loss.sequence_kd, "loss.sequence_kd")
    _stage("sequence-level KD: teacher decodes the train split")
    device = engine.resolve_device()
    sources = [parts[0][0] for parts in data.parts["train"]]
    texts, scores, origin, path = cached_generations(
        teacher, data.encode_sources(sources), settings, device, engine.teacher_dtype(device),
        "train (seq-KD)", engine.progress)
    files = write_parallel(out_dir / "seqkd", "train", sources, texts, scores)
    data.replace_targets("train", texts, settings.mix_original)
    stages["sequence_kd"] = {"generations": origin, "cache": str(path), **files,
                             "pairs": data.num_parts("train"), **vars(settings)}


def _evaluate(bundle: ModelBundle, data: Seq2SeqData, role: str, prefix: str,
              settings: GenerationSettings, engine: EngineSettings, dtype, who: str,
              out_dir: Path) -> dict[str, Any]:
    device = engine.resolve_device()
    ids = data.encode_sources(data.sources(role, prefix))
    refs = data.references(role)
    metrics, predictions = evaluate_generation(bundle.model, bundle.tokenizer, ids, refs,
                                               settings, device, dtype, desc=f"eval {who}",
                                               progress=engine.progress)
    rows = "".join(f"{s}\t{p}\t{r}\n" for s, p, r in
                   zip(data.sources(role, prefix), predictions, refs, strict=True))
    write_file(out_dir / f"predictions_{who}.tsv",
               lambda fh: fh.write(("source\tprediction\treference\n" + rows).encode()))
    log.info("%s on %s: exact match %.4f, BLEU %.2f, chrF %.2f (%d examples, %.1fs)", who,
             role, metrics["exact_match"], metrics["bleu"], metrics["chrf"],
             metrics["examples"], metrics["seconds"])
    return metrics


def run_seq2seq(cfg: DictConfig, out_dir: Path, settings: EngineSettings,
                launch: dict[str, Any]) -> dict[str, Any]:
    """Executes one seq2seq distillation run; writes ``metrics.json`` (and the rest) into
    ``out_dir`` and returns the metrics."""
    _stage("build")
    built = _build(cfg, settings)
    data, loss, student = built["data"], built["loss"], built["student"]
    sbs = isinstance(loss, StepByStepLoss)
    prefix = loss.label_prefix if sbs else data.source_prefix
    stages: dict[str, Any] = {}
    if sbs:  # the teacher learns both tasks (gold labels, data rationales) when it trains
        if data.columns["rationale_column"] is None:
            raise ConfigError("loss=step_by_step needs rationales: set data.rationale_column")
        data.use_step_by_step(loss.label_prefix, loss.rationale_prefix, "target_column",
                              "rationale_column")
    _stage("teacher")
    teacher = prepare_seq2seq_teacher(built["teacher"], built["mode"], built["ft"], data,
                                      settings, prefix)
    stages["teacher"] = teacher.origin
    stages["teacher_path"] = getattr(teacher.model, "name_or_path", None) or None
    if sbs:
        _step_by_step(loss, data, teacher, settings, stages)
    elif getattr(loss, "sequence_kd", None) is not None:
        _sequence_kd(loss, data, teacher, settings, out_dir, stages)
    log.info("teacher: %s (%s params); student: %s (%s params); %d training pairs",
             teacher.name, f"{count_parameters(teacher.model):,}", student.name,
             f"{count_parameters(student.model):,}", data.num_parts("train"))

    writer = SummaryWriter(log_dir=str(out_dir / "tb"))
    try:
        distiller = Distiller(
            student=student.model, teacher=teacher.model if loss.needs_teacher else None,
            loss=loss, optimizer_factory=instantiate(cfg.trainer.optimizer),
            scheduler_factory=instantiate(cfg.trainer.scheduler), settings=settings,
            writer=writer)
        _stage("distil")
        loader = data.loader("train", settings.batch_size, shuffle=True, seed=settings.seed)
        result = distiller.fit(loader)
        _stage("evaluate")
        role = "test" if data.has_split("test") else "eval"
        gen = eval_settings(data, settings.eval_batch_size, data.eval_num_beams)
        frozen(teacher.model, distiller.device, distiller.teacher_dtype)
        t_metrics = _evaluate(teacher, data, role, prefix, gen, settings,
                              distiller.teacher_dtype, "teacher", out_dir)
        s_metrics = _evaluate(student, data, role, prefix, gen, settings,
                              distiller.autocast_dtype, "student", out_dir)
        for who, m in (("teacher", t_metrics), ("student", s_metrics)):
            writer.add_scalar(f"final/{who}/{data.metric}", m[data.metric], result.steps)
    finally:
        writer.close()
    headline = data.metric
    t_value = t_metrics[headline]
    metrics = {
        "task": "seq2seq", "metric": headline, "teacher": t_metrics, "student": s_metrics,
        "retention": s_metrics[headline] / t_value if t_value > 0 else None,
        "params": {"teacher": count_parameters(teacher.model),
                   "student": count_parameters(student.model)},
        "eval_split": data.split_names[role], "inference_prefix": prefix,
        "loss": type(loss).__name__, "stages": stages,
        "train": {"steps": result.steps, "epochs": result.epochs_completed,
                  "pairs": data.num_parts("train"), "examples": len(data.parts["train"]),
                  "seconds": round(result.train_seconds, 3), "last_losses": result.last_losses},
        "objective": {"name": f"final_{headline}", "value": s_metrics[headline]},
    }
    _stage("export")
    if cfg.get("export_student", True):
        write_pretrained(out_dir / "student", student.model, student.tokenizer)
        log.info("student exported to %s (load with AutoModelForSeq2SeqLM; generate with "
                 "model.generate, source prefix '%s')", out_dir / "student", prefix)
    write_metrics(out_dir, metrics)
    log.info("summary: %s teacher %.4f, student %.4f (retention %s) on %s [%d examples]",
             headline, t_value, s_metrics[headline],
             "-" if metrics["retention"] is None else f"{metrics['retention']:.4f}",
             metrics["eval_split"], s_metrics["examples"])
    log.info("run output: %s", out_dir)
    return metrics
