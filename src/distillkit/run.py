"""The top-level run: builds every object from the config, then executes the run graph.

Only this module calls ``hydra.utils.instantiate``; the engine receives built objects.

Run graph (each stage logs its start): build → teacher (fine-tune once, cached) → teacher
outputs (logits once, cached) → distil → evaluate → export.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from transformers import set_seed

from distillkit.engine import Distiller, EngineSettings
from distillkit.errors import ConfigError
from distillkit.io import write_dir, write_json
from distillkit.models import ModelBundle, check_compatible, count_parameters
from distillkit.teacher_outputs import attach_teacher_logits
from distillkit.teacher_stage import FinetuneSettings, prepare_teacher

log = logging.getLogger(__name__)


def engine_settings(trainer_cfg: DictConfig) -> EngineSettings:
    """The loop settings from the ``trainer`` group (optimizer and scheduler left out)."""
    names = {f.name for f in dataclasses.fields(EngineSettings)}
    values = OmegaConf.to_container(trainer_cfg, resolve=True)
    settings = EngineSettings(**{k: v for k, v in values.items() if k in names})
    settings.validate()
    return settings


def _stage(name: str) -> None:
    log.info("== stage: %s", name)


def _format_summary(metrics: dict[str, Any]) -> str:
    t, s = metrics["teacher"], metrics["student"]
    rows = [
        ("", "teacher", "student"),
        ("accuracy", f"{t['accuracy']:.4f}", f"{s['accuracy']:.4f}"),
        ("loss", f"{t['loss']:.4f}", f"{s['loss']:.4f}"),
        ("parameters", f"{metrics['params']['teacher']:,}", f"{metrics['params']['student']:,}"),
        ("inference s", f"{t['seconds']:.1f}", f"{s['seconds']:.1f}"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append(f"retention (student/teacher accuracy): {metrics['retention']:.4f}"
                 f"  [{metrics['eval_split']} split, {t['examples']} examples]")
    inf = metrics["inference"]
    lines.append(f"inference speed-up on the same batches ({inf['device']}): "
                 f"{inf['speedup']:.2f}x")
    return "\n".join(lines)


def _student_and_pairs(cfg: DictConfig, teacher: ModelBundle, labels: list[str],
                       loss: Any, seed: int) -> tuple[ModelBundle, list]:
    """Builds the student, resolves the layer mapping and binds the loss to it."""
    set_seed(seed)  # the student (and any projection) starts alike in every run
    student: ModelBundle = instantiate(cfg.student)(teacher=teacher, labels=labels)
    check_compatible(teacher, student)
    pairs = instantiate(cfg.mapping)(teacher_layers=teacher.num_layers,
                                     student_layers=student.num_layers)
    bind = getattr(loss, "bind", None)
    if bind is not None:
        bind(pairs, student_width=int(student.model.config.hidden_size),
             teacher_width=int(teacher.model.config.hidden_size))
    elif pairs:
        raise ConfigError(f"loss {type(loss).__name__} takes no layer mapping; use mapping=none")
    return student, pairs


def build(cfg: DictConfig, settings: EngineSettings) -> dict[str, Any]:
    """Builds data and teacher, runs the teacher stage, then builds student, mapping and loss.

    Student, mapping and loss are checked against the teacher before the teacher stage, so a
    bad layer index or loss setting fails before any training. The data comes back tokenised
    with the teacher's tokenizer and, for logit-only losses with ``trainer.teacher_cache`` on,
    with the teacher's cached logits attached.
    """
    data = instantiate(cfg.data)
    labels = data.labels
    teacher_cfg = OmegaConf.to_container(cfg.teacher, resolve=True)
    mode = teacher_cfg.pop("finetune", "auto")
    ft_settings = FinetuneSettings.from_config(teacher_cfg.pop("finetune_settings", None))
    teacher: ModelBundle = instantiate(teacher_cfg)(labels=labels)
    loss = instantiate(cfg.loss)
    _student_and_pairs(cfg, teacher, labels, loss, settings.seed)  # fail fast, before training
    data.tokenize(teacher.tokenizer)
    _stage("teacher")
    teacher = prepare_teacher(teacher, mode, ft_settings, data, settings)
    student, pairs = _student_and_pairs(cfg, teacher, labels, loss, settings.seed)
    if data.has_split("transfer") and not loss.needs_teacher:
        log.info("transfer split ignored: this loss uses no teacher to label it")
        data.drop_transfer()
    cached_logits = bool(cfg.trainer.get("teacher_cache", True) and loss.needs_teacher
                         and loss.required_features() <= {"logits"})
    if cached_logits:
        _stage("teacher outputs")
        attach_teacher_logits(teacher, data, settings)
    log.info("teacher: %s (%d layers, %s params)", teacher.name, teacher.num_layers,
             f"{count_parameters(teacher.model):,}")
    log.info("student: %s (%d layers, %s params)", student.name, student.num_layers,
             f"{count_parameters(student.model):,}")
    log.info("labels: %s; layer mapping (student-teacher): %s", labels,
             ", ".join(f"{p.student}-{p.teacher}" for p in pairs) or "none")
    if hasattr(loss, "intermediate"):
        log.info("intermediate terms: %s", loss.intermediate.describe())
    return {"data": data, "teacher": teacher, "student": student, "pairs": pairs, "loss": loss,
            "cached_logits": cached_logits}


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Executes one distillation run and writes its output under ``out_dir``.

    Writes ``resolved_config.yaml``, ``mapping.json``, ``tb/`` (TensorBoard), ``student/``
    (``save_pretrained`` model + tokenizer) and, last, ``metrics.json``.

    Returns:
        The metrics dict (also written to ``metrics.json``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    settings = engine_settings(cfg.trainer)
    set_seed(settings.seed)

    _stage("build")
    built = build(cfg, settings)
    data, teacher, student = built["data"], built["teacher"], built["student"]
    write_json(out_dir / "mapping.json", {
        "pairs": [p.as_dict() for p in built["pairs"]],
        "plan": [{"term": n, "student": p.student, "teacher": p.teacher, "weight": w}
                 for n, p, w in getattr(getattr(built["loss"], "intermediate", None), "plan",
                                        [])]})
    train_loader = data.loader("distil", settings.batch_size, shuffle=True, seed=settings.seed,
                               num_workers=settings.num_workers,
                               by_length=settings.group_by_length)
    eval_loader = data.loader("eval", settings.eval_batch_size,
                              num_workers=settings.num_workers)
    final_role = "test" if data.has_split("test") else "eval"
    final_loader = data.loader(final_role, settings.eval_batch_size,
                               num_workers=settings.num_workers)

    writer = SummaryWriter(log_dir=str(out_dir / "tb"))
    try:
        distiller = Distiller(
            student=student.model,
            # with cached logits in every batch the loop never needs the live teacher
            teacher=None if built["cached_logits"] else teacher.model,
            loss=built["loss"],
            optimizer_factory=instantiate(cfg.trainer.optimizer),
            scheduler_factory=instantiate(cfg.trainer.scheduler),
            settings=settings,
            writer=writer,
        )
        _stage("distil")
        result = distiller.fit(train_loader, eval_loader)

        _stage("evaluate")
        teacher_metrics = distiller.evaluate(teacher.model, final_loader, desc="eval teacher")
        student_metrics = distiller.evaluate(student.model, final_loader, desc="eval student")
        for who, m in (("teacher", teacher_metrics), ("student", student_metrics)):
            writer.add_scalar(f"final/{who}/accuracy", m["accuracy"], result.steps)
    finally:
        writer.close()

    _stage("export")
    if cfg.get("export_student", True):
        def save(tmp: Path) -> None:
            student.model.save_pretrained(tmp)
            student.tokenizer.save_pretrained(tmp)
        write_dir(out_dir / "student", save)
        log.info("student exported to %s", out_dir / "student")

    t_acc = teacher_metrics["accuracy"]
    metrics = {
        "teacher": teacher_metrics,
        "student": student_metrics,
        "retention": student_metrics["accuracy"] / t_acc if t_acc > 0 else float("nan"),
        "params": {"teacher": count_parameters(teacher.model),
                   "student": count_parameters(student.model)},
        "eval_split": data.split_names[final_role],
        "inference": {
            "device": str(distiller.device),
            "teacher_seconds": round(teacher_metrics["seconds"], 3),
            "student_seconds": round(student_metrics["seconds"], 3),
            "speedup": teacher_metrics["seconds"] / max(student_metrics["seconds"], 1e-9),
        },
        "train": {"steps": result.steps, "epochs": result.epochs_completed,
                  "seconds": round(result.train_seconds, 3), "last_losses": result.last_losses,
                  "evals": result.evals},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(out_dir / "metrics.json", metrics)
    log.info("summary\n%s", _format_summary(metrics))
    log.info("run output: %s", out_dir)
    return metrics
