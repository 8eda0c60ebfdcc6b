"""The run graph's teacher stage: fine-tune the teacher on the task once, cache, reuse.

A teacher whose classification head was not trained on the task (a plain encoder such as
all-MiniLM-L6-v2, or a random tiny model) is fine-tuned on the train split with hard labels
before distillation. The result is a normal ``save_pretrained`` directory under
``<cache>/teachers/<key>/``, where the key hashes the teacher's initial weights and vocabulary,
the training data (texts and labels), the label list, ``max_length``, the fine-tune settings
and the seed: every later run, override and sweep job with the same key loads it instead of
training again.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from distillkit.data import TextClassificationData
from distillkit.engine import Distiller, EngineSettings, freeze_parameters
from distillkit.engine.schedules import warmup_schedule
from distillkit.engine.settings import PRECISIONS
from distillkit.errors import ConfigError, known_keys
from distillkit.losses import DistillationLoss
from distillkit.models import ModelBundle, pretrained_classifier, update_weights_digest
from distillkit.runtime.assets import cache_root
from distillkit.runtime.io import write_dir, write_json
from distillkit.runtime.locks import file_lock
from distillkit.teachers.meta import DOMAIN_CHOICES, WEIGHT_CHOICES, stage_inputs, training_role

log = logging.getLogger(__name__)
MODES = ("auto", True, False)


@dataclass
class FinetuneSettings:
    """How the teacher stage trains the teacher (``teacher.finetune_settings``).

    Attributes:
        epochs: passes over the train split.
        batch_size: examples per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: linear warm-up fraction of the steps, then linear decay.
        precision: compute precision of the fine-tune (``fp32``, ``bf16``, ``fp16``);
            ``auto`` follows ``trainer.precision``. Set it to compare students trained in
            different precisions against one and the same teacher.
        domains: ``target`` trains on the run's train split; ``all`` on the train split of
            every domain when ``data.domain`` picks a target domain (a Meta-KD meta-teacher).
        sample_weights: ``none``, or ``prototype``: each example weighted by its prototype
            score (:mod:`distillkit.teachers.meta`; needs ``data.domain_column``).
        prototype_alpha: weight of the example's own domain in its prototype score.
        domain_loss_weight: weight of Meta-KD's domain-corruption term
            (:class:`~distillkit.losses.MetaTeacherLoss`); 0: none.
        seed: the teacher's own seed (a new head's initialisation, the fine-tune's data
            order and dropout); ``None``: ``trainer.seed``. Set it to train students of
            several seeds (``trainer.seed``) against one and the same teacher.
        freeze: parameter-name patterns (:func:`distillkit.engine.freeze_parameters`) kept
            at their pretrained values: no gradient, no optimizer state, and no backward pass
            below the lowest trained layer. Empty: every parameter trains.
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    precision: str = "auto"
    domains: str = "target"
    sample_weights: str = "none"
    prototype_alpha: float = 0.5
    domain_loss_weight: float = 0.0
    seed: int | None = None
    freeze: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def from_config(cls, values: dict | None, where: str = "teacher") -> FinetuneSettings:
        """Builds the settings, refusing unknown keys with a message naming them (``where``:
        the config section, ``teacher`` or ``teacher.members.<name>``)."""
        settings = cls(**known_keys(cls, values, f"{where}.finetune_settings"))
        for key, allowed in (("domains", DOMAIN_CHOICES), ("sample_weights", WEIGHT_CHOICES)):
            if getattr(settings, key) not in allowed:
                raise ConfigError(f"{where}.finetune_settings.{key}={getattr(settings, key)!r} "
                                  f"is not one of {', '.join(allowed)}")
        if settings.seed is not None and (isinstance(settings.seed, bool)
                                          or not isinstance(settings.seed, int)):
            raise ConfigError(f"{where}.finetune_settings.seed must be an integer or null "
                              f"(null: trainer.seed), got {settings.seed!r}")
        if isinstance(settings.freeze, str) or not isinstance(settings.freeze, Sequence) \
                or not all(isinstance(p, str) and p for p in settings.freeze):
            raise ConfigError(f"{where}.finetune_settings.freeze must be a list of parameter-name "
                              f"patterns (e.g. ['*.embeddings.*']), got {settings.freeze!r}")
        settings.freeze = list(settings.freeze)
        if not settings.domain_loss_weight >= 0:
            raise ConfigError(f"{where}.finetune_settings.domain_loss_weight must be >= 0, got "
                              f"{settings.domain_loss_weight}")
        return settings

    def engine(self, engine: EngineSettings) -> EngineSettings:
        """The run's loop settings with the teacher's seed (when it has its own)."""
        return engine if self.seed is None else dataclasses.replace(engine, seed=self.seed)

    def meta(self) -> bool:
        """Whether any Meta-KD setting is on (they then enter the cache key)."""
        return (self.domains, self.sample_weights, self.domain_loss_weight) != \
            ("target", "none", 0.0)

    def key_fields(self) -> dict[str, Any]:
        """The settings that enter a teacher cache key: all but ``precision`` (keyed by the
        dtype it resolved to), and the Meta-KD ones only when on (plain keys stay as they
        were before those settings existed)."""
        fields = dataclasses.asdict(self)
        fields.pop("precision")
        fields.pop("seed")  # the resolved seed enters the key on its own
        if not self.freeze:  # keys of fully trained teachers stay as they were
            fields.pop("freeze")
        if not self.meta():
            for key in ("domains", "sample_weights", "prototype_alpha", "domain_loss_weight"):
                fields.pop(key)
        return fields


def stage_settings(spec: dict[str, Any], where: str = "teacher"
                   ) -> tuple[str | bool, FinetuneSettings]:
    """Pops ``finetune`` and ``finetune_settings`` off a teacher config (the rest builds the
    teacher) and checks them: the one place a fine-tune mode is validated, for every task.

    Args:
        spec: the teacher's config as a dict (changed in place).
        where: the config path named in errors (``teacher``, ``teacher.members.<name>``).
    """
    mode = spec.pop("finetune", "auto")
    if mode not in MODES:
        raise ConfigError(f"{where}.finetune={mode!r} must be auto, true or false")
    return mode, FinetuneSettings.from_config(spec.pop("finetune_settings", None), where)


def plain_stage_settings(spec: dict[str, Any]) -> tuple[str | bool, FinetuneSettings]:
    """:func:`stage_settings` for a task whose teacher stage has no Meta-KD (seq2seq, causal
    LM): a Meta-KD setting is refused with one line."""
    mode, settings = stage_settings(spec)
    if settings.meta():
        raise ConfigError("teacher.finetune_settings domains/sample_weights/domain_loss_weight "
                          "(Meta-KD) apply to task=classification only; remove them")
    return mode, settings


def cache_key(teacher: ModelBundle, data: TextClassificationData, settings: FinetuneSettings,
              seed: int, precision: str = "fp32") -> str:
    """Hash of everything that determines the fine-tuned teacher.

    ``precision`` is the autocast dtype the fine-tune ran under (``fp32`` when none).
    """
    digest = hashlib.sha256()
    update_weights_digest(teacher.model, digest)
    role = training_role(data, settings)
    raw = data.raw[role]
    fields = settings.key_fields()
    if settings.meta():  # the split and its domains
        fields["split"] = role
        fields["row_domains"] = data.domains(role) if data.domain_column else None
    meta = {"vocab": sorted(teacher.tokenizer.get_vocab().items()), "labels": data.labels,
            "max_length": data.max_length, "settings": fields,
            "seed": seed, "precision": precision}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for column in sorted(raw.column_names):  # every value: a Column's repr shows only 5 rows
        digest.update(column.encode())
        digest.update(json.dumps(list(raw[column])).encode())
    return digest.hexdigest()[:20]


def _precision(settings: FinetuneSettings, engine: EngineSettings) -> str:
    """The fine-tune's ``trainer.precision``: its own, or the run's for ``auto``."""
    if settings.precision == "auto":
        return engine.precision
    if settings.precision not in PRECISIONS:
        raise ConfigError(f"teacher.finetune_settings.precision='{settings.precision}' is not "
                          f"one of {', '.join(PRECISIONS)}")
    return settings.precision


def label_trainer(model: torch.nn.Module, loss: torch.nn.Module, settings: FinetuneSettings,
                  engine: EngineSettings) -> tuple[Distiller, EngineSettings]:
    """The engine set up to train ``model`` on labels alone with ``settings`` (AdamW, linear
    warm-up, by epochs, the run's device and seed): the loop of every teacher stage.

    Returns:
        The distiller (no teacher; ``loss`` reads the labels only) and its loop settings.
    """
    loop = dataclasses.replace(engine, epochs=settings.epochs, max_steps=None,
                               batch_size=settings.batch_size, eval_every_steps=None,
                               precision=_precision(settings, engine), compile=False)
    set_seed(loop.seed)
    distiller = Distiller(
        student=model, teacher=None, loss=loss,
        optimizer_factory=partial(torch.optim.AdamW, lr=settings.lr,
                                  weight_decay=settings.weight_decay),
        scheduler_factory=partial(warmup_schedule, name="linear",
                                  warmup_ratio=settings.warmup_ratio),
        settings=loop,
    )
    return distiller, loop


def _finetune(teacher: ModelBundle, model: torch.nn.Module, data: TextClassificationData,
              settings: FinetuneSettings, engine: EngineSettings,
              info: dict[str, Any]) -> tuple[dict, float]:
    role, loss, columns = "train", DistillationLoss(kd=None, alpha=0.0), {}
    if settings.meta():  # a Meta-KD meta-teacher: its split, loss and sample weights
        role, loss, columns, meta = stage_inputs(teacher, data, settings, engine)
        info["meta"] = meta
    distiller, loop = label_trainer(model, loss, settings, engine)
    if settings.freeze:
        frozen_count = freeze_parameters(model, settings.freeze, "teacher.finetune_settings.freeze")
        info["frozen_parameters"] = frozen_count
    train = data.loader(role, loop.batch_size, shuffle=True, seed=loop.seed,
                        num_workers=loop.num_workers, by_length=loop.group_by_length,
                        columns=columns)
    result = distiller.fit(train, desc="fine-tune teacher")
    metrics = distiller.evaluate(model, data.loader("eval", loop.eval_batch_size),
                                 desc="eval fine-tuned teacher")
    return metrics, result.train_seconds


def _load_or_finetune(teacher: ModelBundle, path: Path, key: str, settings: FinetuneSettings,
                      data: TextClassificationData, engine: EngineSettings) -> str:
    """Fine-tunes the teacher into ``path`` unless cached; returns ``fine-tuned`` or ``cache``."""
    if (path / "finetune.json").is_file():
        info = json.loads((path / "finetune.json").read_text())
        log.info("reusing fine-tuned teacher from cache %s (key %s, eval accuracy %.4f)",
                 path, key, info["eval"]["accuracy"])
        return "cache"
    role = training_role(data, settings)
    log.info("fine-tuning teacher '%s' on %d examples of '%s' (%d epoch(s)); cache key %s",
             teacher.name, len(data.raw[role]), role, settings.epochs, key)
    model = copy.deepcopy(teacher.model)  # the pretrained weights stay for the student
    info: dict[str, Any] = {}
    metrics, seconds = _finetune(teacher, model, data, settings, engine, info)
    log.info("fine-tuned teacher eval accuracy %.4f (%.0fs)", metrics["accuracy"], seconds)

    save_trained_teacher(path, model, teacher.tokenizer, {
        "key": key, "teacher": teacher.name, "settings": dataclasses.asdict(settings),
        "train_examples": len(data.raw[role]), "eval": metrics,
        "seconds": round(seconds, 1), **info})
    return "fine-tuned"


def save_trained_teacher(path: Path, model: torch.nn.Module, tokenizer: Any,
                         info: dict[str, Any]) -> None:
    """Writes a teacher stage's result into its cache directory, atomically: the model and
    tokenizer (a ``save_pretrained`` directory) and ``finetune.json`` (``info``)."""
    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "finetune.json", info)
    write_dir(path, save)


def needs_training(teacher: ModelBundle, mode: str | bool) -> bool:
    """Whether the teacher stage trains ``teacher``: ``teacher.finetune=true``, or ``auto``
    and a teacher not trained on the task."""
    return mode is True or (mode == "auto" and not teacher.trained_head)


def train_once(settings: FinetuneSettings, engine: EngineSettings,
               key_of: Callable[[int, str], str],
               train: Callable[..., str]) -> tuple[Path, str, str]:
    """The teacher stage's cache for every task: the key from the teacher's seed and
    precision (``key_of(seed, precision)``), and ``train(path, key, engine=...)`` (which loads
    or trains, returning the origin) run under the key's lock, so parallel sweep jobs train
    once.

    Returns:
        The cached teacher's directory, its key and the origin (``cache`` or trained now).
    """
    engine = settings.engine(engine)
    tuned = dataclasses.replace(engine, precision=_precision(settings, engine))
    dtype = tuned.autocast_dtype(tuned.resolve_device())
    key = key_of(engine.seed, str(dtype or "fp32"))
    path = cache_root() / "teachers" / key
    with file_lock(path.with_name(f"{key}.lock")):  # parallel sweep jobs: one trains
        origin = train(path, key, engine=engine)
    return path, key, origin


def prepare_teacher(teacher: ModelBundle, mode: str | bool, settings: FinetuneSettings,
                    data: TextClassificationData, engine: EngineSettings) -> ModelBundle:
    """Returns a teacher ready to distil from: as given, from the cache, or fine-tuned now.

    A teacher without a model (``teacher=offline``: logits from a file) is returned as given.

    Args:
        teacher: the teacher as built from its config.
        mode: ``auto`` (fine-tune when the head is untrained), ``true`` or ``false``
            (checked by :func:`stage_settings`).
        settings: fine-tune settings.
        data: the task data, already tokenised with the teacher's tokenizer.
        engine: the run's loop settings (device, precision, seed, progress).
    """
    if teacher.model is None:
        log.info("teacher stage skipped: %s has no model to fine-tune", teacher.name)
        return teacher
    needed = needs_training(teacher, mode)
    if not needed and settings.meta():
        log.warning("teacher.finetune_settings (domains, sample_weights, domain_loss_weight) "
                    "are not used: teacher '%s' is not trained by the teacher stage (set "
                    "teacher.finetune=true to train it as a meta-teacher)", teacher.name)
    if not needed:
        if not teacher.trained_head:
            log.warning("teacher '%s' has an untrained head and teacher.finetune=false: "
                        "its soft labels are noise", teacher.name)
        return teacher
    path, key, origin = train_once(
        settings, engine, partial(cache_key, teacher, data, settings),
        partial(_load_or_finetune, teacher, settings=settings, data=data))
    cached = pretrained_classifier(str(path), labels=data.labels)
    cached.name = f"{teacher.name} fine-tuned [{key}]"
    cached.initial = teacher
    cached.origin = origin
    return cached
