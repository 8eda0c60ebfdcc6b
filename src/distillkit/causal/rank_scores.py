"""Held-out scores of a causal LM run with several processes: each rank scores its share of
the batches and the shares are combined into the split's scores.

:func:`~distillkit.causal.evaluate.score_models` returns per-token means over the batches it
saw; a rank's means weighted by its token count add up to the whole split's sums, so the
combined ``loss``, ``perplexity``, ``agreement`` and ``kl`` are those of one process scoring
every batch (up to float summation order). In a one-process run this is ``score_models`` as
it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from distillkit.causal.evaluate import score_models
from distillkit.runtime.distributed import DistEnv

# per-token means of score_models, combined weighted by each rank's tokens
_MEANS = ("loss", "agreement", "kl")


def combine_scores(parts: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The scores of the union of the ranks' batches, from each rank's ``score_models`` result.

    Args:
        parts: one result per rank (a rank without batches counts 0 tokens).

    Returns:
        The same structure as one result: token-weighted means, summed tokens, the slowest
        rank's seconds, perplexity recomputed from the combined loss.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in parts[0]:
        scores = [part[name] for part in parts]
        tokens = sum(int(s["tokens"]) for s in scores)
        merged = {**scores[0], "tokens": tokens, "seconds": max(s["seconds"] for s in scores)}
        for key in _MEANS:
            if key in scores[0]:
                merged[key] = (sum(s[key] * s["tokens"] for s in scores) / tokens if tokens
                               else scores[0][key])
        merged["perplexity"] = math.exp(min(merged["loss"], 700.0))
        merged["neg_perplexity"] = -merged["perplexity"]
        out[name] = merged
    return out


def score_shared(dist: DistEnv, student: Any, teacher: Any, batches: Sequence[dict],
                 **kwargs: Any) -> dict[str, dict[str, Any]]:
    """:func:`~distillkit.causal.evaluate.score_models` with the batches split over the ranks
    (``rank, rank + N, ...``; the models must run without collectives: plain, under DDP, or
    sharded inside :meth:`~distillkit.engine.Distiller.full_weights`); every rank returns the
    whole split's scores (a collective)."""
    if not dist.enabled:
        return score_models(student, teacher, batches, **kwargs)
    mine = list(batches)[dist.rank::dist.world_size]
    return combine_scores(dist.gather_objects(score_models(student, teacher, mine, **kwargs)))
