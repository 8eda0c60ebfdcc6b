"""TokenDistillationLoss on tiny random Llamas (no download): the model keys, vocabulary padding
rows, labels shifted for the next token, and a few steps of training towards the teacher."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from distillkit.causal.divergences import ForwardKL, ReverseKL
from distillkit.causal.tiny import TINY_CAUSAL_WORDS, tiny_causal_tokenizer, tiny_llama
from distillkit.causal.token_loss import TokenDistillationLoss, shift_for_next_token
from distillkit.causal.vocab import align_vocab
from distillkit.errors import ModelError

TEXTS = ["what is the capital of france ? paris .", "the answer is 4 ."]


@pytest.fixture(scope="module")
def pair():
    teacher = tiny_llama(num_layers=2, hidden_size=32, seed=0, vocab_size=len(
        tiny_causal_tokenizer()) + 6)  # padded output rows, as SmolLM2-style checkpoints
    student = tiny_llama(num_layers=1, hidden_size=16, intermediate_size=32, num_heads=2,
                         num_kv_heads=1, seed=1)
    batch = student.tokenizer(TEXTS, return_tensors="pt", padding=True)
    batch["labels"] = shift_for_next_token(batch["input_ids"], batch["attention_mask"])
    return teacher, student, batch


def outputs(model, batch, lean):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=lean)
    if not lean:
        return {"logits": out.logits}
    return {"hidden_states_last": out.hidden_states[-1], "lm_head": model.get_output_embeddings()}


def test_padding_rows_are_aligned_and_the_lean_keys_match_logits(pair, caplog):
    teacher, student, batch = pair
    with caplog.at_level(logging.WARNING, logger="distillkit.causal.vocab"):
        size = align_vocab(student.vocab_size, teacher.vocab_size,
                           student.tokenizer.get_vocab(), teacher.tokenizer.get_vocab())
    assert size == student.vocab_size == len(student.tokenizer) < teacher.vocab_size
    assert len(caplog.records) == 1
    loss = TokenDistillationLoss(ReverseKL(), temperature=2.0, alpha=0.7, chunk_tokens=5,
                                 vocab_size=size)
    with torch.no_grad():
        t_lean = outputs(teacher.model, batch, lean=True)
        t_full = outputs(teacher.model, batch, lean=False)
    assert t_full["logits"].shape[-1] == size + 6
    lean = loss(outputs(student.model, batch, lean=True), t_lean, batch)
    full = loss(outputs(student.model, batch, lean=False), t_full, batch)
    torch.testing.assert_close(lean.total, full.total, rtol=1e-4, atol=1e-5)
    # the CE term is the model's own next-token loss on the same tokens (HF shifts internally)
    hf = student.model(**{k: batch[k] for k in ("input_ids", "attention_mask")},
                       labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    torch.testing.assert_close(full.terms["hard"], hf.loss, rtol=1e-4, atol=1e-5)


def test_other_tokenizers_are_refused(pair):
    teacher, _, _ = pair
    shorter = tiny_causal_tokenizer(("cat", "dog", "runs"))
    with pytest.raises(ModelError, match="tokenizers differ"):
        align_vocab(len(shorter), teacher.vocab_size, shorter.get_vocab(),
                    teacher.tokenizer.get_vocab())
    same_length = tiny_causal_tokenizer(TINY_CAUSAL_WORDS[:-1] + ("zebra",))
    assert len(same_length) == len(teacher.tokenizer)
    with pytest.raises(ModelError, match=r"token 'question' is id \d+ for the teacher, None "):
        align_vocab(len(same_length), teacher.vocab_size, same_length.get_vocab(),
                    teacher.tokenizer.get_vocab())


def test_a_few_steps_move_the_student_towards_the_teacher(pair):
    teacher, _, batch = pair
    student = tiny_llama(num_layers=1, hidden_size=16, intermediate_size=32, num_heads=2,
                         num_kv_heads=1, seed=2).model
    size = student.config.vocab_size
    loss = TokenDistillationLoss(ForwardKL(), temperature=1.0, alpha=1.0, chunk_tokens=4,
                                 vocab_size=size)
    with torch.no_grad():
        target = {"logits": outputs(teacher.model, batch, lean=False)["logits"][..., :size]}
    counted = (batch["labels"] != -100) & batch["attention_mask"].bool()

    def kl() -> float:  # forward KL to the teacher on the counted tokens, by torch itself
        with torch.no_grad():
            z = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                        ).logits[counted]
            return F.kl_div(F.log_softmax(z, -1), F.log_softmax(target["logits"][counted], -1),
                            log_target=True, reduction="batchmean").item()

    before = kl()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(15):
        optimizer.zero_grad()
        loss(outputs(student, batch, lean=True), target, batch).total.backward()
        optimizer.step()
    assert kl() < 0.5 * before
