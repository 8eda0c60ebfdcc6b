"""Meta-KD (Pan et al., 2021): prototype scores, sample and expertise weights, domain data,
and the two-stage graph (meta-teacher stage, then the student stage) through the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distillkit.data import TextClassificationData, synthetic_nli
from distillkit.data.domains import domain_of
from distillkit.errors import ConfigError, DataError
from distillkit.losses import (
    AttentionKL,
    AttentionMSE,
    DistillationLoss,
    GramMMD,
    HardCrossEntropy,
    HiddenCosine,
    HiddenMSE,
    MetaTeacherLoss,
    SoftTargetCrossEntropy,
)
from distillkit.losses.composite import expertise
from distillkit.teachers.finetune import FinetuneSettings
from distillkit.teachers.meta import prototype_scores
from tests.conftest import run_cli

# -- prototype scores ---------------------------------------------------------------------


def test_prototype_scores_known_answer():
    """Two domains, one class: A's prototype is e1, B's is e2. An A example at e1 is close to
    its own prototype only; one at 45 degrees is as close to both."""
    e1, e2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    diag = np.array([1.0, 1.0])
    # domain A: e1, e1 (prototype e1) plus the probe rows; domain B: e2 x 3
    emb = np.stack([e1, e1, e2, e2, e2])
    labels = np.zeros(5, dtype=int)
    domains = np.array([0, 0, 1, 1, 1])
    s = prototype_scores(emb, labels, domains, alpha=0.5)
    assert s[0] == pytest.approx(0.5 * 1.0 + 0.5 * 0.0)  # own cos 1, other cos 0
    assert s[2] == pytest.approx(0.5)
    # a probe at 45 degrees added to domain A moves A's prototype; compute the answer by hand
    emb = np.stack([e1, e1, diag, e2, e2])
    domains = np.array([0, 0, 0, 1, 1])
    proto_a = (2 * e1 + diag / np.sqrt(2)) / 3
    proto_a /= np.linalg.norm(proto_a)
    probe = diag / np.sqrt(2)
    expected = 0.3 * probe @ proto_a + 0.7 * probe @ e2
    assert prototype_scores(emb, labels, domains, alpha=0.3)[2] == pytest.approx(expected)
    # transferability: the probe lies closer to B's prototype than A's e1 rows do
    scores = prototype_scores(emb, labels, domains, alpha=0.5)
    assert scores[2] > scores[0]


def test_prototype_scores_use_class_prototypes_and_skip_missing_ones():
    # class 1 exists only in domain 0: its score is the cosine to its own prototype
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    labels = np.array([0, 0, 1])
    domains = np.array([0, 1, 0])
    s = prototype_scores(emb, labels, domains, alpha=0.5)
    assert s[2] == pytest.approx(1.0)
    assert s[0] == pytest.approx(0.5)  # class 0: own e1 (cos 1), other domain e2 (cos 0)
    # one domain: the own cosine
    assert prototype_scores(emb[:1], labels[:1], domains[:1])[0] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="prototype_alpha"):
        prototype_scores(emb, labels, domains, alpha=1.5)


# -- weights in the losses ----------------------------------------------------------------


def test_meta_teacher_loss_sample_weights_and_domain_term():
    torch.manual_seed(0)
    logits = torch.randn(3, 3)
    labels = torch.tensor([0, 2, 1])
    ce = F.cross_entropy(logits, labels, reduction="none")
    batch = {"labels": labels, "attention_mask": torch.ones(3, 4, dtype=torch.long)}
    plain = MetaTeacherLoss(width=8, num_domains=2)
    assert plain.required_features() == {"logits"}
    assert plain({"logits": logits}, None, batch).total == pytest.approx(ce.mean().item())
    weighted = plain({"logits": logits}, None,
                     {**batch, "loss_sample_weight": torch.tensor([1.0, 0.0, 3.0])}).total
    assert weighted == pytest.approx((ce[0] + 3 * ce[2]).item() / 4)
    # a domain head that outputs equal logits: the domain term is ln K for every example
    loss = MetaTeacherLoss(width=8, num_domains=4, domain_loss_weight=0.2)
    assert loss.required_features() == {"logits", "hidden_states"}
    for p in loss.domain_head.parameters():
        torch.nn.init.zeros_(p)
    out = loss({"logits": logits, "hidden_states": (torch.randn(3, 4, 8),)}, None,
               {**batch, "loss_domain": torch.tensor([0, 1, 3])})
    assert out.terms["domain"] == pytest.approx(math.log(4))
    assert out.total.item() == pytest.approx(ce.mean().item() + 0.2 * math.log(4))


def test_hard_cross_entropy_weights_skip_hidden_labels():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, 0.0]])
    labels = torch.tensor([0, 0, -100])
    ce = F.cross_entropy(logits[:2], labels[:2], reduction="none")
    got = HardCrossEntropy()(logits, labels, torch.tensor([1.0, 3.0, 10.0]))
    assert got == pytest.approx(((ce[0] + 3 * ce[1]) / 4).item())


_TERMS = [HiddenMSE(), HiddenCosine(), GramMMD(), AttentionMSE(), AttentionKL()]


@pytest.mark.parametrize("term", _TERMS, ids=lambda t: type(t).__name__)
def test_intermediate_terms_weigh_examples(term):
    torch.manual_seed(1)
    if term.feature == "attention":
        s = torch.softmax(torch.randn(2, 2, 5, 5), -1)
        t = torch.softmax(torch.randn(2, 2, 5, 5), -1)
    else:
        s, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    unweighted = term(s, t, mask)
    assert term(s, t, mask, torch.tensor([2.0, 2.0])) == pytest.approx(unweighted.item())
    # weight 0 on the second example: the value of the first example alone
    first = term(s[:1], t[:1], mask[:1])
    assert term(s, t, mask, torch.tensor([1.0, 0.0])) == pytest.approx(first.item(), rel=1e-5)
    assert term(s, t, mask, torch.tensor([1.0, 0.0])) != pytest.approx(unweighted.item())


def test_expertise_is_the_teachers_gold_label_probability():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0], [9.0, 0.0]])
    w = expertise(logits, torch.tensor([0, 1, -100]))
    assert w.tolist() == pytest.approx([0.75, 0.5, 1.0])


def test_distillation_loss_expertise_weights_the_kd_term():
    torch.manual_seed(2)
    student, teacher = torch.randn(4, 3), torch.randn(4, 3) * 3
    labels = torch.tensor([0, 1, 2, 0])
    batch = {"labels": labels, "attention_mask": torch.ones(4, 2)}
    loss = DistillationLoss(kd=SoftTargetCrossEntropy(), temperature=2.0, alpha=1.0,
                            expertise_weights=True)
    out = loss({"logits": student}, {"logits": teacher}, batch)
    w = torch.softmax(teacher, -1)[torch.arange(4), labels]
    per = -(torch.softmax(teacher / 2, -1) * torch.log_softmax(student / 2, -1)).sum(-1) * 4
    assert out.total == pytest.approx(((w * per).sum() / w.sum()).item(), rel=1e-5)
    assert out.terms["expertise_weight"] == pytest.approx(w.mean().item())
    plain = DistillationLoss(kd=SoftTargetCrossEntropy(), temperature=2.0, alpha=1.0)
    assert plain({"logits": student}, {"logits": teacher}, batch).total != pytest.approx(
        out.total.item())
    assert loss.teacher_depth() is None  # the weights read the teacher's logits
    with pytest.raises(ConfigError, match="expertise_weights"):
        DistillationLoss(kd=None, alpha=0.0, expertise_weights=True)


# -- settings and data --------------------------------------------------------------------


def test_finetune_settings_validate_meta_keys_and_keep_plain_cache_keys():
    plain = FinetuneSettings()
    assert not plain.meta()
    assert set(plain.key_fields()) == {"epochs", "batch_size", "lr", "weight_decay",
                                       "warmup_ratio"}
    meta = FinetuneSettings.from_config({"domains": "all", "sample_weights": "prototype"})
    assert meta.meta() and meta.key_fields()["sample_weights"] == "prototype"
    with pytest.raises(ConfigError, match="teacher.finetune_settings.domains='every'"):
        FinetuneSettings.from_config({"domains": "every"})
    with pytest.raises(ConfigError, match="sample_weights"):
        FinetuneSettings.from_config({"sample_weights": "proto"})


def _domain_data(domain: str | None = "b", column: str | None = "domain"):
    source = synthetic_nli(n_train=30, n_validation=12, n_test=9, domains=["a", "b", "c"])
    return TextClassificationData(source=source, text_column="premise",
                                  text_pair_column="hypothesis", test_split="test",
                                  domain_column=column, domain=domain)


def test_target_domain_filters_every_split_and_keeps_all_train():
    data = _domain_data()
    data.prepare()
    assert len(data.raw["train"]) == 10 and len(data.raw["eval"]) == 4
    assert len(data.raw["test"]) == 3 and len(data.raw["all_train"]) == 30
    assert set(data.domains("train")) == {"b"} and set(data.domains("test")) == {"b"}
    assert data.domains("all_train")[:3] == ["a", "b", "c"]
    # the kept rows are the domain's rows of the source, ids included
    assert data.row_ids("train") == [str(i) for i in range(1, 30, 3)]


def test_domain_errors_name_the_culprit():
    with pytest.raises(DataError, match="domain 'z'.*domains are: a, b, c"):
        _domain_data("z").prepare()
    with pytest.raises(DataError, match="needs data.domain_column"):
        _domain_data("a", column=None)
    with pytest.raises(DataError, match="column 'area' \\(data.domain_column\\)"):
        _domain_data(None, column="area").prepare()
    with pytest.raises(DataError, match="set data.domain_column"):
        _domain_data(None, column=None).domains("train")


def test_snli_domain_rules():
    assert domain_of("A dog runs along the beach.") == "animals"  # first domain in order
    assert domain_of("Two men play soccer in the street") == "sports"
    assert domain_of("A woman sings loudly") is None  # "sings" is not a keyword
    assert domain_of("A band plays on a stage") == "music"
    assert domain_of("People wait at a bus stop.") == "street"
    assert domain_of("A man sleeps") is None


# -- the two-stage graph through the CLI ----------------------------------------------------


@pytest.mark.e2e
def test_meta_kd_graph_through_the_cli(tmp_path):
    meta = run_cli(["experiment=tiny_meta_kd", f"hydra.run.dir={tmp_path / 'meta'}"],
                   cwd=tmp_path)
    assert meta.returncode == 0, meta.stdout[-2000:] + meta.stderr[-2000:]
    assert "== stage: teacher" in meta.stdout and "prototype scores of 512 'all_train'" \
        in meta.stdout
    m = json.loads((tmp_path / "meta" / "metrics.json").read_text())
    assert m["domain"] == "a" and m["student"]["examples"] == 43  # test rows of domain a
    assert "expertise_weight" in m["train"]["last_losses"]
    assert "hidden_mse" not in m["train"]["last_losses"]  # second phase: prediction layer
    info = [json.loads(p.read_text()) for p in
            (tmp_path / "dk-cache" / "teachers").glob("*/finetune.json")]
    assert len(info) == 1 and info[0]["meta"]["split"] == "all_train"
    assert info[0]["train_examples"] == 512
    assert set(info[0]["meta"]["prototype_scores"]) == {"a", "b", "c"}
    # baseline: the same student stage from a teacher of domain a alone (its own cache entry)
    single = run_cli(["experiment=tiny_meta_kd", "teacher.finetune_settings.domains=target",
                      "teacher.finetune_settings.sample_weights=none",
                      "teacher.finetune_settings.domain_loss_weight=0",
                      f"hydra.run.dir={tmp_path / 'single'}"], cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-2000:]
    assert "on 171 examples of 'train'" in single.stdout
    assert "prototype scores" not in single.stdout
    assert len(list((tmp_path / "dk-cache" / "teachers").glob("*/finetune.json"))) == 2


def _one_error_line(args: list[str], tmp_path, phrase: str) -> None:
    """The CLI run exits 2 with one ``error:`` line holding ``phrase``, no traceback and no
    metrics."""
    proc = run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-1500:]
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1 and phrase in errors[0], errors
    assert "Traceback" not in output and not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.e2e
def test_meta_kd_bad_setting_is_one_error_line(tmp_path):
    _one_error_line(["experiment=tiny_meta_kd", "teacher.finetune_settings.sample_weights=soft"],
                    tmp_path, "sample_weights='soft' is not one of none, prototype")


@pytest.mark.parametrize("teacher", ["minilm6", "hub", "tiny", "tiny_electra"])
def test_every_classification_teacher_takes_the_meta_settings(compose_cfg, teacher):
    """The Meta-KD keys are set (off) in every classification teacher option, so a plain
    override turns a teacher into a meta-teacher."""
    cfg = compose_cfg([f"teacher={teacher}", "teacher.finetune_settings.domains=all",
                       "teacher.finetune_settings.sample_weights=prototype"])
    settings = FinetuneSettings.from_config(dict(cfg.teacher.finetune_settings))
    assert settings.meta() and settings.domain_loss_weight == 0.0


def test_meta_kd_experiment_composes_the_paper_recipe(compose_cfg):
    cfg = compose_cfg(["experiment=meta_kd"])
    assert cfg.data.domain == "street" and cfg.data.domain_column == "domain"
    ft = cfg.teacher.finetune_settings
    assert (ft.domains, ft.sample_weights, ft.domain_loss_weight) == ("all", "prototype", 0.1)
    assert cfg.loss.expertise_weights and cfg.loss.intermediate_phase == 0.5
    assert cfg.mapping._target_ == "distillkit.losses.mapping.uniform_mapping"


@pytest.mark.e2e
def test_meta_settings_on_a_seq2seq_teacher_are_one_error_line(tmp_path):
    _one_error_line(["experiment=arith_seq_kd", "+teacher.finetune_settings.domains=all"],
                    tmp_path, "apply to task=classification only")
