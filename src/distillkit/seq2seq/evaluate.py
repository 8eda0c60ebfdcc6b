"""Generation-based evaluation: exact match for label-style targets, BLEU/chrF for free text.

The model generates (``model.generate``, greedy or beam search) for every source of a split;
predictions are compared with the gold targets: ``exact_match`` (whitespace-normalised string
equality, numbers compared as numbers so ``16`` and ``16.0`` agree), and corpus ``bleu`` and
``chrf`` from sacrebleu (Post, 2018: the standard, reproducible implementations).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import sacrebleu
import torch

from distillkit.seq2seq.generation import GenerationSettings, generate


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def exact_match(prediction: str, reference: str) -> bool:
    """Whether a prediction equals its reference (whitespace-normalised; numbers by value)."""
    p, r = " ".join(prediction.split()), " ".join(reference.split())
    if p == r:
        return True
    a, b = _number(p), _number(r)
    return a is not None and b is not None and a == b


def score(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """``exact_match`` (fraction), ``bleu`` and ``chrf`` (sacrebleu, 0-100) of a corpus."""
    refs = [list(references)]
    matches = sum(exact_match(p, r) for p, r in zip(predictions, references, strict=True))
    return {"exact_match": matches / max(len(predictions), 1),
            "bleu": sacrebleu.corpus_bleu(list(predictions), refs).score,
            "chrf": sacrebleu.corpus_chrf(list(predictions), refs).score}


def evaluate_generation(model: torch.nn.Module, tokenizer, source_ids: Sequence[Sequence[int]],
                        references: Sequence[str], settings: GenerationSettings,
                        device: torch.device, dtype: torch.dtype | None = None,
                        desc: str = "eval", progress: bool = False
                        ) -> tuple[dict[str, float], list[str]]:
    """Generates for every source and scores against ``references``.

    Returns:
        ``{"exact_match", "bleu", "chrf", "examples", "seconds"}`` (``seconds``: generation
        wall time) and the predictions, in order.
    """
    one = GenerationSettings(num_beams=settings.num_beams, n_best=1,
                             max_new_tokens=settings.max_new_tokens,
                             batch_size=settings.batch_size)
    start = time.perf_counter()
    texts, _ = generate(model, tokenizer, source_ids, one, device, dtype, desc=desc,
                        progress=progress)
    seconds = time.perf_counter() - start
    predictions = [t[0] for t in texts]
    return ({**score(predictions, references), "examples": len(predictions),
             "seconds": seconds}, predictions)
