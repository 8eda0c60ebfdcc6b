"""The top-level run: builds every object from the config, then executes the run graph.

Only this module calls ``hydra.utils.instantiate``; the engine receives built objects.

Run graph (each stage logs its start): build → teacher (fine-tune once, cached; per member
of an ensemble, :mod:`distillkit.teachers.setup`) → teacher outputs (logits once, cached) → distil
(checkpointed; resumable) → evaluate (:mod:`distillkit.reporting.metrics`) → export.

In a data-parallel run (``torchrun``, ``accelerate launch``, submitit tasks: see
:mod:`distillkit.runtime.distributed`) every rank runs this graph: rank 0 builds first (so the teacher
stage and the teacher logits are computed once, and the others read the caches), every rank
trains and evaluates its share of the data, and rank 0 alone writes into the run directory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from functools import partial
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from transformers import set_seed

from distillkit.engine import Distiller, EngineSettings, freeze_parameters
from distillkit.errors import ConfigError
from distillkit.models import EnsembleTeacher, ModelBundle, count_parameters
from distillkit.reporting import provenance
from distillkit.reporting.hparams import hparams_of, log_hparams
from distillkit.reporting.metrics import collect_metrics, evaluate_teacher, format_summary
from distillkit.runtime import distributed
from distillkit.runtime.checkpoint import (
    DIRNAME,
    CheckpointManager,
    check_resumable,
    find_checkpoint,
    flat_config,
    load_checkpoint,
)
from distillkit.runtime.io import write_file, write_json, write_metrics, write_pretrained
from distillkit.security.safety import OptIns, check_config, opt_ins
from distillkit.seq2seq.run import check_task, run_seq2seq
from distillkit.teachers.export import ExportRequest, export_teacher_logits
from distillkit.teachers.offline import OfflineTeacher, check_offline, match_offline_logits
from distillkit.teachers.outputs import attach_teacher_logits, teacher_evaluation
from distillkit.teachers.setup import (
    check_student,
    data_and_teacher,
    live_teacher,
    student_basis,
)

log = logging.getLogger(__name__)

# What the app returns to a Hydra sweeper (config key ``objective``; higher is better).
OBJECTIVES = {
    "final_accuracy": "student accuracy on the final split (test when the data has one)",
    "validation_accuracy": "student accuracy on the validation split after training",
}
# Test-only: SIGKILL the run right after this optimizer step (the resume test's crash).
KILL_AT_STEP_ENV = "DISTILLKIT_TEST_KILL_AT_STEP"


def engine_settings(trainer_cfg: DictConfig) -> EngineSettings:
    """The loop settings from the ``trainer`` group (optimizer and scheduler left out)."""
    names = {f.name for f in dataclasses.fields(EngineSettings)}
    values = OmegaConf.to_container(trainer_cfg, resolve=True)
    settings = EngineSettings(**{k: v for k, v in values.items() if k in names})
    settings.validate()
    return settings


def _teacher_eval_cached(cfg: DictConfig, teacher: ModelBundle, dist: Any) -> bool:
    """Whether the final evaluation reads the teacher's from its output cache: a single
    teacher model in one process, with ``trainer.teacher_cache`` on and no
    ``trainer.teacher_dropout`` (which bypasses the cache); an ensemble evaluates each member
    live, a data-parallel run every rank's shard."""
    return (teacher.model is not None and not isinstance(teacher, EnsembleTeacher)
            and not dist.enabled and bool(cfg.trainer.get("teacher_cache", True))
            and not cfg.trainer.get("teacher_dropout", False))


def _stage(name: str) -> None:
    log.info("== stage: %s", name)


def _student_and_pairs(cfg: DictConfig, teacher: ModelBundle, labels: list[str],
                       loss: Any, seed: int) -> tuple[ModelBundle, list]:
    """Builds the student, resolves the layer mapping and binds the loss to it."""
    set_seed(seed)  # the student (and any projection) starts alike in every run
    extra = {}
    if cfg.student.get("init") == "auto":  # a copied student: fine-tuned layers to distil,
        # pretrained ones for a loss that never reads the teacher (training alone)
        learns = bool(getattr(loss, "needs_teacher", True))
        extra["init"] = "finetuned" if learns else "pretrained"
    student: ModelBundle = instantiate(cfg.student, **extra)(teacher=student_basis(teacher),
                                                             labels=labels)
    check_student(teacher, student)
    pairs = instantiate(cfg.mapping)(teacher_layers=teacher.num_layers,
                                     student_layers=student.num_layers)
    bind = getattr(loss, "bind", None)
    if bind is not None:
        bind(pairs, student_width=int(student.model.config.hidden_size),
             teacher_width=teacher.hidden_size)
    elif pairs:
        raise ConfigError(f"loss {type(loss).__name__} takes no layer mapping; use mapping=none")
    return student, pairs


def build(cfg: DictConfig, settings: EngineSettings) -> dict[str, Any]:
    """Builds data and teacher, runs the teacher stage, then builds student, mapping and loss.

    Student, mapping and loss are checked against the teacher before the teacher stage, so a
    bad layer index or loss setting fails before any training. The data comes back tokenised
    with the teacher's tokenizer and, for logit-only losses with ``trainer.teacher_cache`` on,
    with the teacher's cached logits attached; with ``teacher=offline``, with the logits of
    its file (matched by row id; read before anything else runs).
    """
    set_seed(settings.seed)  # a fresh teacher head (and its cache key) is the same for every caller
    loss = instantiate(cfg.loss)
    offline: dict[str, Any] = {}

    def check(data: Any, teacher: ModelBundle) -> None:
        if isinstance(teacher, OfflineTeacher):
            check_offline(teacher, loss, cfg.mapping.get("_target_", ""))
            if loss.needs_teacher:
                offline.update(match_offline_logits(teacher, data))
        _student_and_pairs(cfg, teacher, data.labels, loss, settings.seed)

    data, teacher = data_and_teacher(cfg, settings, check)
    labels = data.labels
    student, pairs = _student_and_pairs(cfg, teacher, labels, loss, settings.seed)
    if data.has_split("transfer") and not loss.needs_teacher:
        log.info("transfer split ignored: this loss uses no teacher to label it")
        data.drop_transfer()
    cached_logits = bool(offline) or bool(cfg.trainer.get("teacher_cache", True)
                                          and loss.needs_teacher
                                          and loss.required_features() <= {"logits"})
    if cached_logits and not offline and settings.teacher_dropout:
        log.info("trainer.teacher_dropout=true: teacher outputs change every pass, the "
                 "teacher-output cache is bypassed")
        cached_logits = False
    logits_sources: dict[str, str] = {}
    if offline:
        for role, logits in offline.items():
            data.attach_teacher_logits(role, logits)
        logits_sources = dict.fromkeys(offline, "file")
    elif cached_logits:
        _stage("teacher outputs")
        logits_sources = attach_teacher_logits(teacher, data, settings)
    log.info("teacher: %s (%d layers, %s params)", teacher.name, teacher.num_layers,
             f"{count_parameters(teacher.model):,}" if teacher.model is not None else "no")
    if isinstance(teacher, EnsembleTeacher):
        log.info("ensemble: %s logits of %s; the layer mapping and intermediate terms read "
                 "member '%s'", teacher.combine, ", ".join(teacher.members), teacher.intermediate)
    log.info("student: %s (%d layers, %s params)", student.name, student.num_layers,
             f"{count_parameters(student.model):,}")
    log.info("labels: %s; layer mapping (student-teacher): %s", labels,
             ", ".join(f"{p.student}-{p.teacher}" for p in pairs) or "none")
    if hasattr(loss, "intermediate"):
        log.info("intermediate terms: %s", loss.intermediate.describe())
    return {"data": data, "teacher": teacher, "student": student, "pairs": pairs, "loss": loss,
            "cached_logits": cached_logits, "logits_sources": logits_sources}


def _checkpointing(cfg: DictConfig, out_dir: Path
                   ) -> tuple[CheckpointManager | None, dict | None, Path | None]:
    """The run's checkpoint manager and the state to resume from (``resume``), if any."""
    every = cfg.trainer.get("checkpoint_every_steps")
    keep = int(cfg.trainer.get("keep_checkpoints", 2))
    if every is not None and every < 1:
        raise ConfigError(f"trainer.checkpoint_every_steps must be >= 1 or null, got {every}")
    if keep < 1:
        raise ConfigError(f"trainer.keep_checkpoints must be >= 1, got {keep}")
    config = flat_config(OmegaConf.to_container(cfg, resolve=True))
    path = find_checkpoint(cfg.get("resume"), out_dir)
    state = None
    if path is not None:
        state = load_checkpoint(path)
        check_resumable(state.get("meta", {}), config, path)
        log.info("resuming from checkpoint %s (step %d)", path, state["step"])
    if every is None and path is None:
        return None, None, None
    manager = CheckpointManager(out_dir / DIRNAME, every, keep, meta={"config": config})
    return manager, state, path


def _kill_hook():
    """Test-only: SIGKILL after the step named by ``$DISTILLKIT_TEST_KILL_AT_STEP``."""
    at = os.environ.get(KILL_AT_STEP_ENV)
    if not at:
        return None

    def kill(step: int) -> None:
        if step == int(at):
            log.warning("%s=%s: killing the run with SIGKILL", KILL_AT_STEP_ENV, at)
            os.kill(os.getpid(), signal.SIGKILL)
    return kill


def run(cfg: DictConfig, out_dir: Path, launch: dict[str, Any] | None = None,
        opted: OptIns | None = None) -> dict[str, Any]:
    """Executes one distillation run and writes its output under ``out_dir``.

    Writes ``resolved_config.yaml``, ``provenance.json``, ``mapping.json``, ``tb/``
    (TensorBoard scalars and an HParams session), ``checkpoints/`` (when enabled),
    ``student/`` (``save_pretrained`` model + tokenizer) and, last, ``metrics.json``.

    Args:
        cfg: the composed run config.
        out_dir: the run directory.
        launch: how Hydra launched the run (``overrides``, ``choices``, ``mode``), recorded
            in ``provenance.json`` and the HParams session.
        opted: the command line's opt-ins (the CLI's, :mod:`distillkit.security.compose_guard`); None
            takes them from ``launch["overrides"]`` and the environment.

    Returns:
        The metrics dict (also written to ``metrics.json``); ``metrics["objective"]["value"]``
        is what a sweeper optimises.

    Raises:
        UnsafeConfigError: before anything is built or written, when the config names code
            outside the allow-list (:mod:`distillkit.security.safety`).
    """
    launch = launch or {}
    # the CLI checked the composed config already (distillkit.security.compose_guard); this covers a
    # config handed to run() directly, before anything is built or written
    check_config(cfg, opted if opted is not None else opt_ins(launch.get("overrides", ())))
    dist = distributed.current()
    objective = cfg.get("objective", "final_accuracy")
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective={objective} is not one of {', '.join(OBJECTIVES)}")
    export = ExportRequest.from_config(cfg)  # None for mode=distil
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = engine_settings(cfg.trainer)
    settings = dataclasses.replace(settings, device=dist.device_for(settings.device))
    if dist.is_main:
        resolved = OmegaConf.to_yaml(cfg, resolve=True)
        write_file(out_dir / "resolved_config.yaml", lambda fh: fh.write(resolved.encode()))
        write_json(out_dir / "provenance.json", provenance.collect(settings.seed, launch))
    if check_task(cfg, export is not None, dist.enabled) == "seq2seq":  # its own run graph
        return run_seq2seq(cfg, out_dir, settings, launch)
    if export is not None:  # mode=export_logits: teacher logits to a file, no distillation
        exported: dict[str, Any] = {}
        if dist.is_main:  # one teacher pass; the other ranks wait
            set_seed(settings.seed)
            _stage("build")
            data, teacher = data_and_teacher(cfg, settings, export.check)
            _stage("export teacher logits")
            exported = export_teacher_logits(teacher, data, export, settings, out_dir)
        dist.barrier()
        return exported
    dist.per_rank_batch(settings.batch_size)  # the global batch: divisible by the processes
    checkpoints, resume_state, resume_path = _checkpointing(cfg, out_dir)
    set_seed(settings.seed)

    _stage("build")
    with dist.main_first():  # teacher stage and teacher logits once: the others read caches
        built = build(cfg, settings)
    data, teacher, student = built["data"], built["teacher"], built["student"]
    if dist.is_main:
        write_json(out_dir / "mapping.json", {
            "pairs": [p.as_dict() for p in built["pairs"]],
            "plan": [{"term": n, "student": p.student, "teacher": p.teacher, "weight": w}
                     for n, p, w in getattr(getattr(built["loss"], "intermediate", None),
                                            "plan", [])]})
    # asynchronous host-to-GPU copies; with several processes, each rank's share of every batch
    loading = {"num_workers": settings.num_workers, "shard": dist.shard(),
               "pin_memory": settings.resolve_device().type == "cuda"}
    train_loader = data.loader("distil", settings.batch_size, shuffle=True, seed=settings.seed,
                               by_length=settings.group_by_length, **loading)
    eval_loader = data.loader("eval", settings.eval_batch_size, **loading)
    final_role = "test" if data.has_split("test") else "eval"
    log.info("final evaluation on split '%s' (%s)", data.split_names[final_role],
             "the test split" if final_role == "test" else "no test split: the eval split")
    final_loader = data.loader(final_role, settings.eval_batch_size, **loading)

    # a resumed run drops the events logged after its checkpoint, then logs them again
    writer = SummaryWriter(log_dir=str(out_dir / "tb"),
                           purge_step=resume_state["step"] + 1 if resume_state else None) \
        if dist.is_main else None
    if cfg.trainer.get("freeze"):
        freeze_parameters(student.model, list(cfg.trainer.freeze), "trainer.freeze")
    try:
        distiller = Distiller(
            student=student.model,
            # with cached logits in every batch the loop never needs the live teacher
            teacher=None if built["cached_logits"] else live_teacher(teacher, built["loss"]),
            loss=built["loss"],
            optimizer_factory=instantiate(cfg.trainer.optimizer),
            scheduler_factory=instantiate(cfg.trainer.scheduler),
            settings=settings,
            writer=writer,
            checkpoints=checkpoints,
            step_callback=_kill_hook(),
            dist=dist,
        )
        _stage("distil")
        result = distiller.fit(train_loader, eval_loader, resume=resume_state)

        _stage("evaluate")  # the teacher as it was distilled from: in its own precision
        # (offline: no teacher model, None; an ensemble: each member's metrics as well)
        # a fixed teacher's evaluation is cached with its logits (computed once, then read)
        cached = (partial(teacher_evaluation, teacher, data, final_role, settings)
                  if _teacher_eval_cached(cfg, teacher, dist) else None)
        teacher_metrics, member_metrics = evaluate_teacher(distiller, teacher, final_loader,
                                                           cached)
        student_metrics = distiller.evaluate(student.model, final_loader, desc="eval student")
        finals = {"teacher": teacher_metrics, "student": student_metrics,
                  **{f"teacher/{name}": m for name, m in member_metrics.items()}}
        for who, m in finals.items():
            if m is not None and writer is not None:
                writer.add_scalar(f"final/{who}/accuracy", m["accuracy"], result.steps)
        validation = None
        if objective == "validation_accuracy":
            validation = (student_metrics if final_role == "eval" else
                          distiller.evaluate(student.model, eval_loader, desc="eval student val"))

        metrics = collect_metrics(teacher, student, data, final_role, teacher_metrics,
                                  student_metrics, distiller, result, member_metrics)
        metrics["stages"] = {"teacher": ({n: m.origin for n, m in teacher.members.items()}
                                         if isinstance(teacher, EnsembleTeacher)
                                         else teacher.origin),
                             "teacher_logits": built["logits_sources"] or "not used"}
        if validation is not None:
            metrics["validation"] = {"split": data.split_names["eval"], "student": validation}
        value = validation["accuracy"] if validation is not None else student_metrics["accuracy"]
        metrics["objective"] = {"name": objective, "value": value}
        if resume_path is not None:
            metrics["resumed_from"] = {"checkpoint": str(resume_path),
                                       "step": int(resume_state["step"])}
        if dist.enabled:
            metrics["distributed"] = dist.summary(settings.batch_size)
        if writer is not None:
            log_hparams(writer, hparams_of(cfg, launch.get("overrides", ()),
                                           launch.get("choices")), metrics, result.steps)
    finally:
        if writer is not None:
            writer.close()

    if not dist.is_main:  # rank 0 exports and writes the metrics
        dist.barrier()
        return metrics
    _stage("export")
    if cfg.get("export_student", True):
        write_pretrained(out_dir / "student", student.model, student.tokenizer)
        log.info("student exported to %s", out_dir / "student")

    write_metrics(out_dir, metrics)
    log.info("summary\n%s", format_summary(metrics))
    log.info("run output: %s", out_dir)
    dist.barrier()  # every rank returns once the run's output is complete
    return metrics
