"""The speed levers of the first run: frozen parameters (teacher fine-tune and student) and the
teacher's final evaluation read from the teacher-output cache."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from distillkit.data import TextClassificationData, synthetic_nli
from distillkit.engine import EngineSettings, freeze_parameters
from distillkit.errors import ConfigError
from distillkit.models import pretrained_classifier, tiny_teacher
from distillkit.teachers.finetune import FinetuneSettings, cache_key, prepare_teacher
from tests.conftest import TINY_RUN, run_cli

LABELS = ["entailment", "neutral", "contradiction"]


def _inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path))
    data = TextClassificationData(partial(synthetic_nli, n_train=32, n_validation=8, n_test=0),
                                  text_column="premise", text_pair_column="hypothesis",
                                  labels=LABELS, max_length=16)
    torch.manual_seed(0)
    teacher = tiny_teacher(labels=LABELS)
    data.tokenize(teacher.tokenizer)
    return data, teacher


def test_an_unfrozen_teacher_keeps_its_cache_key(tmp_path, monkeypatch):
    """The freeze setting enters the key only when set: teachers cached before it are found.
    The expected key was computed by the code before the setting existed (commit 523bea0)."""
    data, teacher = _inputs(tmp_path, monkeypatch)
    settings = FinetuneSettings(epochs=2, lr=1e-4)
    assert cache_key(teacher, data, settings, seed=0) == "371a6d9a4fe98b03241f"
    frozen = FinetuneSettings(epochs=2, lr=1e-4, freeze=["bert.embeddings.*"])
    assert cache_key(teacher, data, frozen, seed=0) != "371a6d9a4fe98b03241f"


def test_teacher_finetune_keeps_frozen_parameters(tmp_path, monkeypatch):
    data, teacher = _inputs(tmp_path, monkeypatch)
    before = {n: p.detach().clone() for n, p in teacher.model.named_parameters()}
    settings = FinetuneSettings(epochs=1, lr=1e-2,
                                freeze=["bert.embeddings.*", "bert.encoder.layer.0.*"])
    tuned = prepare_teacher(teacher, True, settings, data,
                            EngineSettings(device="cpu", progress=False, seed=0))
    assert tuned.origin == "fine-tuned"
    after = dict(tuned.model.named_parameters())
    frozen = [n for n in before if n.startswith(("bert.embeddings.", "bert.encoder.layer.0."))]
    trained = [n for n in before if n.startswith("bert.encoder.layer.1.")]
    assert frozen and trained
    for name in frozen:
        assert torch.equal(after[name], before[name]), name
    assert all(not torch.equal(after[n], before[n]) for n in trained)
    info = json.loads(next((tmp_path / "teachers").glob("*/finetune.json")).read_text())
    assert info["frozen_parameters"] == sum(before[n].numel() for n in frozen)


def test_freeze_patterns_are_checked():
    model = tiny_teacher(labels=LABELS).model
    with pytest.raises(ConfigError, match=r"trainer.freeze: pattern 'encoder\.\*' matches no "):
        freeze_parameters(model, ["encoder.*"], "trainer.freeze")
    with pytest.raises(ConfigError, match="freezes every parameter"):
        freeze_parameters(model, ["*"], "trainer.freeze")
    assert all(p.requires_grad for p in model.parameters())  # nothing half-frozen
    with pytest.raises(ConfigError, match="finetune_settings.freeze must be a list"):
        FinetuneSettings.from_config({"freeze": "bert.*"})


@pytest.mark.e2e
def test_student_freeze_through_the_cli(tmp_path):
    """trainer.freeze keeps the copied student's embeddings as the fine-tuned teacher's."""
    run = tmp_path / "run"
    proc = run_cli([*TINY_RUN, "student=copy3", "student.layers=[0]",
                    "trainer.optimizer.lr=1e-2", "trainer.freeze=['bert.embeddings.*']",
                    f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    student = pretrained_classifier(str(run / "student"), labels=LABELS).model
    teacher_dir = next((tmp_path / "dk-cache" / "teachers").glob("*/config.json")).parent
    teacher = pretrained_classifier(str(teacher_dir), labels=LABELS).model
    s, t = dict(student.named_parameters()), dict(teacher.named_parameters())
    for name in ("bert.embeddings.word_embeddings.weight", "bert.embeddings.LayerNorm.weight"):
        assert torch.equal(s[name], t[name]), name
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(s[name], t[name])
    bad = run_cli([*TINY_RUN, "trainer.freeze=['nothing.*']", f"hydra.run.dir={tmp_path / 'b'}"],
                  cwd=tmp_path)
    output = bad.stdout + bad.stderr
    errors = [line for line in output.splitlines() if "error:" in line]
    assert bad.returncode == 2 and len(errors) == 1, output[-2000:]
    assert "trainer.freeze: pattern 'nothing.*' matches no parameter" in errors[0]
    assert "Traceback" not in output


@pytest.mark.e2e
def test_teacher_evaluation_is_computed_once_then_read_from_the_cache(tmp_path):
    """The teacher's final evaluation equals a live one, is cached with its logits, and a later
    run (another student setting) reads it instead of running the teacher."""
    args = [*TINY_RUN, "trainer.max_steps=2", "export_student=false"]
    runs = {}
    for name, extra in (("live", ["trainer.teacher_cache=false"]), ("first", []),
                        ("again", ["loss.temperature=2"])):
        proc = run_cli([*args, *extra, f"hydra.run.dir={tmp_path / name}"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        runs[name] = (proc.stdout + proc.stderr,
                      json.loads((tmp_path / name / "metrics.json").read_text())["teacher"])
    live, first, again = (runs[n][1] for n in ("live", "first", "again"))
    assert "evaluation" not in live and first["evaluation"] == "computed"
    assert again["evaluation"] == "cache"
    assert "teacher logits for 'test'" in runs["first"][0]
    assert "eval teacher" not in runs["again"][0]
    for cached in (first, again):
        assert cached["accuracy"] == live["accuracy"]
        assert cached["examples"] == live["examples"]
        assert cached["loss"] == pytest.approx(live["loss"], rel=1e-6)
    assert again["seconds"] == first["seconds"] > 0
