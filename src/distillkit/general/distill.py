"""The general stage's work: distil the student on unlabelled text once, cache, reuse.

The result is the student's encoder (``base_model``: embeddings and layers, no task head) in
``<cache>/general/<key>/encoder.safetensors`` with ``general.json`` (settings, steps, seconds,
last losses). The key hashes the teacher's weights, the student's initial weights (its config,
seed and embedding initialisation), the corpus's texts, the settings (terms, mapping,
steps, ...) and the precision: every later run, override and sweep job with the same key loads
the encoder instead of training again. Training runs on :class:`~distillkit.engine.Distiller`
with the stage's own loss (intermediate terms only) and leaves the global RNG states as it
found them, so a run that trains the stage and one that reads it from the cache distil alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from transformers import set_seed

from distillkit.engine import Distiller, EngineSettings
from distillkit.engine.resume import capture_rng, restore_rng
from distillkit.engine.schedules import warmup_schedule
from distillkit.errors import ConfigError
from distillkit.general.corpus import CorpusBatches, load_texts
from distillkit.general.embeddings import pca_embeddings
from distillkit.general.features import (
    CorpusFeatures,
    corpus_feature_rows,
    plan_corpus_features,
)
from distillkit.general.settings import GeneralSettings
from distillkit.models import ModelBundle, update_weights_digest
from distillkit.runtime.assets import cache_root
from distillkit.runtime.io import write_dir, write_json
from distillkit.runtime.locks import file_lock
from distillkit.teachers.setup import live_teacher, student_basis

log = logging.getLogger(__name__)
WEIGHTS = "encoder.safetensors"
INFO = "general.json"


@dataclass
class GeneralResult:
    """What the general stage did, for the run record (``metrics.json``'s ``general``)."""

    origin: str  # computed | cache
    key: str
    path: str
    embeddings: str  # pca (...) | copied | random (...)
    texts: int
    steps: int
    seconds: float  # the one-time cost (when it was computed)
    last_losses: dict[str, float]
    teacher_features: dict[str, Any] | None = None  # when the stage trained in this run

    def record(self) -> dict[str, Any]:
        """The record's ``general`` section."""
        return dataclasses.asdict(self)


def general_teacher(teacher: ModelBundle, which: str) -> ModelBundle:
    """The teacher the stage reads: as the teacher stage left it (``finetuned``) or as loaded
    (``pretrained``).

    Raises:
        ConfigError: a teacher without a model (``teacher=offline``).
    """
    basis = student_basis(teacher)
    if which == "pretrained" and basis.initial is not None:
        basis = basis.initial
    if basis.model is None:
        raise ConfigError(f"general distillation reads the teacher's layers, but teacher "
                          f"'{basis.name}' has no model (teacher=offline); use general=none")
    return basis


def _key(teacher: ModelBundle, student: torch.nn.Module, texts: list[str],
         settings: GeneralSettings, spec: dict[str, Any], precision: str,
         features: str) -> str:
    digest = hashlib.sha256()
    update_weights_digest(teacher.model, digest)
    update_weights_digest(student, digest)
    meta = {"student_config": student.config.to_dict(), "settings": settings.key_fields(),
            "spec": spec, "precision": precision, "texts": len(texts)}
    if features != "live":  # keys of stages trained before the feature cache stay valid
        meta["teacher_features"] = features
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def bound_loss(spec: dict[str, Any], teacher: ModelBundle, student: ModelBundle) -> Any:
    """The stage's loss (``general.loss``) bound to its layer mapping (``general.mapping``)
    between ``teacher`` and ``student`` (projections built now, from the current RNG)."""
    loss = instantiate(spec["loss"])
    pairs = instantiate(spec["mapping"])(teacher_layers=teacher.num_layers,
                                         student_layers=student.num_layers)
    loss.bind(pairs, student_width=int(student.model.config.hidden_size),
              teacher_width=teacher.hidden_size)
    return loss


def corpus_ids(teacher: ModelBundle, texts: list[str], settings: GeneralSettings
               ) -> list[list[int]]:
    """The corpus tokenised with the teacher's tokenizer (``general.max_length``)."""
    return teacher.tokenizer(texts, truncation=True, max_length=settings.max_length,
                             add_special_tokens=True)["input_ids"]


def general_distiller(teacher: ModelBundle | None, student: torch.nn.Module, loss: Any,
                      settings: GeneralSettings, engine: EngineSettings) -> Distiller:
    """The engine set up for the stage: AdamW, linear warm-up and decay over
    ``settings.steps``, the teacher run only up to the deepest layer the loss reads (None:
    the batches carry the teacher's cached features)."""
    loop = dataclasses.replace(engine, max_steps=settings.steps, batch_size=settings.batch_size,
                               grad_accum_steps=1, eval_every_steps=None, compile=False,
                               teacher_dropout=False)
    return Distiller(
        student=student, teacher=None if teacher is None else live_teacher(teacher, loss),
        loss=loss,
        optimizer_factory=partial(torch.optim.AdamW, lr=settings.lr,
                                  weight_decay=settings.weight_decay),
        scheduler_factory=partial(warmup_schedule, name="linear",
                                  warmup_ratio=settings.warmup_ratio),
        settings=loop)


def _train(teacher: ModelBundle, student: torch.nn.Module, ids: list[list[int]],
           settings: GeneralSettings, loss: Any, engine: EngineSettings,
           features: CorpusFeatures) -> tuple[float, dict]:
    pad_id = teacher.tokenizer.pad_token_id or 0
    rows = (corpus_feature_rows(features, teacher, loss, ids, pad_id, engine)
            if features.cached else None)
    log.info("general stage: %s", features.record.describe())
    batches = CorpusBatches(ids, settings.batch_size, pad_id, engine.seed, rows)
    distiller = general_distiller(None if features.cached else teacher, student, loss,
                                  settings, engine)
    log.info("general distillation: %d steps x %d texts (%.2f passes over %d texts), terms: %s",
             settings.steps, settings.batch_size, settings.steps / max(len(batches), 1),
             len(ids), loss.describe_layers())
    result = distiller.fit(batches, desc="general distillation")
    return result.train_seconds, result.last_losses


def general_distillation(teacher: ModelBundle, student: ModelBundle, settings: GeneralSettings,
                         spec: dict[str, Any], engine: EngineSettings,
                         feature_cache: tuple[str, float] = ("fp16", 0.0)) -> GeneralResult:
    """Gives ``student`` its general-distilled encoder: from the cache, or trained now (and
    cached for every later run).

    Args:
        teacher: the teacher as the teacher stage left it.
        student: the student as built (its random initialisation); changed in place.
        settings: the ``general`` section.
        spec: the section as a plain dict (its ``loss`` and ``mapping`` configs).
        engine: the run's loop settings (device, precision, seed, progress).
        feature_cache: ``trainer.feature_cache_dtype`` and ``trainer.feature_cache_max_gb``
            (the teacher's features over the corpus, :mod:`distillkit.general.features`).
    """
    source = general_teacher(teacher, settings.teacher)
    model = student.model
    engine = engine if settings.seed is None else dataclasses.replace(engine, seed=settings.seed)
    rng = capture_rng()
    try:
        set_seed(engine.seed)
        embeddings = (pca_embeddings(model, source.model) if settings.embeddings == "pca"
                      else "random")
        texts = load_texts(settings.corpus, settings.text_column, settings.max_texts)
        loss = bound_loss(spec, source, student) if settings.steps > 0 else None
        precision = str(engine.autocast_dtype(engine.resolve_device()) or "fp32")
        # a stage already cached with the features it would use now is read without
        # tokenising the corpus; otherwise the feature plan (budget, entry) decides the key
        intended = feature_cache[0] if feature_cache[1] > 0 and loss is not None else "live"
        key = _key(source, model, texts, settings, spec, precision, intended)
        ids: list[list[int]] = []
        features: CorpusFeatures | None = None
        if loss is not None and not (cache_root() / "general" / key / INFO).is_file():
            ids = corpus_ids(source, texts, settings)
            features = plan_corpus_features(source, loss, ids, settings.max_length, engine,
                                            *feature_cache)
            key = _key(source, model, texts, settings, spec, precision, features.key_part())
        path = cache_root() / "general" / key
        with file_lock(path.with_name(f"{key}.lock")):  # parallel sweep jobs: one trains
            origin = "cache" if (path / INFO).is_file() else "computed"
            if origin == "computed":
                if loss is not None and features is None:  # the entry vanished meanwhile
                    ids = corpus_ids(source, texts, settings)
                    features = plan_corpus_features(source, loss, ids, settings.max_length,
                                                    engine, *feature_cache)
                seconds, losses = (_train(source, model, ids, settings, loss, engine, features)
                                   if loss is not None else (0.0, {}))
                info = {"key": key, "teacher": source.name, "student": student.name,
                        "embeddings": embeddings, "texts": len(texts), "steps": settings.steps,
                        "seconds": round(seconds, 1), "last_losses": losses,
                        "settings": settings.key_fields()}
                state = {k: v.detach().cpu().contiguous()
                         for k, v in model.base_model.state_dict().items()}

                def save(tmp: Path) -> None:
                    save_file(state, str(tmp / WEIGHTS))
                    write_json(tmp / INFO, info)
                write_dir(path, save)
                log.info("general distillation done in %.0fs, cached at %s (key %s): later "
                         "runs and sweep jobs with this teacher, student and corpus reuse it",
                         seconds, path, key)
            info = json.loads((path / INFO).read_text())
        model.base_model.load_state_dict(load_file(str(path / WEIGHTS)))
        if origin == "cache":
            log.info("general-distilled student from cache %s (key %s; the one-time stage "
                     "took %.0fs for %d steps): skipped", path, key, info["seconds"],
                     info["steps"])
    finally:
        restore_rng(rng)
    return GeneralResult(origin=origin, key=key, path=str(path), embeddings=embeddings,
                         texts=len(texts), steps=int(info["steps"]),
                         seconds=float(info["seconds"]), last_losses=info["last_losses"],
                         teacher_features=(features.record.record() if origin == "computed"
                                           and features is not None else None))


def spec_of(section: Any) -> dict[str, Any]:
    """The ``general`` section as a plain dict (``{}`` for none)."""
    if section is None:
        return {}
    return OmegaConf.to_container(section, resolve=True)  # type: ignore[return-value]
