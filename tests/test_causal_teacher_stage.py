"""task=causal_lm's teacher stage: ``teacher.finetune=true`` trains the teacher with
cross-entropy on the train split's learnt tokens once, caches it by its inputs, and the run
distils from (and evaluates) the fine-tuned teacher."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from distillkit.causal.data import CausalLMData
from distillkit.causal.sources import tiny_text
from distillkit.causal.teacher_stage import cache_key, prepare_causal_teacher
from distillkit.causal.tiny import tiny_llama
from distillkit.engine import EngineSettings
from distillkit.teachers.finetune import FinetuneSettings
from tests.conftest import one_error_line, run_cli

FAST = ["trainer.max_steps=4", "trainer.eval_every_steps=2", "trainer.progress=false"]
ENGINE = EngineSettings(device="cpu", precision="fp32", progress=False, seed=0,
                        eval_batch_size=64)


def _data(examples: int = 24, seed: int = 0) -> tuple[object, CausalLMData]:
    teacher = tiny_llama(seed=0)
    data = CausalLMData(lambda: tiny_text(examples, 8, 8, seed), format="pairs")
    data.tokenize(teacher.tokenizer)
    return teacher, data


def _response_ce(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Cross-entropy of the next token on the learnt (response) tokens, from full logits
    (the batch's labels are already position-aligned: ``labels[b, t]`` is the token position
    ``t`` predicts)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                           ignore_index=-100)


def test_one_step_moves_every_weight_against_the_response_cross_entropy_gradient(
        tmp_path, monkeypatch):
    """With the whole split in one batch, no warm-up and no weight decay, AdamW's first step
    moves each weight by -lr * g / (|g| + eps): against the sign of the gradient of the
    cross-entropy on the response tokens alone, computed here from full logits."""
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path))
    teacher, data = _data()
    batch = next(iter(data.loader("train", len(data.encoded["train"]))))
    given = {n: p.detach().clone() for n, p in teacher.model.named_parameters()}
    teacher.model.zero_grad()
    _response_ce(teacher.model, batch).backward()
    grads = {n: p.grad.detach().clone() for n, p in teacher.model.named_parameters()}
    teacher.model.zero_grad()
    settings = FinetuneSettings(epochs=1, batch_size=len(data.encoded["train"]), lr=1e-3,
                                weight_decay=0.0, warmup_ratio=0.0)
    tuned, info = prepare_causal_teacher(teacher, True, settings, data, ENGINE,
                                         teacher.vocab_size)
    assert tuned.origin == "fine-tuned" and info["origin"] == "fine-tuned"
    assert info["train_examples"] == len(data.encoded["train"])
    after = dict(tuned.model.named_parameters())
    checked = 0
    for name, g in grads.items():
        strong = g.abs() > 1e-4
        delta = after[name].detach() - given[name]
        torch.testing.assert_close(delta[strong], -1e-3 * torch.sign(g[strong]),
                                   rtol=1e-2, atol=2e-6)
        checked += int(strong.sum())
    assert checked > 1000
    for name, p in teacher.model.named_parameters():  # the given teacher is left as it was
        assert torch.equal(p, given[name]), name


def test_the_cache_is_read_back_and_keyed_by_what_determines_the_teacher(
        tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path))
    teacher, data = _data()
    settings = FinetuneSettings(epochs=1, batch_size=8, lr=3e-3)
    tuned, info = prepare_causal_teacher(teacher, True, settings, data, ENGINE,
                                         teacher.vocab_size)
    assert info["eval"]["perplexity"] < info["eval_as_given"]["perplexity"]
    again, info2 = prepare_causal_teacher(teacher, True, settings, data, ENGINE,
                                          teacher.vocab_size)
    assert again.origin == "cache" and info2["key"] == info["key"]
    for (name, p), (_, q) in zip(tuned.model.named_parameters(),
                                 again.model.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    key = info["key"]
    assert cache_key(teacher, data, settings, 0, "fp32") == key
    assert cache_key(teacher, data, settings, 1, "fp32") != key
    assert cache_key(teacher, data, FinetuneSettings(epochs=1, batch_size=8, lr=1e-3), 0,
                     "fp32") != key
    assert cache_key(teacher, _data(seed=1)[1], settings, 0, "fp32") != key
    other = tiny_llama(seed=1)
    assert cache_key(other, data, settings, 0, "fp32") != key


@pytest.mark.parametrize("mode", [False, "auto"])
def test_without_finetune_true_the_teacher_is_used_as_given(mode, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path))
    teacher, data = _data()
    same, info = prepare_causal_teacher(teacher, mode, FinetuneSettings(), data, ENGINE,
                                        teacher.vocab_size)
    assert same is teacher and info is None and same.origin == "as given"
    assert not (tmp_path / "teachers").exists()


def test_frozen_patterns_keep_those_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path))
    teacher, data = _data()
    given = {n: p.detach().clone() for n, p in teacher.model.named_parameters()}
    settings = FinetuneSettings(epochs=1, batch_size=8, lr=3e-3, freeze=["model.embed_tokens.*",
                                                                         "model.layers.0.*"])
    tuned, info = prepare_causal_teacher(teacher, True, settings, data, ENGINE,
                                         teacher.vocab_size)
    frozen = [n for n in given if n.startswith(("model.embed_tokens.", "model.layers.0."))]
    assert info["frozen_parameters"] == sum(given[n].numel() for n in frozen)
    after = dict(tuned.model.named_parameters())
    for name in given:
        assert torch.equal(after[name], given[name]) == (name in frozen), name


@pytest.mark.e2e
def test_the_cli_distils_from_the_fine_tuned_teacher_and_reuses_it(tmp_path):
    runs = {}
    for name, extra in (("given", []), ("tuned", ["teacher.finetune=true",
                                                   "teacher.finetune_settings.lr=3e-3"]),
                        ("again", ["teacher.finetune=true", "teacher.finetune_settings.lr=3e-3",
                                   "loss.alpha=0.8"])):
        proc = run_cli(["experiment=tiny_causal_lm", *FAST, *extra,
                        f"hydra.run.dir={tmp_path / name}"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = (json.loads((tmp_path / name / "metrics.json").read_text()),
                      proc.stdout + proc.stderr)
    given, tuned, again = (runs[n][0] for n in ("given", "tuned", "again"))
    assert given["stages"]["teacher"] == "as given" and "teacher_finetune" not in given
    assert tuned["stages"]["teacher"] == "fine-tuned"
    assert again["stages"]["teacher"] == "cache"
    assert "fine-tuning causal teacher" in runs["tuned"][1]
    assert "fine-tuning causal teacher" not in runs["again"][1]
    record = tuned["teacher_finetune"]
    assert record["settings"]["lr"] == 3e-3 and record["key"] == again["teacher_finetune"]["key"]
    # the final evaluation scores the fine-tuned teacher: better than the given one, the same
    # in the run that read it from the cache
    assert tuned["teacher"]["perplexity"] < given["teacher"]["perplexity"]
    assert again["teacher"]["perplexity"] == tuned["teacher"]["perplexity"]


@pytest.mark.e2e
def test_meta_kd_fine_tune_settings_are_refused_in_one_line(tmp_path):
    proc = run_cli(["experiment=tiny_causal_lm", *FAST, "teacher.finetune=true",
                    "+teacher.finetune_settings.domains=all",
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    one_error_line(proc.returncode, proc.stdout + proc.stderr,
                   ["teacher.finetune_settings domains", "task=classification only"])
