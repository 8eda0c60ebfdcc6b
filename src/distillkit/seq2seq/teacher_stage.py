"""The seq2seq teacher stage: train the teacher on the task once, cache, reuse.

A seq2seq teacher built from scratch (``teacher=t5_small_scratch``) or warm-started with new
cross-attention (``teacher=bert2bert_minilm``) is trained on the train split's parts (gold
targets; both step-by-step tasks when the run distils step by step) before it teaches. The
result is a ``save_pretrained`` directory under ``<cache>/teachers/<key>/``, where the key
hashes the initial weights, the vocabulary, every training pair, the lengths, the fine-tune
settings, the seed and the precision, as the classification teacher stage does
(:mod:`distillkit.teachers.finetune`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from functools import partial
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from distillkit.engine import EngineSettings
from distillkit.models import ModelBundle, update_weights_digest
from distillkit.seq2seq.data import Seq2SeqData
from distillkit.seq2seq.evaluate import evaluate_generation
from distillkit.seq2seq.generation import GenerationSettings
from distillkit.seq2seq.losses import TokenDistillationLoss
from distillkit.teachers.finetune import (
    FinetuneSettings,
    label_trainer,
    needs_training,
    save_trained_teacher,
    train_once,
)

log = logging.getLogger(__name__)


def cache_key(teacher: ModelBundle, data: Seq2SeqData, settings: FinetuneSettings, seed: int,
              precision: str) -> str:
    """Hash of everything that determines the trained teacher."""
    digest = hashlib.sha256()
    update_weights_digest(teacher.model, digest)
    fields = settings.key_fields()
    meta = {"vocab": sorted(teacher.tokenizer.get_vocab().items()), "settings": fields,
            "lengths": [data.max_source_length, data.max_target_length], "seed": seed,
            "precision": precision, "parts": data.parts["train"]}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def eval_settings(data: Seq2SeqData, batch_size: int, num_beams: int) -> GenerationSettings:
    """Generation settings of evaluation: ``max_target_length`` new tokens."""
    return GenerationSettings(num_beams=num_beams, n_best=1,
                              max_new_tokens=data.max_target_length, batch_size=batch_size)


def _train(model: torch.nn.Module, tokenizer, data: Seq2SeqData, settings: FinetuneSettings,
           engine: EngineSettings, inference_prefix: str) -> tuple[dict, float]:
    distiller, loop = label_trainer(model, TokenDistillationLoss(kd=None, alpha=0.0), settings,
                                    engine)
    train = data.loader("train", loop.batch_size, shuffle=True, seed=loop.seed)
    result = distiller.fit(train, desc="train teacher")
    ids = data.encode_sources(data.sources("eval", inference_prefix))
    metrics, _ = evaluate_generation(model, tokenizer, ids, data.references("eval"),
                                     eval_settings(data, loop.eval_batch_size, 1),
                                     distiller.device, distiller.autocast_dtype,
                                     desc="eval trained teacher")
    return metrics, result.train_seconds


def prepare_seq2seq_teacher(teacher: ModelBundle, mode: str | bool, settings: FinetuneSettings,
                            data: Seq2SeqData, engine: EngineSettings,
                            inference_prefix: str) -> ModelBundle:
    """Returns the teacher ready to teach: as given, from the cache, or trained now.

    Args:
        teacher: the teacher as built from its config.
        mode: ``auto`` (train unless it was trained on the task: from scratch and warm-started
            models are not), ``true`` or ``false``.
        settings: training settings (``teacher.finetune_settings``).
        data: the tokenised data; the teacher trains on its train parts.
        engine: the run's loop settings (device, precision, seed).
        inference_prefix: the source prefix evaluation uses (``predict: `` step by step).
    """
    if not needs_training(teacher, mode):
        if not teacher.trained_head:
            log.warning("teacher '%s' was not trained on the task and teacher.finetune=false: "
                        "what it generates is noise", teacher.name)
        return teacher
    path, key, origin = train_once(
        settings, engine, partial(cache_key, teacher, data, settings),
        partial(_load_or_train, teacher, settings=settings, data=data,
                inference_prefix=inference_prefix))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(path))
    tok = AutoTokenizer.from_pretrained(str(path))
    return ModelBundle(model=model, tokenizer=tok, name=f"{teacher.name} trained [{key}]",
                       trained_head=True, initial=teacher, origin=origin)


def _load_or_train(teacher: ModelBundle, path: Path, key: str, settings: FinetuneSettings,
                   data: Seq2SeqData, engine: EngineSettings, inference_prefix: str) -> str:
    if (path / "finetune.json").is_file():
        info = json.loads((path / "finetune.json").read_text())
        log.info("reusing trained seq2seq teacher from cache %s (key %s, eval exact match "
                 "%.4f)", path, key, info["eval"]["exact_match"])
        return "cache"
    log.info("training seq2seq teacher '%s' on %d pairs (%d epoch(s)); cache key %s",
             teacher.name, data.num_parts("train"), settings.epochs, key)
    model = copy.deepcopy(teacher.model)
    metrics, seconds = _train(model, teacher.tokenizer, data, settings, engine,
                              inference_prefix)
    log.info("trained teacher eval exact match %.4f, BLEU %.1f (%.0fs)",
             metrics["exact_match"], metrics["bleu"], seconds)

    save_trained_teacher(path, model, teacher.tokenizer, {
        "key": key, "teacher": teacher.name, "settings": dataclasses.asdict(settings),
        "train_pairs": data.num_parts("train"), "eval": metrics,
        "seconds": round(seconds, 1)})
    return "fine-tuned"
