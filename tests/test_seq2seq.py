"""Seq2seq distillation units: word-level KD (analytic), step by step, data, generation files."""

from __future__ import annotations

import math

import pytest
import torch

from distillkit.errors import ConfigError
from distillkit.losses import KLDivergence, SoftTargetCrossEntropy
from distillkit.seq2seq import (
    Seq2SeqData,
    StepByStepLoss,
    TokenDistillationLoss,
    arith_word_problems,
    t5_from_scratch,
)
from distillkit.seq2seq.evaluate import exact_match, score
from distillkit.seq2seq.generation import GenerationSettings, generate, write_parallel


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def test_word_kd_is_zero_for_identical_distributions():
    logits = torch.randn(2, 3, 7)
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    loss = TokenDistillationLoss(kd=KLDivergence(), temperature=3.0, alpha=1.0)
    out = loss({"logits": logits}, {"logits": logits.clone()}, {"labels": labels})
    assert out.terms["kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert "hard" not in out.terms


def test_word_kd_known_value_temperature_squared_and_padding_masked():
    # position 0: teacher [ln 3, 0] -> p = (0.75, 0.25), student uniform; position 1 is padding
    teacher = torch.tensor([[[math.log(3.0), 0.0], [50.0, -50.0]]])
    student = torch.tensor([[[0.0, 0.0], [-50.0, 50.0]]])
    labels = torch.tensor([[0, -100]])
    loss = TokenDistillationLoss(kd=KLDivergence(), temperature=1.0, alpha=1.0)
    out = loss({"logits": student}, {"logits": teacher}, {"labels": labels})
    assert out.total.item() == pytest.approx(_kl([0.75, 0.25], [0.5, 0.5]), rel=1e-5)
    # T = 2: softmax(z_t / 2) = (sqrt 3, 1) / (sqrt 3 + 1), scaled by T^2 = 4
    p = [math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1)]
    out = TokenDistillationLoss(kd=KLDivergence(), temperature=2.0, alpha=1.0)(
        {"logits": student}, {"logits": teacher}, {"labels": labels})
    assert out.total.item() == pytest.approx(4 * _kl(p, [0.5, 0.5]), rel=1e-5)


def test_word_kd_mixes_with_token_ce_by_alpha():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    labels = torch.randint(0, 5, (3, 4))
    labels[0, 2:] = -100
    batch = {"labels": labels}
    kd_only = TokenDistillationLoss(kd=SoftTargetCrossEntropy(), temperature=2.0, alpha=1.0)
    hard_only = TokenDistillationLoss(kd=None, alpha=0.0)
    mixed = TokenDistillationLoss(kd=SoftTargetCrossEntropy(), temperature=2.0, alpha=0.3)
    kd = kd_only({"logits": student}, {"logits": teacher}, batch).total
    hard = hard_only({"logits": student}, None, batch).total
    ce = torch.nn.functional.cross_entropy(student.reshape(-1, 5), labels.reshape(-1))
    assert hard.item() == pytest.approx(ce.item(), rel=1e-5)  # mean over real tokens only
    total = mixed({"logits": student}, {"logits": teacher}, batch).total
    assert total.item() == pytest.approx(0.3 * kd.item() + 0.7 * hard.item(), rel=1e-5)
    assert not hard_only.needs_teacher and mixed.needs_teacher


def test_word_kd_refuses_bad_settings():
    with pytest.raises(ConfigError, match="loss.alpha must be in"):
        TokenDistillationLoss(kd=KLDivergence(), alpha=2.0)
    with pytest.raises(ConfigError, match="loss.kd is null"):
        TokenDistillationLoss(kd=None, alpha=0.5)
    with pytest.raises(ConfigError, match="different prefixes"):
        StepByStepLoss(label_prefix="x: ", rationale_prefix="x: ")


def test_step_by_step_weights_label_and_rationale_losses():
    torch.manual_seed(1)
    logits = torch.randn(4, 3, 6)
    labels = torch.randint(0, 6, (4, 3))
    task = torch.tensor([0, 1, 0, 1])
    batch = {"labels": labels, "loss_task": task}
    out = StepByStepLoss(alpha=0.25)({"logits": logits}, None, batch)

    def ce(rows):
        return torch.nn.functional.cross_entropy(logits[rows].reshape(-1, 6),
                                                 labels[rows].reshape(-1)).item()
    label, rationale = ce(task == 0), ce(task == 1)
    assert out.terms["label"].item() == pytest.approx(label, rel=1e-5)
    assert out.terms["rationale"].item() == pytest.approx(rationale, rel=1e-5)
    assert out.total.item() == pytest.approx(0.25 * label + 0.75 * rationale, rel=1e-5)
    only_labels = StepByStepLoss(alpha=1.0)({"logits": logits}, None, batch)
    assert set(only_labels.terms) == {"label"}
    assert only_labels.total.item() == pytest.approx(label, rel=1e-5)


def test_arith_generator_is_deterministic_and_rationales_end_in_the_label():
    a = arith_word_problems(n_train=50, n_validation=5, n_test=5, seed=3)
    b = arith_word_problems(n_train=50, n_validation=5, n_test=5, seed=3)
    assert a["train"].to_list() == b["train"].to_list()
    rows = a["train"].to_list()
    assert {r["steps"] for r in rows} == {1, 2} and len({r["template"] for r in rows}) >= 5
    for row in rows:
        steps = [s for s in row["rationale"].split(" .") if s.strip()]
        assert len(steps) == row["steps"]
        assert steps[-1].split("= ")[-1] == row["label"]
        lhs, rhs = steps[0].split(" = ")
        assert eval(lhs.replace("/", "//")) == int(rhs)  # noqa: S307 - generated arithmetic


def _arith_data(**kwargs) -> Seq2SeqData:
    return Seq2SeqData(source=lambda: arith_word_problems(n_train=6, n_validation=2, n_test=2),
                       source_column="question", target_column="label",
                       rationale_column="rationale", test_split="test", **kwargs)


def test_step_by_step_builds_both_task_inputs():
    data = _arith_data()
    data.use_step_by_step("predict: ", "explain: ", "target_column", "rationale_column")
    raw = data.raw["train"][0]
    assert data.parts["train"][0] == [("predict: " + raw["question"], raw["label"], 0),
                                      ("explain: " + raw["question"], raw["rationale"], 1)]
    bundle = t5_from_scratch(num_layers=1, d_model=16, d_ff=32, num_heads=2)
    data.tokenize(bundle.tokenizer, bundle.model.config.decoder_start_token_id)
    batch = next(iter(data.loader("train", 3)))
    assert batch["loss_task"].tolist() == [0, 1, 0, 1, 0, 1]
    assert batch["input_ids"].shape[0] == 6
    tok = bundle.tokenizer
    assert tok.decode(batch["input_ids"][1], skip_special_tokens=True).startswith("explain :")
    real = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert tok.decode(real, skip_special_tokens=True) == raw["label"]
    assert real[-1] == bundle.model.config.eos_token_id  # targets end with [SEP]
    # decoder inputs are the labels shifted right after the start token
    assert batch["decoder_input_ids"][0, 0].item() == data.decoder_start_token_id
    assert batch["decoder_input_ids"][0, 1:len(real)].tolist() == real[:-1]
    # the labels-only parts are the same model inputs as the step-by-step label parts
    assert data.sources("test", "predict: ")[0].startswith("predict: ")


def test_generation_files_are_clean_and_match_generate(tmp_path):
    torch.manual_seed(0)
    bundle = t5_from_scratch(num_layers=1, d_model=16, d_ff=32, num_heads=2)
    data = _arith_data()
    data.tokenize(bundle.tokenizer, bundle.model.config.decoder_start_token_id)
    sources = data.sources("train")
    settings = GenerationSettings(num_beams=2, n_best=2, max_new_tokens=5, batch_size=4)
    texts, scores = generate(bundle.model, bundle.tokenizer, data.encode_sources(sources),
                             settings, torch.device("cpu"))
    assert all(len(t) == 2 and len(s) == 2 for t, s in zip(texts, scores, strict=True))
    files = write_parallel(tmp_path, "train", [s + "\tx\ny" for s in sources], texts, scores)
    src = (tmp_path / "train.src").read_text().split("\n")[:-1]
    tgt = (tmp_path / "train.tgt").read_text().split("\n")[:-1]
    sc = (tmp_path / "train.scores").read_text().split("\n")[:-1]
    assert len(src) == len(tgt) == len(sc) == 2 * len(sources) and files["tgt"]
    assert all("\t" not in line for line in src + tgt)
    assert tgt == [t for pair in texts for t in pair]
    assert [float(x) for x in sc] == [s for pair in scores for s in pair]


def test_metrics_exact_match_and_sacrebleu():
    assert exact_match("16", " 16 ") and exact_match("16.0", "16") and not exact_match("6", "16")
    m = score(["the cat sat on the mat", "12"], ["the cat sat on the mat", "13"])
    assert m["exact_match"] == 0.5 and 0 < m["bleu"] < 100 and 0 < m["chrf"] < 100


def test_generation_settings_checked():
    with pytest.raises(ConfigError, match="n_best=3 > loss.sequence_kd.num_beams=2"):
        GenerationSettings.from_config({"num_beams": 2, "n_best": 3}, "loss.sequence_kd")
    with pytest.raises(ConfigError, match="unknown key"):
        GenerationSettings.from_config({"beams": 2}, "loss.sequence_kd")


@pytest.mark.assets
def test_bert2bert_minilm_is_a_warm_started_encoder_decoder():
    from distillkit.seq2seq import bert2bert_minilm
    from distillkit.seq2seq.models import vocab_size

    bundle = bert2bert_minilm()
    model, tok = bundle.model, bundle.tokenizer
    assert vocab_size(model) == len(tok) == 30522
    assert model.config.decoder_start_token_id == tok.cls_token_id
    assert model.config.eos_token_id == tok.sep_token_id
    enc = tok(["tom has 3 pens ."], return_tensors="pt")
    assert set(enc) == {"input_ids", "attention_mask"}  # no token_type_ids for generate
    student = t5_from_scratch(num_layers=1, d_model=16, d_ff=32, num_heads=2, teacher=bundle)
    assert vocab_size(student.model) == 30522
    out = model.generate(**enc, max_new_tokens=3)
    assert out.shape[0] == 1 and out[0, 0].item() == tok.cls_token_id
