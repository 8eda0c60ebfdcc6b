"""Teacher generation as a cached run-graph stage, and the seq-KD parallel files.

The teacher decodes a split's sources (beam search: ``num_beams``, ``n_best`` outputs per
source, ``max_new_tokens``, ``batch_size``) once; the outputs and their scores are cached as
``<cache>/generations/<key>.json``, where the key hashes the teacher's weights, the sources'
token ids, the generation settings (those that change the outputs) and the teacher's
precision, under the same inter-process lock as the other teacher caches
(:mod:`distillkit.runtime.locks`). :func:`write_parallel` writes what sequence-level KD trains on as
plain text: ``train.src`` / ``train.tgt`` (one pair per line, nothing else) and
``train.scores`` (the teacher's length-normalised log-probability of each line).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from distillkit.errors import ConfigError, known_keys
from distillkit.models import ModelBundle, update_weights_digest
from distillkit.runtime.assets import cache_root
from distillkit.runtime.io import write_file, write_json
from distillkit.runtime.locks import file_lock

log = logging.getLogger(__name__)


@dataclass
class GenerationSettings:
    """How the teacher decodes (``loss.sequence_kd``; ``evaluation`` for the final metrics).

    Attributes:
        num_beams: beam size (1: greedy).
        n_best: outputs kept per source (<= ``num_beams``); each becomes one training pair.
        max_new_tokens: longest output, in tokens.
        batch_size: sources per generation batch.
        mix_original: seq-KD only: train on the gold targets too (one more pair per source).
    """

    num_beams: int = 4
    n_best: int = 1
    max_new_tokens: int = 64
    batch_size: int = 64
    mix_original: bool = False

    @classmethod
    def from_config(cls, values: dict | None, key: str) -> GenerationSettings:
        """Builds the settings, refusing unknown keys and impossible values."""
        settings = cls(**known_keys(cls, values, key))
        for name in ("num_beams", "n_best", "max_new_tokens", "batch_size"):
            if int(getattr(settings, name)) < 1:
                raise ConfigError(f"{key}.{name} must be >= 1, got {getattr(settings, name)}")
        if settings.n_best > settings.num_beams:
            raise ConfigError(f"{key}.n_best={settings.n_best} > {key}.num_beams="
                              f"{settings.num_beams}: beam search keeps at most num_beams "
                              f"outputs; set {key}.num_beams={settings.n_best}")
        return settings

    def key_fields(self) -> dict:
        """The settings that change the outputs (what the cache key hashes)."""
        return {"num_beams": self.num_beams, "n_best": self.n_best,
                "max_new_tokens": self.max_new_tokens}


def one_line(text: str) -> str:
    """``text`` on one line: every run of whitespace (tabs, newlines) becomes one space."""
    return " ".join(text.split())


@torch.inference_mode()
def generate(model: torch.nn.Module, tokenizer, source_ids: Sequence[Sequence[int]],
             settings: GenerationSettings, device: torch.device,
             dtype: torch.dtype | None = None, desc: str = "generate",
             progress: bool = False) -> tuple[list[list[str]], list[list[float]]]:
    """Decodes every source; returns per source its ``n_best`` texts and scores.

    Batches go in length order (less padding) and come back in the given order. Scores are
    the length-normalised log-probabilities of beam search (``sequences_scores``), or for
    greedy decoding the mean log-probability of the generated tokens.
    """
    was_training = model.training
    model.eval().to(device)
    pad = tokenizer.pad_token_id or 0
    order = sorted(range(len(source_ids)), key=lambda i: -len(source_ids[i]))
    texts: list[list[str]] = [[] for _ in source_ids]
    scores: list[list[float]] = [[] for _ in source_ids]
    n = settings.n_best
    ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else \
        torch.autocast(device.type, enabled=False)
    for start in tqdm(range(0, len(order), settings.batch_size), desc=desc, leave=False,
                      disable=not progress):
        rows = order[start:start + settings.batch_size]
        width = max(len(source_ids[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, i in enumerate(rows):
            ids[j, :len(source_ids[i])] = torch.tensor(source_ids[i])
            mask[j, :len(source_ids[i])] = 1
        with ctx:
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device),
                num_beams=settings.num_beams, num_return_sequences=n, do_sample=False,
                max_new_tokens=settings.max_new_tokens, output_scores=True,
                return_dict_in_generate=True, early_stopping=settings.num_beams > 1)
        if settings.num_beams > 1:
            seq_scores = out.sequences_scores.float().cpu()
        else:
            step = model.compute_transition_scores(out.sequences, out.scores,
                                                   normalize_logits=True).float().cpu()
            real = torch.isfinite(step) & (out.sequences[:, 1:].cpu() != pad)
            seq_scores = torch.where(real, step, 0).sum(-1) / real.sum(-1).clamp_min(1)
        decoded = tokenizer.batch_decode(out.sequences, skip_special_tokens=True,
                                         clean_up_tokenization_spaces=False)
        for j, i in enumerate(rows):
            texts[i] = [one_line(t) for t in decoded[j * n:(j + 1) * n]]
            scores[i] = [round(float(s), 6) for s in seq_scores[j * n:(j + 1) * n]]
    model.train(was_training)
    return texts, scores


def generation_key(teacher: ModelBundle, source_ids: Sequence[Sequence[int]],
                   settings: GenerationSettings, dtype: torch.dtype | None) -> str:
    """Cache key: teacher weights + source token ids + output-changing settings + precision."""
    digest = hashlib.sha256()
    update_weights_digest(teacher.model, digest)
    for ids in source_ids:
        digest.update(np.asarray(ids, dtype=np.int32).tobytes())
        digest.update(b"|")
    digest.update(json.dumps({**settings.key_fields(), "dtype": str(dtype or "fp32")},
                             sort_keys=True).encode())
    return digest.hexdigest()[:24]


def cached_generations(teacher: ModelBundle, source_ids: Sequence[Sequence[int]],
                       settings: GenerationSettings, device: torch.device,
                       dtype: torch.dtype | None, what: str, progress: bool = False
                       ) -> tuple[list[list[str]], list[list[float]], str, Path]:
    """The teacher's generations for ``source_ids``, from the cache or computed now.

    Returns:
        Texts and scores per source, where they came from (``cache`` or ``computed``) and the
        cache file.
    """
    key = generation_key(teacher, source_ids, settings, dtype)
    path = cache_root() / "generations" / f"{key}.json"
    with file_lock(path.with_suffix(".lock")):  # parallel sweep jobs: one generates
        if path.is_file():
            cached = json.loads(path.read_text())
            log.info("teacher generations for %s (%d sources) read from cache %s", what,
                     len(cached["texts"]), path)
            return cached["texts"], cached["scores"], "cache", path
        start = time.perf_counter()
        texts, scores = generate(teacher.model, teacher.tokenizer, source_ids, settings, device,
                                 dtype, desc=f"teacher generates {what}", progress=progress)
        write_json(path, {"texts": texts, "scores": scores,
                          "settings": settings.key_fields(), "teacher": teacher.name})
        log.info("teacher generations for %s (%d sources, beam %d, %d-best) in %.0fs, cached "
                 "at %s", what, len(texts), settings.num_beams, settings.n_best,
                 time.perf_counter() - start, path)
    return texts, scores, "computed", path


def write_parallel(folder: Path, split: str, sources: Sequence[str],
                   generations: Sequence[Sequence[str]],
                   scores: Sequence[Sequence[float]]) -> dict[str, str]:
    """Writes ``<split>.src``, ``<split>.tgt`` (one clean pair per line: every n-best output
    of a source is a line of its own, beside its source) and ``<split>.scores``."""
    lines = [(one_line(s), one_line(g), sc) for s, gens, scs in
             zip(sources, generations, scores, strict=True) for g, sc in zip(gens, scs,
                                                                              strict=True)]
    files = {}
    for ext, column in (("src", 0), ("tgt", 1), ("scores", 2)):
        text = "".join(f"{row[column]}\n" for row in lines)
        path = folder / f"{split}.{ext}"
        write_file(path, lambda fh, t=text: fh.write(t.encode("utf-8")))
        files[ext] = str(path)
    log.info("seq-KD parallel data: %d pairs in %s", len(lines), files["src"].rsplit(".", 1)[0])
    return files
