"""The causal-LM teacher stage: fine-tune the teacher on the task's training responses once,
cache, reuse.

A pretrained causal LM is a language model already, so ``teacher.finetune=auto`` (the
default) uses it as given. ``teacher.finetune=true`` first trains it with cross-entropy on the
train split's learnt tokens (the response tokens where there is a prompt: the labels the
student's cross-entropy term reads), with ``teacher.finetune_settings`` (epochs, batch size,
learning rate, warm-up, precision, seed, frozen parameters). A teacher that does not know the
task's domain otherwise pulls the student away from it: a student trained with
cross-entropy alone can end below such a teacher's perplexity.

The result is a ``save_pretrained`` directory under ``<cache>/teachers/<key>/``, where the key
hashes the teacher's initial weights and vocabulary, the training split's tokens and labels,
``max_length``, the fine-tune settings, the seed and the precision, as the other tasks' teacher
stages do (:mod:`distillkit.teachers.finetune`): every later run and sweep job with the same
key loads it. Its outputs then get their own cache entries (top-k targets, generations), since
those are keyed by the teacher's weights.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import torch

from distillkit.causal.data import CausalLMData
from distillkit.causal.evaluate import score_models
from distillkit.causal.lean import LeanCausalLM
from distillkit.causal.losses import causal_kd
from distillkit.causal.models import CausalBundle, hub_causal_lm
from distillkit.engine import EngineSettings, freeze_parameters
from distillkit.models import update_weights_digest
from distillkit.teachers.finetune import (
    FinetuneSettings,
    label_trainer,
    save_trained_teacher,
    train_once,
)

log = logging.getLogger(__name__)


def cache_key(teacher: CausalBundle, data: CausalLMData, settings: FinetuneSettings, seed: int,
              precision: str) -> str:
    """Hash of everything that determines the fine-tuned teacher."""
    digest = hashlib.sha256()
    update_weights_digest(teacher.model, digest)
    meta = {"task": "causal_lm", "vocab": sorted(teacher.tokenizer.get_vocab().items()),
            "settings": settings.key_fields(), "max_length": data.max_length, "seed": seed,
            "precision": precision, "train": data.fingerprint("train")}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def _train(model: torch.nn.Module, data: CausalLMData, settings: FinetuneSettings,
           engine: EngineSettings, vocab_size: int) -> tuple[dict[str, Any], float, int]:
    """Cross-entropy on the train split's labels; returns the eval split's scores after it,
    the training seconds and the number of frozen parameter values."""
    loss = causal_kd(alpha=0.0, vocab_size=vocab_size)  # cross-entropy alone: no teacher
    distiller, loop = label_trainer(LeanCausalLM(model), loss, settings, engine)
    frozen_count = 0
    if settings.freeze:
        frozen_count = freeze_parameters(model, settings.freeze,
                                         "teacher.finetune_settings.freeze")
    train = data.loader("train", loop.batch_size, shuffle=True, seed=loop.seed)
    result = distiller.fit(train, desc="fine-tune teacher")
    scores = score_models(model, None, list(data.loader("eval", loop.eval_batch_size)),
                          device=distiller.device, vocab_size=vocab_size,
                          student_dtype=distiller.autocast_dtype)["student"]
    return scores, result.train_seconds, frozen_count


def _load_or_train(teacher: CausalBundle, path: Path, key: str, settings: FinetuneSettings,
                   data: CausalLMData, engine: EngineSettings, vocab_size: int) -> str:
    """Fine-tunes the teacher into ``path`` unless cached; returns ``fine-tuned`` or ``cache``."""
    if (path / "finetune.json").is_file():
        info = json.loads((path / "finetune.json").read_text())
        log.info("reusing fine-tuned causal teacher from cache %s (key %s, eval perplexity "
                 "%.3f)", path, key, info["eval"]["perplexity"])
        return "cache"
    log.info("fine-tuning causal teacher '%s' on %d examples (%d learnt tokens) of 'train', "
             "%d epoch(s); cache key %s", teacher.name, len(data.encoded["train"]),
             data.num_tokens("train"), settings.epochs, key)
    device = engine.resolve_device()
    model = copy.deepcopy(teacher.model).to(device)  # the given weights stay as they are
    before = score_models(model, None, list(data.loader("eval", engine.eval_batch_size)),
                          device=device, vocab_size=vocab_size)["student"]
    scores, seconds, frozen_count = _train(model, data, settings, engine, vocab_size)
    log.info("fine-tuned teacher: eval perplexity %.3f (as given: %.3f), %.0fs",
             scores["perplexity"], before["perplexity"], seconds)
    info = {"key": key, "teacher": teacher.name, "task": "causal_lm",
            "settings": dataclasses.asdict(settings), "train_examples": len(data.encoded["train"]),
            "train_tokens": data.num_tokens("train"), "eval": scores,
            "eval_as_given": before, "seconds": round(seconds, 1)}
    if frozen_count:
        info["frozen_parameters"] = frozen_count
    save_trained_teacher(path, model, teacher.tokenizer, info)
    return "fine-tuned"


def prepare_causal_teacher(teacher: CausalBundle, mode: str | bool, settings: FinetuneSettings,
                           data: CausalLMData, engine: EngineSettings,
                           vocab_size: int) -> tuple[CausalBundle, dict[str, Any] | None]:
    """The teacher ready to distil from: as given (``teacher.finetune`` ``auto`` or
    ``false``), or fine-tuned on the train split (``true``), from the cache or now.

    Args:
        teacher: the teacher as built from its config.
        mode: ``auto``, ``true`` or ``false`` (checked by
            :func:`~distillkit.teachers.finetune.stage_settings`).
        settings: ``teacher.finetune_settings``.
        data: the tokenised data (the teacher trains on its train split).
        engine: the run's loop settings (device, precision, seed, progress).
        vocab_size: the shared vocabulary size (rows beyond it are padding).

    Returns:
        The teacher bundle (``origin``: ``as given``, ``fine-tuned`` or ``cache``) and, when
        fine-tuned, its ``finetune.json`` record (key, settings, eval perplexity before and
        after, seconds).
    """
    if mode is not True or teacher.model is None:
        return teacher, None
    path, key, origin = train_once(
        settings, engine, partial(cache_key, teacher, data, settings),
        partial(_load_or_train, teacher, settings=settings, data=data, vocab_size=vocab_size))
    tuned = hub_causal_lm(str(path), role="teacher")
    tuned.name, tuned.origin = f"{teacher.name} fine-tuned [{key}]", origin
    info = json.loads((path / "finetune.json").read_text())
    return tuned, {"origin": origin, "path": str(path), **info}
