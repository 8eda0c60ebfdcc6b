"""A causal-LM teacher's top-k targets computed once per teacher + data + k, cached, reused.

A token-level KD loss (:class:`~distillkit.causal.token_loss.TokenDistillationLoss`) reads from
the teacher only its next-token distribution at every real token. At LLM scale the dense
distribution is too large to store (SmolLM2: 49152 values per token, 96 KiB in fp16), so
:func:`cache_teacher_topk` makes one teacher pass over each split and stores, per real token,
the teacher's ``k`` largest log-probabilities at ``T = 1``, their vocabulary ids and the log of
the remaining mass (:class:`~distillkit.causal.topk.TopKTargets`; format in
:mod:`distillkit.teachers.topk_store`), under ``<cache>/teacher_topk/<key>/``. Every batch then
reads its own rows (:class:`distillkit.data.topk_rows.TopKCollator`) and the distil loop never
runs the teacher.

With ``samples = m`` (``trainer.teacher_topk_samples``) the rest mass is replaced by ``m``
draws from the teacher's distribution over the other tokens
(:func:`~distillkit.causal.topk.topk_targets`: unbiased forward-KL targets), drawn per example
from a generator seeded by the example's row, so an entry's content does not depend on the
batching of the pass.

The key hashes what the logits cache hashes (the teacher's weights, the split's token ids,
``max_length``, the teacher's precision) plus ``k``, the storage dtype, the vocabulary
size and ``samples`` (when above 0); temperature, alpha, beta and the divergence are not in it, so a sweep over them makes
one pass. Parallel sweep jobs lock the entry: one computes, the others read it.

The pass never holds the batch's vocabulary logits: it runs the teacher's body for the last
hidden states and applies the output layer to ``chunk_tokens`` real tokens at a time (float32
``log_softmax``, ``topk``, ``logsumexp`` of the rest). This is exact for models whose logits
are ``lm_head(last_hidden_state)`` (Llama, SmolLM2, Mistral, Qwen2, GPT-2...), not for a model
that transforms them further (Gemma 2's logit soft-capping).

The cache is bounded like the feature cache: entries that would exceed
``trainer.feature_cache_max_gb`` (or the free disk) are not written; the run says so in one
line (:meth:`TopKCache.describe`) and runs the teacher live.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distillkit.causal.chunked import DEFAULT_CHUNK_TOKENS
from distillkit.causal.topk import TopKTargets, topk_targets
from distillkit.data.feature_rows import ROW
from distillkit.engine import frozen
from distillkit.engine.evaluate import model_inputs
from distillkit.errors import ConfigError
from distillkit.models.bundle import update_weights_digest
from distillkit.runtime.locks import file_lock
from distillkit.teachers.features import over_budget
from distillkit.teachers.outputs import ids_key, keyed_entry
from distillkit.teachers.topk_store import VALUE_DTYPES, TopKSpec, TopKStore, TopKWriter, published

log = logging.getLogger(__name__)
GB = 1e9
FOLDER = "teacher_topk"
BUDGET = "trainer.feature_cache_max_gb"


@dataclass
class TopKSplit:
    """One split for the teacher pass.

    Attributes:
        ids: every example's real token ids, in row order (row ``i`` is the example whose
            batches carry ``teacher_row == i``); they key the entry and size its rows.
        batches: the split's batches (iterated only when the entry is computed): padded
            ``input_ids``, ``attention_mask`` (1 on exactly the example's ids) and
            ``teacher_row``; any other model input (e.g. ``position_ids``) is passed on.
    """

    ids: Sequence[Sequence[int]]
    batches: Iterable[dict]


@dataclass
class TopKCache:
    """What the top-k cache did in this run (the ``teacher_topk`` record).

    Attributes:
        source: ``cache`` (every split read from disk), ``computed`` (at least one split
            computed now) or ``live`` (not cached: the teacher runs every step).
        k: teacher tokens kept per position.
        dtype: storage dtype of the log-probabilities.
        tokens: real tokens of the splits.
        samples: sampled tail slots per position (0: the rest mass is stored).
        bytes: size of the entries (estimated when ``live``).
        bytes_per_token: ``bytes / tokens``.
        reason: why ``live``, in words (None otherwise).
        splits: per split, ``origin`` (``cache`` or ``computed``) and the entry's ``key``.
        seconds: the teacher pass's seconds (0 when read from the cache).
        stores: per split, the entry to read batches from (empty when ``live``).
    """

    source: str
    k: int
    dtype: str
    tokens: int
    bytes: int
    reason: str | None = None
    splits: dict[str, dict[str, str]] = field(default_factory=dict)
    seconds: float = 0.0
    stores: dict[str, TopKStore] = field(default_factory=dict, repr=False)
    samples: int = 0

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / max(self.tokens, 1)

    def record(self) -> dict[str, Any]:
        """The run record's entry (JSON-ready)."""
        return {"source": self.source, "k": self.k, "samples": self.samples,
                "dtype": self.dtype, "tokens": self.tokens,
                "bytes": self.bytes, "bytes_per_token": round(self.bytes_per_token, 1),
                "reason": self.reason, "splits": self.splits, "seconds": round(self.seconds, 3)}

    def describe(self) -> str:
        """One line for the run log."""
        if self.source == "live":
            return f"teacher top-k targets not cached ({self.reason}): the teacher runs every step"
        how = "read from the cache" if self.source == "cache" else \
            "computed in one teacher pass and cached"
        tail = f" + {self.samples} tail samples" if self.samples else ""
        return (f"teacher top-k targets {how} (k={self.k}{tail}, {self.dtype}, "
                f"{self.bytes_per_token:,.0f} B/token, {self.bytes / GB:.3f} GB): the teacher "
                "does not run while distilling")


def check_topk_settings(k: int, dtype: str, max_gb: float, samples: int = 0) -> None:
    """Refuses a ``k`` below 1, negative tail samples, an unknown storage dtype or a negative
    budget."""
    if not int(k) >= 1:
        raise ConfigError(f"the top-k size must be >= 1, got {k}; try 32")
    if not int(samples) >= 0:
        raise ConfigError(f"trainer.teacher_topk_samples must be >= 0, got {samples}; 0 "
                          "stores the rest mass instead of tail samples")
    if dtype not in VALUE_DTYPES:
        raise ConfigError(f"top-k storage dtype '{dtype}' is not one of "
                          f"{', '.join(VALUE_DTYPES)}; use fp16 (default) or fp32")
    if not max_gb >= 0:
        raise ConfigError(f"{BUDGET} must be >= 0, got {max_gb}; 0 turns the cache off")


def cache_teacher_topk(model: nn.Module, splits: Mapping[str, TopKSplit], *, k: int,
                       max_gb: float, max_length: int | None, dtype: str = "fp16",
                       device: torch.device | str = "cpu", precision: torch.dtype | None = None,
                       weights: hashlib._Hash | None = None, vocab_size: int | None = None,
                       chunk_tokens: int = DEFAULT_CHUNK_TOKENS, samples: int = 0) -> TopKCache:
    """The teacher's top-k targets of every split, from the cache or computed now in one
    teacher pass per split; or why the teacher runs live instead.

    Args:
        model: the teacher, a Hugging Face causal LM (``base_model`` gives the last hidden
            states, ``get_output_embeddings()`` the output layer). It is moved to ``device``
            and cast to ``precision`` when a split is computed.
        splits: per split role, its ids and batches.
        k: teacher tokens kept per position (``1 <= k <= vocabulary``).
        max_gb: the budget (``trainer.feature_cache_max_gb``), in GB (10^9 bytes).
        max_length: the data's truncation length (part of the key).
        dtype: storage dtype of the log-probabilities (``fp16`` or ``fp32``).
        device: where the teacher runs.
        precision: the teacher's weights dtype (``trainer.teacher_precision``; None: as is).
        weights: the digest of the teacher's float32 weights when the caller has it (else
            computed here, before any cast).
        vocab_size: the shared vocabulary the top-k is taken over (the output layer's first
            rows; :func:`~distillkit.causal.vocab.align_vocab`), None for all of them.
        chunk_tokens: real tokens whose vocabulary logits exist at once.
        samples: tail slots drawn per position instead of storing the rest mass (0: none).

    Raises:
        ConfigError: a bad ``k``, ``samples``, dtype or budget.
    """
    check_topk_settings(k, dtype, max_gb, samples)
    head = model.get_output_embeddings()
    vocab = int(vocab_size or head.weight.shape[0])
    if k > vocab:
        raise ConfigError(f"the top-k size {k} exceeds the vocabulary ({vocab} tokens); "
                          f"use at most {vocab}")
    if k + samples > vocab:
        raise ConfigError(f"the top-k size {k} plus {samples} tail samples exceeds the "
                          f"vocabulary ({vocab} tokens); use fewer samples")
    if weights is None:
        weights = hashlib.sha256()
        update_weights_digest(model, weights)
    spec = TopKSpec(int(k), dtype, vocab, int(samples))
    lengths = {role: [len(ids) for ids in split.ids] for role, split in splits.items()}
    paths = {role: keyed_entry(FOLDER, ids_key(weights, [split.ids], max_length, precision),
                               spec.as_dict()) for role, split in splits.items()}
    tokens = sum(sum(n) for n in lengths.values())
    size = sum(spec.nbytes(n) for n in lengths.values())
    result = TopKCache("live", spec.k, dtype, tokens, size, samples=spec.samples)
    missing = sum(spec.nbytes(lengths[r]) for r in splits if not published(paths[r]))
    result.reason = over_budget(size, missing, max_gb)
    if result.reason is not None:
        return result
    device = torch.device(device)
    ready = False
    for role, split in splits.items():
        path = paths[role]
        with file_lock(path.with_name(path.name + ".lock")):  # sweep jobs: one computes
            if published(path):
                result.splits[role] = {"origin": "cache", "key": path.name}
            else:
                if not ready:
                    model, ready = frozen(model, device, precision), True
                result.seconds += _compute(model, split, lengths[role], spec, path, device,
                                           chunk_tokens, role)
                result.splits[role] = {"origin": "computed", "key": path.name}
        result.stores[role] = TopKStore(path)
    result.source = ("cache" if all(s["origin"] == "cache" for s in result.splits.values())
                     else "computed")
    result.bytes = sum(store.meta["bytes"] for store in result.stores.values())
    return result


def _compute(model: nn.Module, split: TopKSplit, lengths: list[int], spec: TopKSpec,
             path: Path, device: torch.device, chunk_tokens: int, role: str) -> float:
    """One teacher pass over a split writing its entry; returns the pass's seconds."""
    head = model.get_output_embeddings()
    weight = head.weight[:spec.vocab].float()  # once per pass (a copy for a bf16 teacher)
    bias = None if head.bias is None else head.bias[:spec.vocab].float()
    writer = TopKWriter(path, spec, lengths)
    done = [False] * len(lengths)
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for batch in split.batches:
                rows = [int(r) for r in batch[ROW].tolist()]
                inputs = model_inputs({n: v for n, v in batch.items() if n != ROW}, device)
                mask = inputs["attention_mask"].bool()
                counts = mask.sum(1).tolist()
                for row, n in zip(rows, counts, strict=True):
                    if n != lengths[row]:
                        raise ValueError(f"row {row} of split '{role}' has {n} real tokens in "
                                         f"its batch but {lengths[row]} ids: the batches do "
                                         "not match the split's ids")
                hidden = model.base_model(**inputs).last_hidden_state[mask]
                if not spec.samples:
                    targets = chunked_topk(hidden, weight, bias, spec.k, chunk_tokens)
                at = 0
                for row, n in zip(rows, counts, strict=True):
                    if spec.samples:  # drawn per example: independent of the batching
                        writer.write(row, chunked_topk(
                            hidden[at:at + n], weight, bias, spec.k, chunk_tokens,
                            spec.samples, torch.Generator(hidden.device).manual_seed(row)))
                    else:
                        writer.write(row, targets.index(slice(at, at + n)))
                    done[row] = True
                    at += n
        if not all(done):
            raise ValueError(f"the batches of split '{role}' cover {sum(done)} of its "
                             f"{len(done)} rows")
        seconds = time.perf_counter() - start
        writer.publish({"seconds": round(seconds, 3), "role": role})
    except BaseException:
        writer.discard()
        raise
    log.info("teacher top-k targets for '%s' (%d examples, %d tokens, k=%d, %d tail samples, "
             "%s) computed in %.0fs, cached at %s", role, len(lengths), sum(lengths), spec.k,
             spec.samples, spec.dtype, seconds, path)
    return seconds


def chunked_topk(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int,
                 chunk_tokens: int = DEFAULT_CHUNK_TOKENS, samples: int = 0,
                 generator: torch.Generator | None = None) -> TopKTargets:
    """Top-k targets of ``[N, H]`` last hidden states through an output layer (``weight``
    ``[V, H]``, ``bias`` ``[V]`` or None), ``chunk_tokens`` tokens' float32 logits at a time;
    with ``samples``, a sampled tail drawn with ``generator``
    (:func:`~distillkit.causal.topk.topk_targets`).

    Returns:
        :class:`TopKTargets` with leading dim ``[N]`` on the CPU.
    """
    parts = []
    for at in range(0, hidden.shape[0], max(int(chunk_tokens), 1)):
        logits = torch.nn.functional.linear(hidden[at:at + chunk_tokens].float(), weight, bias)
        parts.append(topk_targets(logits, k, samples, generator).to("cpu"))
        del logits
    if not parts:
        empty = hidden.new_zeros((0, k + samples), dtype=torch.float32, device="cpu")
        return TopKTargets(empty, empty.long(), empty[:, 0])
    return TopKTargets(torch.cat([p.log_probs for p in parts]),
                       torch.cat([p.indices for p in parts]),
                       torch.cat([p.rest_log_prob for p in parts]))
