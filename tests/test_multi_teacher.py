"""Multi-teacher distillation (``teacher=ensemble``): combining, checks, features, caches, CLI."""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pytest
import torch
from transformers import DistilBertConfig, DistilBertForSequenceClassification

from distillkit.data import TextClassificationData, synthetic_nli
from distillkit.engine import EngineSettings
from distillkit.errors import ConfigError, ModelError
from distillkit.losses import KDLoss
from distillkit.losses.mapping import uniform_mapping
from distillkit.models import (
    ModelBundle,
    TeacherEnsemble,
    combine_logits,
    teacher_ensemble,
    tiny_teacher,
)
from distillkit.models.ensemble import normalised_weights
from distillkit.models.tokenizers import tiny_tokenizer
from distillkit.reporting.hparams import hparams_of
from distillkit.teachers.outputs import attach_teacher_logits
from distillkit.teachers.setup import _build_member, live_teacher, student_basis
from tests.conftest import TINY_RUN, run_cli

LABELS = ["entailment", "neutral", "contradiction"]


def _members():
    """A tiny BERT (2 layers, hidden 32) and a tiny ELECTRA (3 layers, hidden 48; 4 heads)."""
    torch.manual_seed(0)
    members = {"small": tiny_teacher(labels=LABELS),
               "wide": tiny_teacher(architecture="electra", num_layers=3, hidden_size=48,
                                    num_heads=4, intermediate_size=96, labels=LABELS)}
    for member in members.values():
        member.model.eval()  # no dropout: outputs comparable across calls
    return members


def _inputs(tokenizer):
    return dict(tokenizer(["a man runs", "the dog sleeps in the park"],
                          ["yes he is", "no"], padding=True, return_tensors="pt"))


# -- combining ------------------------------------------------------------------------------
def test_mean_logits_equal_and_weighted():
    a, b = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 0.0, -3.0]])
    assert torch.equal(combine_logits([a, b], [0.5, 0.5]), torch.tensor([[2.0, 1.0, 0.0]]))
    assert torch.allclose(combine_logits([a, b], [0.25, 0.75]),
                          torch.tensor([[2.5, 0.5, -1.5]]))


def test_mean_probs_is_log_of_mixture():
    a = torch.tensor([[0.0, 0.0]])  # probabilities 0.5, 0.5
    b = torch.tensor([[math.log(3.0), 0.0]])  # 0.75, 0.25
    z = combine_logits([a, b], [0.5, 0.5], "mean_probs")
    assert torch.allclose(z, torch.log(torch.tensor([[0.625, 0.375]])))
    z = combine_logits([a, b], [0.0, 1.0], "mean_probs")  # weight 0: the other member alone
    assert torch.allclose(torch.softmax(z, -1), torch.tensor([[0.75, 0.25]]))


def test_weights_normalised_from_null_list_or_dict():
    assert normalised_weights(["a", "b"], None) == {"a": 0.5, "b": 0.5}
    assert normalised_weights(["a", "b"], [1, 3]) == {"a": 0.25, "b": 0.75}
    assert normalised_weights(["a", "b"], {"b": 2}) == {"a": 0.0, "b": 1.0}
    for bad, message in (([1], "1 values for 2 members"), ({"c": 1}, "not members"),
                         ([0, 0], "not all 0"), ([1, -1], ">= 0")):
        with pytest.raises(ConfigError, match=message):
            normalised_weights(["a", "b"], bad)


def test_ensemble_forward_combines_members_and_reports_chosen_features():
    members = _members()
    ens = teacher_ensemble(members, weights=[1, 3], intermediate_teacher="wide", labels=LABELS)
    inputs = _inputs(ens.tokenizer)
    with torch.no_grad():
        out = ens.model(**inputs, output_hidden_states=True, output_attentions=True)
        z_small = members["small"].model(**inputs).logits
        z_wide = members["wide"].model(**inputs).logits
    assert torch.allclose(out.logits, 0.25 * z_small + 0.75 * z_wide, atol=1e-6)
    assert len(out.hidden_states) == 4 and out.hidden_states[-1].shape[-1] == 48
    assert out.attentions[0].shape[1] == 4  # the wide member's 4 heads
    assert (ens.num_layers, ens.hidden_size) == (3, 48)
    assert student_basis(ens) is members["wide"]
    total = sum(p.numel() for m in members.values() for p in m.model.parameters())
    assert sum(p.numel() for p in ens.model.parameters()) == total


def test_zero_weight_member_is_not_run_for_logits():
    members = _members()
    ens = teacher_ensemble(members, weights={"small": 1.0}, intermediate_teacher="wide",
                           labels=LABELS)
    calls = []
    members["wide"].model.register_forward_hook(lambda *_: calls.append(1))
    inputs = _inputs(ens.tokenizer)
    with torch.no_grad():
        logits = ens.model(**inputs).logits
        assert torch.allclose(logits, members["small"].model(**inputs).logits)
        assert not calls
        ens.model(**inputs, output_hidden_states=True)  # features: the chosen member runs
    assert calls


def test_member_of_another_architecture_gets_only_its_inputs():
    tok = tiny_tokenizer()
    config = DistilBertConfig(vocab_size=len(tok), dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                              max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                              num_labels=3, id2label=dict(enumerate(LABELS)),
                              label2id={n: i for i, n in enumerate(LABELS)})
    distil = ModelBundle(DistilBertForSequenceClassification(config), tok, "tiny-distilbert")
    ens = teacher_ensemble({"bert": tiny_teacher(labels=LABELS), "distil": distil},
                           labels=LABELS)
    inputs = _inputs(tok)
    assert "token_type_ids" in inputs  # DistilBERT's forward does not take them
    with torch.no_grad():
        assert ens.model(**inputs).logits.shape == (2, 3)


# -- checks ---------------------------------------------------------------------------------
def test_label_count_mismatch_names_the_member():
    members = {"small": tiny_teacher(labels=LABELS), "two": tiny_teacher(labels=LABELS[:2])}
    with pytest.raises(ConfigError, match=r"teacher\.members\.two .*predicts 2 labels"):
        teacher_ensemble(members, labels=LABELS)


def test_label_order_mismatch_names_the_member():
    members = {"small": tiny_teacher(labels=LABELS),
               "flipped": tiny_teacher(labels=LABELS[::-1])}
    with pytest.raises(ConfigError, match=r"teacher\.members\.flipped.*data's order"):
        teacher_ensemble(members, labels=LABELS)


def test_hub_member_head_with_other_label_order_is_refused(tmp_path):
    other = tiny_teacher(labels=LABELS[::-1])
    other.model.save_pretrained(tmp_path / "m")
    other.tokenizer.save_pretrained(tmp_path / "m")
    spec = {"_target_": "distillkit.models.pretrained_classifier", "_partial_": True,
            "name_or_path": str(tmp_path / "m")}
    with pytest.raises(ModelError, match=r"label-order mismatch: teacher\.members\.hub\."
                                         r"name_or_path"):
        _build_member("hub", spec, LABELS)
    with pytest.raises(ModelError,
                       match=r"label-count mismatch: teacher\.members\.hub\.name_or_path"):
        _build_member("hub", spec, LABELS[:2])


def test_member_without_model_is_refused():
    offline = ModelBundle(model=None, tokenizer=tiny_tokenizer(), name="logits.tsv")
    with pytest.raises(ConfigError, match=r"teacher\.members\.file .*has no model"):
        teacher_ensemble({"small": tiny_teacher(labels=LABELS), "file": offline},
                         labels=LABELS)


def test_vocab_mismatch_names_the_member():
    members = {"small": tiny_teacher(labels=LABELS),
               "zoo": tiny_teacher(words=["zebra", "quokka"], labels=LABELS)}
    with pytest.raises(ModelError, match=r"teacher\.members\.zoo .*vocabulary|vocabulary.*"
                                         r"teacher\.members\.zoo"):
        teacher_ensemble(members, labels=LABELS)


def test_unknown_intermediate_teacher_and_combine():
    with pytest.raises(ConfigError, match="intermediate_teacher='big' is not a member"):
        teacher_ensemble(_members(), intermediate_teacher="big", labels=LABELS)
    with pytest.raises(ConfigError, match="teacher.combine='max'"):
        teacher_ensemble(_members(), combine="max", labels=LABELS)


# -- intermediate terms read the chosen member ----------------------------------------------
@pytest.mark.parametrize(("chosen", "depth"), [("small", 2), ("wide", 3)])
def test_mapping_resolves_against_the_intermediate_member(chosen, depth):
    ens = teacher_ensemble(_members(), intermediate_teacher=chosen, labels=LABELS)
    pairs = uniform_mapping(teacher_layers=ens.num_layers, student_layers=2)
    assert max(p.teacher for p in pairs) == depth


def test_live_teacher_without_logits_runs_only_the_chosen_member():
    ens = teacher_ensemble(_members(), intermediate_teacher="wide", labels=LABELS)

    class Logits(KDLoss):  # the contract's default: the whole teacher runs
        def forward(self, student, teacher, batch):
            raise AssertionError("not called")

    class Features(Logits):  # a loss that reads teacher layers up to 2 and never its logits
        def teacher_depth(self):
            return 2
    model = live_teacher(ens, Features())
    assert model.config.num_hidden_layers == 2 and not isinstance(model, TeacherEnsemble)
    assert live_teacher(ens, Logits()) is ens.model


# -- teacher-output cache -------------------------------------------------------------------
def test_cached_logits_per_member_then_combined(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path))
    data = TextClassificationData(
        partial(synthetic_nli, n_train=24, n_validation=8, n_test=8, seed=0),
        text_column="premise", text_pair_column="hypothesis", labels=LABELS, test_split="test")
    data.tokenize(tiny_tokenizer())
    settings = EngineSettings(device="cpu", precision="fp32", teacher_precision="fp32",
                              progress=False, eval_batch_size=8)
    members = _members()
    ens = teacher_ensemble(members, weights=[1, 3], combine="mean_probs", labels=LABELS)
    assert attach_teacher_logits(ens, data, settings) == {"train": "computed"}
    files = sorted(p.name for p in (tmp_path / "teacher_outputs").glob("*.npy"))
    assert len(files) == 3 and files[-1].startswith("ensemble-")
    combined = np.asarray(data.teacher_logits["train"])
    parts = []
    for member in members.values():  # each member's file is the one it uses alone
        assert attach_teacher_logits(member, data, settings) == {"train": "cache"}
        parts.append(torch.from_numpy(np.array(data.teacher_logits["train"])))
    expected = torch.log(0.25 * parts[0].softmax(-1) + 0.75 * parts[1].softmax(-1))
    assert np.allclose(combined, expected.numpy(), atol=1e-6)
    assert attach_teacher_logits(ens, data, settings) == {"train": "cache"}
    other = teacher_ensemble(members, weights=[1, 1], labels=LABELS)  # members' files reused
    assert attach_teacher_logits(other, data, settings) == {"train": "computed"}
    assert len(list((tmp_path / "teacher_outputs").glob("*.npy"))) == 4


# -- config and CLI -------------------------------------------------------------------------
def test_members_are_teacher_options_overridable_from_the_command_line(compose_cfg):
    cfg = compose_cfg(["teacher=ensemble"])
    assert list(cfg.teacher.members) == ["small", "wide"]
    assert cfg.teacher.members.wide.architecture == "electra"
    cfg = compose_cfg(["teacher=ensemble", "teacher@teacher.members.wide=minilm6",
                       "+teacher@teacher.members.third=tiny", "teacher.weights=[1,2,3]",
                       "teacher.intermediate_teacher=third"])
    assert cfg.teacher.members.wide.asset == "minilm6" and "num_layers" not in \
        cfg.teacher.members.wide
    assert list(cfg.teacher.members) == ["small", "wide", "third"]
    cfg = compose_cfg(["teacher=ensemble", "~teacher@teacher.members.wide"])
    assert list(cfg.teacher.members) == ["small"]


def test_hparams_name_the_member_options(compose_cfg):
    overrides = ["teacher=ensemble", "teacher@teacher.members.wide=minilm6",
                 "teacher.weights=[1,3]"]
    cfg = compose_cfg(overrides, return_hydra_config=True)
    hparams = hparams_of(cfg, overrides, dict(cfg.hydra.runtime.choices))
    assert hparams["teacher"] == "ensemble"
    assert hparams["teacher@teacher.members.wide"] == "minilm6"
    assert hparams["teacher.weights"] == "[1, 3]"


@pytest.mark.e2e
def test_cli_two_teachers_of_different_architecture(tmp_path):
    args = [*TINY_RUN, "teacher=ensemble", "export_student=false"]
    kd = run_cli([*args, f"hydra.run.dir={tmp_path / 'kd'}"], cwd=tmp_path)
    assert kd.returncode == 0, kd.stdout[-3000:] + kd.stderr[-3000:]
    metrics = json.loads((tmp_path / "kd" / "metrics.json").read_text())
    ens = metrics["ensemble"]
    assert ens["combine"] == "mean_logits" and ens["weights"] == {"small": 0.5, "wide": 0.5}
    members = ens["members"]
    assert set(members) == {"small", "wide"} and "electra" in members["wide"]["model"]
    for m in members.values():
        assert 0 <= m["accuracy"] <= 1 and m["examples"] == metrics["teacher"]["examples"]
        assert m["origin"] == "fine-tuned"
    assert metrics["params"]["teacher"] == sum(m["params"] for m in members.values())
    assert metrics["retention"] == pytest.approx(
        metrics["student"]["accuracy"] / metrics["teacher"]["accuracy"])
    assert metrics["stages"]["teacher"] == {"small": "fine-tuned", "wide": "fine-tuned"}
    assert metrics["stages"]["teacher_targets"] == {"train": "computed"}
    assert "teacher = ensemble of 2" in kd.stdout + kd.stderr

    # intermediate terms on the 3-layer, hidden-48 member; members from the teacher cache
    feat = run_cli([*args, "loss=tinybert", "teacher.intermediate_teacher=wide",
                    "teacher.weights=[1,3]", "teacher.combine=mean_probs",
                    f"hydra.run.dir={tmp_path / 'feat'}"], cwd=tmp_path)
    assert feat.returncode == 0, feat.stdout[-3000:] + feat.stderr[-3000:]
    metrics = json.loads((tmp_path / "feat" / "metrics.json").read_text())
    assert metrics["stages"]["teacher"] == {"small": "cache", "wide": "cache"}
    assert metrics["ensemble"]["weights"] == {"small": 0.25, "wide": 0.75}
    mapping = json.loads((tmp_path / "feat" / "mapping.json").read_text())
    assert max(p["teacher"] for p in mapping["pairs"]) == 3
    assert "32->48" in feat.stdout + feat.stderr  # projections to the wide member's width


@pytest.mark.e2e
def test_cli_bad_member_choice_is_one_error_line(tmp_path):
    proc = run_cli([*TINY_RUN, "teacher=ensemble", "teacher.intermediate_teacher=big",
                    f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and "intermediate_teacher='big' is not a member" in errors[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "dk-cache" / "teachers").exists()
