"""The causal-LM models of docs/causal-lm-models.md: load times, parameter counts, greedy answers.

    python bench/causal_models.py [--repeats 2]

Needs the ``smollm2`` asset (fetched and de-quantised on first use; ``DISTILLKIT_CACHE`` is
respected). Each load is timed in a fresh Python process (imports excluded) so that nothing is
warm: ``gguf`` reads the wheel's GGUF file with ``from_pretrained(dir, gguf_file=...)`` (what
every load would cost without the cache), ``cached`` reads the de-quantised copy. Then it builds
the copied and small-Llama students and prints their parameter counts and a greedy answer of
each to the chat-templated "What is the capital of France?" (untrained students: expect
nonsense).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

LOAD = """
import json, sys, time
from transformers import AutoModelForCausalLM, AutoTokenizer
path, gguf = sys.argv[1], sys.argv[2] or None
kwargs = {"gguf_file": gguf} if gguf else {}
start = time.perf_counter()
AutoTokenizer.from_pretrained(path, **kwargs)
mid = time.perf_counter()
AutoModelForCausalLM.from_pretrained(path, **kwargs)
end = time.perf_counter()
print(json.dumps({"tokenizer_s": mid - start, "model_s": end - mid}))
"""

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _timed_load(path: str, gguf_file: str) -> dict:
    out = subprocess.run([sys.executable, "-c", LOAD, path, gguf_file], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _answer(bundle) -> str:
    tok = bundle.tokenizer
    enc = tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.no_grad():
        out = bundle.model.generate(**enc, max_new_tokens=20, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def main() -> None:
    from distillkit.causal.assets import SMOLLM2, dequantised_dir
    from distillkit.causal.copied import copied_causal_student
    from distillkit.causal.models import small_llama_student, smollm2_teacher
    from distillkit.runtime.assets import asset_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cached = str(dequantised_dir())
    source = str(asset_path(SMOLLM2.asset))
    lines = ["| load | tokenizer (s) | model (s) | total (s) |", "|---|---|---|---|"]
    for label, path, gguf in (("gguf", source, SMOLLM2.gguf_file), ("cached", cached, "")):
        for _ in range(args.repeats):
            t = _timed_load(path, gguf)
            lines.append(f"| {label} | {t['tokenizer_s']:.2f} | {t['model_s']:.2f} | "
                         f"{t['tokenizer_s'] + t['model_s']:.2f} |")
    teacher = smollm2_teacher()
    students = [("teacher", teacher),
                ("copy every=2", copied_causal_student(every=2, teacher=teacher)),
                ("copy every=3", copied_causal_student(every=3, teacher=teacher)),
                ("small llama 8L-384H", small_llama_student(8, 384, 1024, 6, 2, teacher=teacher)),
                ("small llama 4L-256H", small_llama_student(4, 256, 768, 4, 2, teacher=teacher))]
    lines += ["", "| model | layers | hidden | parameters | greedy answer |", "|---|---|---|---|---|"]
    for label, bundle in students:
        params = sum(p.numel() for p in bundle.model.parameters())
        lines.append(f"| {label} | {bundle.num_layers} | {bundle.hidden_size} | {params:,} | "
                     f"{_answer(bundle)!r} |")
    print("\n".join(lines))  # noqa: T201 - the benchmark's report


if __name__ == "__main__":
    main()
