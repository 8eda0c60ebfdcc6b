"""Storage of the causal-LM top-k teacher cache per token, for k = 8, 32, 128 and dense logits.

Runs the real cache pass (:func:`distillkit.teachers.topk_cache.cache_teacher_topk`) of the
packaged SmolLM2-135M-Instruct teacher (vocabulary 49152; its de-quantised weights must be
cached: ``distillkit fetch --only smollm2``) over ``--texts`` short English texts (SNLI
premises, from the ``snli`` asset, or built-in sentences when it is not cached), once per
``k``, into a temporary cache directory, and reports for each ``k``:

* bytes per real token of the entry on disk (log-probabilities in ``--dtype``, uint16 ids, the
  float32 rest mass, the row index and the ``.npy`` headers: all files of the entry) and the
  same without the fixed overheads (``k * (value + 2) + 4``);
* the share of the dense fp16 logits' size (``V * 2`` bytes per token);
* the teacher's mean probability mass on its top-k tokens (how much of the distribution the
  ``k`` named tokens hold; the rest bucket holds the remainder);
* the pass's seconds (the teacher forward and the chunked top-k; the first ``k``'s pass also
  warms the model up).

Usage::

    nice -n 19 python bench/topk_storage.py --markdown
    DISTILLKIT_TEACHER_CACHE=/path/to/cache python bench/topk_storage.py  # teacher cached elsewhere
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from distillkit.causal.models import smollm2_teacher
from distillkit.data.feature_rows import ROW
from distillkit.models.bundle import update_weights_digest
from distillkit.runtime.assets import CACHE_ENV, AssetError
from distillkit.teachers.topk_cache import TopKSplit, cache_teacher_topk

FALLBACK = ["A man is playing a guitar on stage.", "Two dogs run across a snowy field.",
            "A woman reads a book in the park.", "Children are building a sandcastle.",
            "A chef is cooking pasta in a busy kitchen."]


@contextmanager
def cache_at(path: str | None):
    """``DISTILLKIT_CACHE`` set to ``path`` while the block runs (unchanged for None)."""
    old = os.environ.get(CACHE_ENV)
    if path is not None:
        os.environ[CACHE_ENV] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = old


def short_texts(count: int) -> tuple[list[str], str]:
    """``count`` SNLI premises (or the built-in sentences, repeated), and where from."""
    try:
        from distillkit.data.snli import snli

        premises = snli(train_size=4 * count, validation_size=1, fetch=False)["train"]
        unique = list(dict.fromkeys(premises["sentence1"]))  # a premise has several pairs
        return unique[:count], "SNLI premises (snli asset, CC BY-SA 4.0)"
    except AssetError:
        return [FALLBACK[i % len(FALLBACK)] for i in range(count)], "built-in sentences"


def batches(ids: list[list[int]], pad_id: int, size: int) -> list[dict]:
    out = []
    for start in range(0, len(ids), size):
        rows = ids[start:start + size]
        seq = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), seq), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), seq), dtype=torch.long)
        for b, r in enumerate(rows):
            input_ids[b, :len(r)] = torch.tensor(r)
            mask[b, :len(r)] = 1
        out.append({"input_ids": input_ids, "attention_mask": mask,
                    ROW: torch.arange(start, start + len(rows))})
    return out


def measure(ks: list[int], count: int, dtype: str, max_length: int, batch_size: int) -> dict:
    texts, source = short_texts(count)
    with cache_at(os.environ.get("DISTILLKIT_TEACHER_CACHE")):
        teacher = smollm2_teacher(fetch=False)
    tokenizer, model = teacher.tokenizer, teacher.model
    ids = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    vocab = int(model.get_output_embeddings().weight.shape[0])
    weights = hashlib.sha256()
    update_weights_digest(model, weights)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, cache_at(tmp):
        for k in ks:
            split = TopKSplit(ids, batches(ids, int(tokenizer.pad_token_id), batch_size))
            result = cache_teacher_topk(model, {"bench": split}, k=k, dtype=dtype, max_gb=10.0,
                                        max_length=max_length, weights=weights)
            store = result.stores["bench"]
            mass = np.exp(np.load(store.path / "log_probs.npy").astype(np.float64)).sum(-1)
            rows.append({"k": k, "bytes_per_token": result.bytes_per_token,
                         "array_bytes_per_token": store.spec.bytes_per_token,
                         "bytes": result.bytes, "mean_topk_mass": float(mass.mean()),
                         "seconds": result.seconds})
    tokens = sum(len(i) for i in ids)
    return {"texts": len(texts), "source": source, "tokens": tokens, "vocab": vocab,
            "dtype": dtype, "dense_fp16_bytes_per_token": 2 * vocab, "rows": rows,
            "torch_threads": torch.get_num_threads()}


def markdown(report: dict) -> str:
    dense = report["dense_fp16_bytes_per_token"]
    lines = [f"{report['texts']} texts ({report['source']}), {report['tokens']} tokens, "
             f"vocabulary {report['vocab']}, log-probabilities in {report['dtype']}, "
             f"{report['torch_threads']} torch threads", "",
             "| k | bytes/token (entry on disk) | bytes/token (arrays) | of dense fp16 | "
             "mean top-k mass | pass seconds |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['k']} | {r['bytes_per_token']:,.1f} | {r['array_bytes_per_token']} | "
                     f"{r['array_bytes_per_token'] / dense:.2%} | {r['mean_topk_mass']:.4f} | "
                     f"{r['seconds']:.1f} |")
    lines.append(f"| dense (V x 2 B fp16) | {dense:,} | {dense:,} | 100% | 1 | - |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="8,32,128", help="comma-separated top-k sizes")
    parser.add_argument("--texts", type=int, default=50)
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "fp32"])
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    args = parser.parse_args()
    report = measure([int(k) for k in args.ks.split(",")], args.texts, args.dtype,
                     args.max_length, args.batch_size)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(markdown(report) if args.markdown else json.dumps(report, indent=1))  # noqa: T201 - the report


if __name__ == "__main__":
    main()
