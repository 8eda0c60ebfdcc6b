"""What the first-run levers of docs/speed.md save, measured on this CPU.

1. Teacher fine-tune steps (MiniLM-L6, SNLI batches of 32 grouped by length, fp32, fused
   AdamW, gradient clipping) with nothing frozen, the word embeddings frozen, and the
   embeddings plus layers 0-1 frozen: the three run their steps interleaved in one process,
   so a busy machine slows all three alike and the ratios hold.
2. Teacher inference (batches of 128 in length order) in fp32 against int8 dynamic
   quantisation of its ``Linear`` layers, interleaved the same way.

    python bench/first_run_levers.py                 # fetches the assets once (distillkit fetch)
    python bench/first_run_levers.py --steps 60 --examples 2048
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from fnmatch import fnmatchcase
from itertools import islice

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distillkit.runtime.assets import asset_path

FREEZE = {"nothing frozen": [], "word embeddings": ["bert.embeddings.word_embeddings.*"],
          "embeddings + layers 0-1": ["bert.embeddings.*", "bert.encoder.layer.[01].*"]}
LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}
log = logging.getLogger("first_run_levers")


def _batches(tokenizer, rows, size, shuffle):
    enc = tokenizer([r["sentence1"] for r in rows], [r["sentence2"] for r in rows],
                    truncation=True, max_length=64)
    lengths = np.array([len(ids) for ids in enc["input_ids"]])
    order = np.argsort(-lengths, kind="stable")
    chunks = [order[i:i + size] for i in range(0, len(order), size)]
    if shuffle:
        np.random.default_rng(0).shuffle(chunks)
    out = []
    for idx in chunks:
        batch = tokenizer.pad({k: [enc[k][i] for i in idx] for k in
                               ("input_ids", "token_type_ids", "attention_mask")},
                              return_tensors="pt")
        batch["labels"] = torch.tensor([LABELS.get(rows[i]["gold_label"], 0) for i in idx])
        out.append(batch)
    return out


def finetune_steps(model_dir, rows, steps, warmup=5):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batches = _batches(tokenizer, rows, 32, shuffle=True)[:steps + warmup]
    runs = {}
    for name, patterns in FREEZE.items():
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3)
        for pname, param in model.named_parameters():
            if any(fnmatchcase(pname, p) for p in patterns):
                param.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        runs[name] = (model.train(), params, torch.optim.AdamW(params, lr=1e-4, fused=True))
    seconds = dict.fromkeys(runs, 0.0)
    for i, batch in enumerate(batches):
        for name, (model, params, optimizer) in runs.items():
            start = time.perf_counter()
            model(**batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= warmup:
                seconds[name] += time.perf_counter() - start
    n = len(batches) - warmup
    return {name: {"s_per_step": s / n, "speedup": seconds["nothing frozen"] / s}
            for name, s in seconds.items()}


@torch.inference_mode()
def inference(model_dir, rows):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batches = _batches(tokenizer, rows, 128, shuffle=False)
    fp32 = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3).eval()
    int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear},
                                                  dtype=torch.qint8)
    models = {"fp32": fp32, "int8 dynamic": int8}
    for model in models.values():  # warm-up: every batch shape once
        for batch in batches:
            model(**{k: v for k, v in batch.items() if k != "labels"})
    seconds = dict.fromkeys(models, 0.0)
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        for name, model in models.items():
            start = time.perf_counter()
            model(**inputs)
            seconds[name] += time.perf_counter() - start
    return {name: {"ms_per_example": 1000 * s / len(rows), "speedup": seconds["fp32"] / s}
            for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed fine-tune steps per case")
    parser.add_argument("--examples", type=int, default=1024, help="test pairs for inference")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model_dir, snli = asset_path("minilm6"), asset_path("snli")
    with open(snli / "snli_1.0_train_subset.jsonl") as fh:
        train = [json.loads(line) for line in islice(fh, 32 * (args.steps + 5))]
    with open(snli / "snli_1.0_test.jsonl") as fh:
        test = [json.loads(line) for line in islice(fh, args.examples)]
    result = {"threads": torch.get_num_threads(),
              "cpu": torch.backends.cpu.get_cpu_capability(),
              "finetune": finetune_steps(model_dir, train, args.steps),
              "inference": inference(model_dir, test)}
    log.info("%s", json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
