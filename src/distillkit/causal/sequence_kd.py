"""Sequence-level KD of a causal LM (``loss.seq_kd=true``; Kim & Rush, 2016): the student
trains on the teacher's own responses to the training prompts instead of the data's.

The teacher-targets stage decodes every training prompt once (greedy, or beam search with
``loss.generation.num_beams``; at most ``loss.generation.max_new_tokens`` tokens) and caches
the responses' token ids under ``<cache>/generations/<key>.json``, where the key hashes
the teacher's weights, the prompts' ids, those settings and the teacher's precision (the same
lock as the other teacher caches: one sweep job decodes, the others read). The training
examples then become ``prompt + teacher response`` with the response learnt
(:meth:`~distillkit.causal.data.CausalLMData.replace_responses`); the token-level KD term, if
``loss.alpha`` > 0, is taken on those tokens too (word-level + sequence-level KD). The run
directory gets ``teacher_responses.jsonl`` (prompt, data response, teacher response) to read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from distillkit.causal.data import CausalLMData
from distillkit.causal.generation import CausalGeneration, continue_prompts, pad_id, stop_ids
from distillkit.causal.models import CausalBundle
from distillkit.engine import frozen
from distillkit.engine.settings import EngineSettings
from distillkit.models.bundle import update_weights_digest
from distillkit.runtime.io import write_file, write_json
from distillkit.runtime.locks import file_lock
from distillkit.teachers.outputs import ids_key, keyed_entry

log = logging.getLogger(__name__)
ROLE = "train"
RESPONSES = "teacher_responses.jsonl"


def sequence_kd_targets(teacher: CausalBundle, data: CausalLMData, settings: EngineSettings,
                        generation: CausalGeneration, out_dir: Any,
                        write: bool = True) -> dict[str, Any]:
    """Replaces the training responses with the teacher's (cached); returns the record.

    Args:
        teacher: the teacher and its tokenizer.
        data: the tokenised data (its training split is changed in place).
        settings: the run's loop settings (device, teacher precision).
        generation: ``max_new_tokens``, ``num_beams``, ``batch_size``.
        out_dir: the run directory (``teacher_responses.jsonl``).
        write: whether this process writes the run-directory file.
    """
    prompts = [p for p, _ in data.prompts(ROLE, len(data.encoded[ROLE]))]
    device = settings.resolve_device()
    dtype = settings.teacher_dtype(device)
    weights = hashlib.sha256()
    update_weights_digest(teacher.model, weights)
    fields = {"max_new_tokens": generation.max_new_tokens, "num_beams": generation.num_beams}
    path = keyed_entry("generations", ids_key(weights, [prompts], None, dtype),
                       {"task": "causal_lm", **fields}).with_suffix(".json")
    seconds = 0.0
    with file_lock(path.with_suffix(".lock")):
        if path.exists():
            responses, origin = json.loads(path.read_text())["responses"], "cache"
        else:
            model = frozen(teacher.model, device, dtype)
            start = time.perf_counter()
            responses = continue_prompts(
                model, prompts, max_new_tokens=generation.max_new_tokens,
                pad=pad_id(teacher.tokenizer), stops=stop_ids(model, teacher.tokenizer),
                device=device, num_beams=generation.num_beams,
                batch_size=generation.batch_size)
            seconds = time.perf_counter() - start
            write_json(path, {"settings": fields, "responses": responses})
            origin = "computed"
    log.info("sequence-level KD: the teacher's responses to %d training prompts %s (%s): the "
             "student trains on them", len(prompts),
             "read from the cache" if origin == "cache" else f"decoded in {seconds:.0f}s",
             path)
    originals = [ex.input_ids[len(p):] for ex, p in zip(data.encoded[ROLE], prompts,
                                                       strict=True)]
    data.replace_responses(ROLE, prompts, responses)
    if write:
        tok = teacher.tokenizer
        text = "".join(json.dumps({"prompt": tok.decode(p), "data": tok.decode(o),
                                   "teacher": tok.decode(r)}, ensure_ascii=False) + "\n"
                       for p, o, r in zip(prompts, originals, responses, strict=True))
        write_file(out_dir / RESPONSES, lambda fh: fh.write(text.encode()))
    return {"generations": origin, "cache": str(path), "responses": len(responses),
            "mean_response_tokens": round(sum(map(len, responses)) / max(len(responses), 1), 2),
            "seconds": round(seconds, 3), "file": RESPONSES, **fields}
