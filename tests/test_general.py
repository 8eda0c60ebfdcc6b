"""The general-distillation stage (distillkit.general, stages/general.py) on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import set_seed

from distillkit.engine import EngineSettings
from distillkit.errors import ConfigError, DataError
from distillkit.general import GeneralSettings, general_distillation
from distillkit.general.corpus import CorpusBatches, load_texts
from distillkit.general.distill import spec_of
from distillkit.general.embeddings import pca_embeddings
from distillkit.models import bert_student, tiny_teacher
from distillkit.models.tokenizers import TINY_WORDS
from tests.conftest import TINY_RUN, one_error_line, run_cli

LABELS = ["entailment", "neutral", "contradiction"]
ENGINE = EngineSettings(device="cpu", precision="fp32", progress=False, seed=3)


def _corpus(path: Path, lines: int = 120) -> Path:
    rng = torch.Generator().manual_seed(0)
    words = list(TINY_WORDS)
    rows = []
    for _ in range(lines):
        n = int(torch.randint(3, 12, (1,), generator=rng))
        rows.append(" ".join(words[int(i)] for i in torch.randint(len(words), (n,),
                                                                      generator=rng)))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def setup(tmp_path, monkeypatch, compose_cfg):
    """A tiny teacher, a narrower random student and the tinybert preset on a text file."""
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path / "cache"))
    corpus = _corpus(tmp_path / "corpus.txt")
    cfg = compose_cfg(["general=tinybert", f"general.corpus={corpus}", "general.steps=6",
                       "general.batch_size=8"])
    spec = spec_of(cfg.general)
    set_seed(0)
    teacher = tiny_teacher(labels=LABELS)

    def student():
        set_seed(1)
        return bert_student(2, 16, 2, 32, teacher=teacher, labels=LABELS)
    return teacher, student, spec


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.base_model.state_dict().items()}


def test_stage_trains_caches_and_is_reused(setup, tmp_path):
    teacher, student, spec = setup
    settings = GeneralSettings.from_config(spec)
    first = student()
    initial = _weights(first.model)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    result = general_distillation(teacher, first, settings, spec, ENGINE)
    # the run's RNG is left as the stage found it (a cached and a computed stage distil alike)
    assert torch.equal(torch.rand(3), expected_next)
    assert result.origin == "computed" and result.steps == 6 and result.texts > 50
    assert (Path(result.path) / "encoder.safetensors").is_file()
    trained = _weights(first.model)
    changed = [k for k in initial if not torch.equal(initial[k], trained[k])]
    assert any("layer.0." in k for k in changed) and any("word_embeddings" in k for k in changed)
    # a second run with the same teacher, student and corpus reads the cache: same encoder
    second = student()
    assert all(torch.equal(initial[k], v) for k, v in _weights(second.model).items())
    again = general_distillation(teacher, second, settings, spec, ENGINE)
    assert again.origin == "cache" and again.key == result.key
    assert all(torch.equal(trained[k], v) for k, v in _weights(second.model).items())
    # another corpus is another entry
    other = GeneralSettings.from_config({**spec, "max_texts": 40})
    third = general_distillation(teacher, student(), other, {**spec, "max_texts": 40}, ENGINE)
    assert third.origin == "computed" and third.key != result.key and third.texts == 40


def test_teacher_weights_enter_the_key(setup):
    teacher, student, spec = setup
    settings = GeneralSettings.from_config(spec)
    first = general_distillation(teacher, student(), settings, spec, ENGINE)
    with torch.no_grad():
        teacher.model.base_model.encoder.layer[0].output.dense.weight.add_(0.01)
    second = general_distillation(teacher, student(), settings, spec, ENGINE)
    assert second.origin == "computed" and second.key != first.key


def _teacher_calls(teacher) -> list[int]:
    """Counts the teacher's forward passes (a hook on its embeddings)."""
    calls: list[int] = []
    teacher.model.base_model.embeddings.register_forward_hook(
        lambda *_: calls.append(1))
    return calls


def test_stage_reads_the_teachers_features_from_one_pass(setup, monkeypatch):
    """With the feature cache on, the stage trains as with the live teacher (fp32 features:
    the same numbers up to float rounding), the teacher runs only in the one feature pass
    (inference batches of up to 64 texts), and a second stage with other settings (another
    stage key) reads the features without running the teacher at all."""
    teacher, student, spec = setup
    settings = GeneralSettings.from_config(spec)
    live_student = student()
    live = general_distillation(teacher, live_student, settings, spec, ENGINE)
    assert live.teacher_features["source"] == "live"  # budget 0: off
    calls = _teacher_calls(teacher)
    cached_student = student()
    cached = general_distillation(teacher, cached_student, settings, spec, ENGINE,
                                  feature_cache=("fp32", 1.0))
    record = cached.teacher_features
    assert cached.origin == "computed" and cached.key != live.key
    assert record["source"] == "computed" and record["dtype"] == "fp32"
    assert record["attention_layers"] and record["bytes_per_token"] > 0
    assert len(calls) == -(-cached.texts // ENGINE.eval_batch_size) < settings.steps
    for name, value in live.last_losses.items():
        assert cached.last_losses[name] == pytest.approx(value, rel=1e-4, abs=1e-6)
    live_w, cached_w = _weights(live_student.model), _weights(cached_student.model)
    assert all(torch.allclose(live_w[k], cached_w[k], atol=1e-5) for k in live_w)
    # the same stage again: read from the stage cache without tokenising the corpus
    def no_tokenising(*args):
        raise AssertionError("a cached stage tokenised its corpus")
    with monkeypatch.context() as patch:
        patch.setattr("distillkit.general.distill.corpus_ids", no_tokenising)
        reread = general_distillation(teacher, student(), settings, spec, ENGINE,
                                      feature_cache=("fp32", 1.0))
    assert reread.origin == "cache" and reread.key == cached.key
    # other stage settings: a new stage entry, the same feature entry, no teacher pass
    calls.clear()
    other = {**spec, "lr": 1e-4}
    again = general_distillation(teacher, student(), GeneralSettings.from_config(other),
                                 other, ENGINE, feature_cache=("fp32", 1.0))
    assert again.origin == "computed" and again.key != cached.key
    assert again.teacher_features["source"] == "cache" and calls == []
    assert again.teacher_features["splits"]["general"]["key"] == record["splits"]["general"]["key"]


def test_stage_features_over_budget_run_the_teacher_live(setup):
    teacher, student, spec = setup
    settings = GeneralSettings.from_config(spec)
    calls = _teacher_calls(teacher)
    result = general_distillation(teacher, student(), settings, spec, ENGINE,
                                  feature_cache=("fp16", 1e-9))
    record = result.teacher_features
    assert record["source"] == "live" and "feature_cache_max_gb=1e-09" in record["reason"]
    assert len(calls) == settings.steps  # the live teacher at every step


def test_pca_embeddings_keep_the_teachers_geometry():
    """A teacher table whose rows span exactly 3 directions: a 3-wide student's rows are the
    centred rows in those coordinates, so all pairwise distances are kept."""
    set_seed(0)
    teacher = tiny_teacher(labels=LABELS)  # width 32
    vocab = teacher.model.get_input_embeddings().weight.shape[0]
    directions = torch.linalg.qr(torch.randn(32, 3))[0]  # orthonormal columns
    coords = torch.randn(vocab, 3) * torch.tensor([3.0, 2.0, 1.0])
    with torch.no_grad():
        teacher.model.get_input_embeddings().weight.copy_(coords @ directions.T + 0.5)
    student = bert_student(1, 3, 1, 8, teacher=teacher, labels=LABELS)
    what = pca_embeddings(student.model, teacher.model)
    assert what.startswith("pca (100.0% of the variance")
    emb = student.model.get_input_embeddings().weight.detach()
    exact = "donot_use_mm_for_euclid_dist"
    assert torch.allclose(torch.cdist(emb, emb, compute_mode=exact),
                          torch.cdist(coords, coords, compute_mode=exact), atol=1e-4)
    assert torch.allclose(emb.mean(0), torch.zeros(3), atol=1e-4)


def test_pca_embeddings_need_a_shared_vocabulary():
    set_seed(0)
    teacher = tiny_teacher(labels=LABELS)
    other = tiny_teacher(labels=LABELS, words=["alpha", "beta"])
    student = bert_student(1, 16, 2, 32, teacher=other, labels=LABELS)
    before = student.model.get_input_embeddings().weight.detach().clone()
    assert pca_embeddings(student.model, teacher.model).startswith("random (student vocabulary")
    assert torch.equal(student.model.get_input_embeddings().weight, before)


def test_corpus_reading(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("  one two \n\nthree\none two\n", encoding="utf-8")
    table = tmp_path / "b.jsonl"
    table.write_text('{"body": "four"}\n{"body": "three"}\n', encoding="utf-8")
    assert load_texts([str(text), str(table)], text_column="body") == ["one two", "three",
                                                                        "four"]
    assert load_texts(str(text), max_texts=1) == ["one two"]
    with pytest.raises(DataError, match="row 1 has no column 'text'"):
        load_texts(str(table))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"not valid UTF-8 text at byte offset 8 \(line 2\)"):
        load_texts(str(bad))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no text"):
        load_texts(str(blank))
    with pytest.raises(DataError, match="file not found"):
        load_texts(str(tmp_path / "missing.txt"))


def test_batches_group_lengths_and_pad():
    ids = [[1] * n for n in (5, 2, 9, 3, 2, 8)]
    batches = CorpusBatches(ids, batch_size=2, pad_id=0, seed=0)
    assert len(batches) == 3
    seen = list(batches)
    widths = sorted(b["input_ids"].shape[1] for b in seen)
    assert widths == [2, 5, 9]  # (2, 2), (3, 5), (8, 9): similar lengths together
    for b in seen:
        assert torch.equal(b["attention_mask"].sum(1) > 0, torch.ones(2, dtype=torch.bool))
        assert torch.equal(b["input_ids"] != 0, b["attention_mask"].bool())
    # every epoch another order, the same one for the same seed
    def orders(batches):
        return [[b["input_ids"].shape[1] for b in batches] for _ in range(4)]
    first = orders(CorpusBatches(ids, batch_size=2, pad_id=0, seed=0))
    assert first == orders(CorpusBatches(ids, batch_size=2, pad_id=0, seed=0))
    assert len({tuple(o) for o in first}) > 1


@pytest.mark.parametrize(("values", "match"), [
    ({"teacher": "teacher"}, "general.teacher='teacher' is not one of finetuned, pretrained"),
    ({"embeddings": "svd"}, "general.embeddings='svd' is not one of pca, random"),
    ({"steps": -1}, "general.steps must be >= 0"),
    ({"enabled": True, "steps": 5}, "needs general.loss and general.mapping"),
    ({"corpus": " "}, "general.corpus is empty"),
    ({"step": 5}, r"unknown key\(s\) \['step'\] in general"),
])
def test_settings_are_checked(values, match):
    with pytest.raises(ConfigError, match=match):
        GeneralSettings.from_config(values)


def test_bert4l_brings_the_stage(compose_cfg):
    assert compose_cfg(["student=bert4l"]).general.enabled is True
    assert compose_cfg(["student=bert4l", "general=none"]).general.enabled is False
    assert compose_cfg([]).general.enabled is False  # the default copy3 student needs none
    with pytest.raises(Exception, match="step"):  # a typo fails at compose time
        compose_cfg(["student=bert4l", "general.step=10"])


@pytest.mark.e2e
def test_cli_runs_reuse_the_stage(tmp_path):
    corpus = _corpus(tmp_path / "corpus.txt")
    args = [*TINY_RUN, "general=tinybert", f"general.corpus={corpus}", "general.steps=4",
            "general.batch_size=8"]
    first, second = tmp_path / "first", tmp_path / "second"
    proc = run_cli([*args, f"hydra.run.dir={first}"], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "later runs and sweep jobs with this teacher, student and corpus reuse it" in out
    record = json.loads((first / "metrics.json").read_text())
    assert record["stages"]["general"] == "computed"
    assert record["general"]["steps"] == 4 and record["general"]["embeddings"] == "copied"
    proc = run_cli([*args, f"hydra.run.dir={second}"], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    again = json.loads((second / "metrics.json").read_text())
    assert again["stages"]["general"] == "cache" and "skipped" in out
    assert again["general"]["key"] == record["general"]["key"]
    # the same initialisation and the same RNG afterwards: the same student
    assert again["student"]["accuracy"] == record["student"]["accuracy"]
    assert again["train"]["last_losses"] == record["train"]["last_losses"]


@pytest.mark.e2e
@pytest.mark.parametrize(("args", "phrases"), [
    ([*TINY_RUN, "general.corpus=missing.txt"],
     ["general.corpus file not found", "missing.txt"]),
    (["task=seq2seq", "teacher=t5_small_scratch", "student=t5_tiny", "data=arith",
      "loss=seq_word_kd", "trainer=debug"], ["general.enabled=true", "task=seq2seq",
                                             "general=none"]),
])
def test_cli_refusals(tmp_path, args, phrases):
    proc = run_cli([*args, "general=tinybert", f"hydra.run.dir={tmp_path / 'r'}"],
                   cwd=tmp_path)
    one_error_line(proc.returncode, proc.stdout + proc.stderr, phrases)
    assert "fine-tuning teacher" not in proc.stdout + proc.stderr  # refused before any work
