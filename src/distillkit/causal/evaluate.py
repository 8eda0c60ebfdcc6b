"""Held-out evaluation of causal LMs: perplexity, agreement with the teacher, KL, generations.

On a split's learnt tokens (labels other than ``-100``), in one pass over its batches:

* ``perplexity``: ``exp`` of the mean token cross-entropy (``loss``), per model;
* ``agreement``: the share of tokens where the student's top-1 next token is the teacher's;
* ``kl``: the mean forward ``KL(teacher || student)`` per token at ``T = 1``;
* ``neg_perplexity``: ``-perplexity``, the task's headline metric (higher is better, as best
  checkpoint selection and sweeps need).

Only the learnt positions' hidden states are kept, and the output layer is applied to
``chunk_tokens`` of them at a time, so no ``[batch, seq, vocab]`` float32 tensor exists.
:func:`generate_side_by_side` answers held-out prompts greedily with both models and measures
their generation speed in new tokens per second.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distillkit.causal.encode import IGNORE
from distillkit.causal.generation import pad_id


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _hidden(model: nn.Module, batch: dict, labels_mask: torch.Tensor,
            device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    with _autocast(device, dtype):
        out = model.get_decoder()(input_ids=batch["input_ids"].to(device),
                                  attention_mask=batch["attention_mask"].to(device),
                                  use_cache=False)
    return out.last_hidden_state[labels_mask]


def _log_probs(model: nn.Module, hidden: torch.Tensor, vocab: int) -> torch.Tensor:
    head = model.get_output_embeddings()
    return F.log_softmax(head(hidden.to(head.weight.dtype))[:, :vocab].float(), dim=-1)


@torch.inference_mode()
def score_models(student: nn.Module, teacher: nn.Module | None, batches: Sequence[dict],
                 device: torch.device, vocab_size: int, chunk_tokens: int = 256,
                 student_dtype: torch.dtype | None = None,
                 teacher_dtype: torch.dtype | None = None) -> dict[str, dict[str, Any]]:
    """Perplexity of both models and, with a teacher, agreement and KL, on ``batches``.

    Args:
        student: a Hugging Face causal LM.
        teacher: another, on the same tokenizer (None: the student's metrics alone).
        batches: batches of :class:`~distillkit.causal.data.CausalLMData` (position-aligned
            ``labels``).
        device: where both run.
        vocab_size: the shared vocabulary size (rows beyond it are padding).
        chunk_tokens: tokens whose vocabulary distributions exist at once.
        student_dtype: autocast dtype of the student (None: its own).
        teacher_dtype: autocast dtype of the teacher.

    Returns:
        ``{"student": {...}, "teacher": {...}}`` (``teacher`` only with a teacher), each with
        ``loss``, ``perplexity``, ``neg_perplexity``, ``tokens``, ``seconds``; the student's
        also ``agreement`` and ``kl`` with a teacher.
    """
    models = {"student": (student, student_dtype)}
    if teacher is not None:
        models["teacher"] = (teacher, teacher_dtype)
    states = {}
    for name, (model, _) in models.items():
        states[name] = model.training
        model.eval()
    ce = {name: 0.0 for name in models}
    agree = kl = 0.0
    tokens = 0
    start = time.perf_counter()
    for batch in batches:
        labels = batch["labels"].to(device)
        mask = labels != IGNORE
        targets = labels[mask]
        hidden = {name: _hidden(m, batch, mask, device, dt) for name, (m, dt) in models.items()}
        for i in range(0, targets.numel(), chunk_tokens):
            y = targets[i:i + chunk_tokens].unsqueeze(-1)
            log_q = _log_probs(student, hidden["student"][i:i + chunk_tokens], vocab_size)
            ce["student"] -= float(log_q.gather(-1, y).sum())
            if teacher is not None:
                log_p = _log_probs(teacher, hidden["teacher"][i:i + chunk_tokens], vocab_size)
                ce["teacher"] -= float(log_p.gather(-1, y).sum())
                agree += float((log_p.argmax(-1) == log_q.argmax(-1)).sum())
                kl += float((log_p.exp() * (log_p - log_q)).sum())
        tokens += int(targets.numel())
    seconds = time.perf_counter() - start
    for name, (model, _) in models.items():
        model.train(states[name])
    n = max(tokens, 1)
    out = {}
    for name in models:
        loss = ce[name] / n
        perplexity = math.exp(min(loss, 700.0))
        out[name] = {"loss": loss, "perplexity": perplexity, "neg_perplexity": -perplexity,
                     "tokens": tokens, "seconds": seconds}
    if teacher is not None:
        out["student"].update(agreement=agree / n, kl=kl / n)
        out["teacher"].update(agreement=1.0, kl=0.0)
    return out


@torch.inference_mode()
def generate_greedy(model: nn.Module, tokenizer: Any, prompts: Sequence[Sequence[int]],
                    max_new_tokens: int, device: torch.device) -> tuple[list[str], float]:
    """Greedy continuations of ``prompts`` (one at a time: no padding effects) and the new
    tokens per second."""
    was_training = model.training
    model.eval()
    texts, new_tokens = [], 0
    pad = pad_id(tokenizer)
    start = time.perf_counter()
    for ids in prompts:
        input_ids = torch.tensor([list(ids)], device=device)
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                             do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=pad, synced_gpus=False)  # no collective: rank 0
        new = out[0, input_ids.shape[1]:]
        new_tokens += int(new.numel())
        texts.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    seconds = time.perf_counter() - start
    model.train(was_training)
    return texts, new_tokens / seconds if seconds > 0 else 0.0


def generate_side_by_side(teacher: nn.Module, student: nn.Module, tokenizer: Any,
                          prompts: Sequence[tuple[Sequence[int], Sequence[int]]],
                          max_new_tokens: int, device: torch.device
                          ) -> tuple[list[dict[str, str]], dict[str, float]]:
    """Both models' greedy answers to the same prompts, as rows ``{prompt, reference,
    teacher, student}``, and each model's generation speed (new tokens per second)."""
    ids = [p for p, _ in prompts]
    teacher_texts, teacher_speed = generate_greedy(teacher, tokenizer, ids, max_new_tokens,
                                                   device)
    student_texts, student_speed = generate_greedy(student, tokenizer, ids, max_new_tokens,
                                                   device)
    rows = [{"prompt": tokenizer.decode(p, skip_special_tokens=False),
             "reference": tokenizer.decode(r, skip_special_tokens=True).strip(),
             "teacher": t, "student": s}
            for (p, r), t, s in zip(prompts, teacher_texts, student_texts, strict=True)]
    return rows, {"teacher": teacher_speed, "student": student_speed}
