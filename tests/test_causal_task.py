"""task=causal_lm's parts: the lean wrapper the loop runs, the loss options, the held-out
metrics, and the task's refusal of other tasks' options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from distillkit.causal.data import CausalLMData
from distillkit.causal.divergences import ForwardKL, GeneralizedJSD, SkewKL, TotalVariation
from distillkit.causal.evaluate import score_models
from distillkit.causal.lean import LeanCausalLM
from distillkit.causal.losses import causal_kd
from distillkit.causal.models import small_llama_student
from distillkit.causal.sources import tiny_text
from distillkit.causal.tiny import tiny_llama
from distillkit.causal.token_loss import TokenDistillationLoss
from distillkit.engine.outputs import plain_outputs
from distillkit.errors import ConfigError
from distillkit.tasks.base import check_options
from distillkit.tasks.causal_lm import CausalLMTask
from distillkit.tasks.classification import ClassificationTask
from distillkit.tasks.seq2seq import Seq2SeqTask


@pytest.fixture(scope="module")
def models_and_batch():
    teacher = tiny_llama(seed=0)
    student = small_llama_student(1, 16, 32, 2, 1, seed=1, teacher=teacher)
    data = CausalLMData(lambda: tiny_text(8, 4, 0), format="pairs")
    data.tokenize(teacher.tokenizer)
    return teacher.model, student.model, next(iter(data.loader("train", 8))), data


def test_lean_wrapper_gives_the_models_last_hidden_states_and_head(models_and_batch):
    _, student, batch, _ = models_and_batch
    out = LeanCausalLM(student)(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"], loss_row=batch["loss_row"])
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert out["lm_head"] is student.lm_head
    torch.testing.assert_close(out["lm_head"](out["hidden_states_last"]), logits)
    assert dict(LeanCausalLM(student).named_parameters()).keys() == {
        f"model.{name}" for name, _ in student.named_parameters()}


def test_plain_outputs_pass_the_output_layer_through(models_and_batch):
    teacher, _, batch, _ = models_and_batch
    out = LeanCausalLM(teacher)(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"])
    plain = plain_outputs(out)
    assert plain["lm_head"] is teacher.lm_head
    assert plain["hidden_states_last"].dtype == torch.float32


def test_lean_loss_equals_the_loss_on_full_logits(models_and_batch):
    teacher, student, batch, _ = models_and_batch
    loss = causal_kd("fkl", temperature=2.0, alpha=0.5)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    lean = loss(LeanCausalLM(student)(**inputs), plain_outputs(LeanCausalLM(teacher)(**inputs)),
                batch)
    full = loss({"logits": student(**inputs).logits}, {"logits": teacher(**inputs).logits}, batch)
    torch.testing.assert_close(lean.total, full.total)


@pytest.mark.parametrize(("name", "kind", "attr", "value"), [
    ("fkl", ForwardKL, None, None), ("jsd", GeneralizedJSD, "beta", 0.3),
    ("tvd", TotalVariation, None, None), ("skl", SkewKL, "skew", 0.2)])
def test_causal_kd_builds_the_named_divergence(name, kind, attr, value):
    loss = causal_kd(name, temperature=2.0, alpha=0.7, beta=0.3, skew=0.2, vocab_size=11)
    assert isinstance(loss, TokenDistillationLoss) and type(loss.divergence) is kind
    assert (loss.temperature, loss.alpha, loss.vocab_size) == (2.0, 0.7, 11)
    if attr is not None:
        assert vars(loss.divergence)[attr] == value


def test_unknown_divergence_lists_the_names():
    with pytest.raises(ConfigError, match="loss.divergence='kl2'.*fkl, rkl, jsd, tvd, skl, srkl"):
        causal_kd("kl2")


def test_held_out_metrics_match_a_direct_computation(models_and_batch):
    teacher, student, batch, _ = models_and_batch
    scores = score_models(student, teacher, [batch], torch.device("cpu"), vocab_size=107,
                          chunk_tokens=5)
    with torch.no_grad():
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        log_q = F.log_softmax(student(**inputs).logits, -1)
        log_p = F.log_softmax(teacher(**inputs).logits, -1)
    mask = batch["labels"] != -100
    y = batch["labels"][mask]
    q, p = log_q[mask], log_p[mask]
    n = int(mask.sum())
    ce_s = float(-q.gather(-1, y[:, None]).sum()) / n
    ce_t = float(-p.gather(-1, y[:, None]).sum()) / n
    assert scores["student"]["tokens"] == n
    assert scores["student"]["perplexity"] == pytest.approx(math.exp(ce_s), rel=1e-4)
    assert scores["teacher"]["perplexity"] == pytest.approx(math.exp(ce_t), rel=1e-4)
    assert scores["student"]["neg_perplexity"] == -scores["student"]["perplexity"]
    assert scores["student"]["agreement"] == pytest.approx(
        float((p.argmax(-1) == q.argmax(-1)).float().mean()))
    assert scores["student"]["kl"] == pytest.approx(
        float((p.exp() * (p - q)).sum(-1).mean()), rel=1e-4)


def _cfg(teacher="distillkit.causal.tiny.tiny_llama",
         student="distillkit.causal.models.small_llama_student",
         data="distillkit.causal.data.CausalLMData", loss="distillkit.causal.losses.causal_kd"):
    return OmegaConf.create({"teacher": {"_target_": teacher}, "student": {"_target_": student},
                             "data": {"_target_": data}, "loss": {"_target_": loss}})


def test_each_task_accepts_its_own_options_and_names_the_owner_of_others():
    causal = CausalLMTask("causal_lm", {"distil": []})
    classification = ClassificationTask("classification", {"distil": []})
    seq2seq = Seq2SeqTask("seq2seq", {"distil": []})
    check_options(_cfg(), causal)
    with pytest.raises(ConfigError, match=r"data \(distillkit.data.TextClassificationData\) is "
                                          r"a classification option but task=causal_lm; add "
                                          r"task=classification, or pick a causal_lm option"):
        check_options(_cfg(data="distillkit.data.TextClassificationData"), causal)
    with pytest.raises(ConfigError, match=r"teacher \(distillkit.causal.tiny.tiny_llama\) is a "
                                          r"causal_lm option but task=classification; add "
                                          r"task=causal_lm"):
        check_options(_cfg(), classification)
    with pytest.raises(ConfigError, match="is a causal_lm option but task=seq2seq"):
        check_options(_cfg(), seq2seq)
    with pytest.raises(ConfigError, match="is a seq2seq option but task=causal_lm"):
        check_options(_cfg(loss="distillkit.seq2seq.StepByStepLoss"), causal)


def test_causal_hub_remote_code_from_a_config_file_is_refused(compose_cfg):
    """teacher=causal_hub goes through the same checks as teacher=hub: trust_remote_code=true
    counts only when given on the command line."""
    from distillkit.errors import UnsafeConfigError
    from distillkit.security.safety import OptIns, check_config

    cfg = compose_cfg(["experiment=tiny_causal_lm", "teacher=causal_hub",
                       "teacher.name_or_path=some/model"])
    check_config(cfg, OptIns())
    cfg.teacher.trust_remote_code = True  # as an experiment file would set it
    with pytest.raises(UnsafeConfigError, match="teacher.trust_remote_code=True comes from a "
                                                "config file"):
        check_config(cfg, OptIns())
    check_config(cfg, OptIns(remote_code=frozenset({"teacher.trust_remote_code"})))
