"""Tiny seq2seq runs through the real CLI: word-level KD, sequence-level KD, step by step."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from distillkit.seq2seq.generation import GenerationSettings, generate
from tests.conftest import run_cli

pytestmark = pytest.mark.e2e

# a 1+1-layer teacher and student, 48 problems; the teacher trains 15 epochs (a few seconds)
TINY = ["data=arith", "teacher=t5_small_scratch", "student=t5_tiny", "task=seq2seq",
        "data.source.n_train=48", "data.source.n_validation=8", "data.source.n_test=8",
        "data.source.two_step_fraction=0.0", "teacher.num_layers=1",
        "teacher.num_decoder_layers=1", "teacher.d_model=32", "teacher.d_ff=64",
        "teacher.finetune_settings.epochs=15", "teacher.finetune_settings.batch_size=16",
        "teacher.finetune_settings.lr=3e-3", "student.num_layers=1",
        "student.num_decoder_layers=1", "student.d_model=16", "student.d_ff=32",
        "student.num_heads=2", "trainer.max_steps=3", "trainer.batch_size=8",
        "trainer.progress=false", "trainer.precision=fp32", "trainer.eval_batch_size=16"]


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_word_kd_run_writes_metrics_and_a_generating_student(tmp_path):
    run_dir = tmp_path / "run"
    _ok(run_cli([*TINY, "loss=seq_word_kd", f"hydra.run.dir={run_dir}"], cwd=tmp_path))
    metrics = _metrics(run_dir)
    assert metrics["task"] == "seq2seq" and metrics["metric"] == "exact_match"
    for who in ("teacher", "student"):
        assert {"exact_match", "bleu", "chrf", "examples"} <= set(metrics[who])
        assert metrics[who]["examples"] == 8
    assert {"hard", "kd"} <= set(metrics["train"]["last_losses"])
    assert metrics["stages"]["teacher"] == "fine-tuned"
    model = AutoModelForSeq2SeqLM.from_pretrained(run_dir / "student")
    tok = AutoTokenizer.from_pretrained(run_dir / "student")
    out = model.generate(**tok(["tom has 3 pens . tom buys 4 more pens . how many pens does "
                                "tom have now ?"], return_tensors="pt"), max_new_tokens=4)
    assert out.shape[0] == 1
    assert (run_dir / "predictions_student.tsv").read_text().startswith("source\tprediction")


def test_sequence_kd_stage_writes_the_teachers_generations_and_caches_them(tmp_path):
    run_dir = tmp_path / "run"
    beams = ["loss=seq_kd", "loss.sequence_kd.num_beams=2", "loss.sequence_kd.n_best=2",
             "loss.sequence_kd.max_new_tokens=6", "loss.sequence_kd.mix_original=true"]
    _ok(run_cli([*TINY, *beams, f"hydra.run.dir={run_dir}"], cwd=tmp_path))
    metrics = _metrics(run_dir)
    stage = metrics["targets"]["sequence_kd"]
    assert stage["generations"] == "computed" and metrics["stages"]["teacher_targets"] == "computed"
    assert metrics["train"]["pairs"] == 48 * 3  # 2-best + the gold target per problem
    src = (run_dir / "seqkd" / "train.src").read_text().split("\n")[:-1]
    tgt = (run_dir / "seqkd" / "train.tgt").read_text().split("\n")[:-1]
    scores = (run_dir / "seqkd" / "train.scores").read_text().split("\n")[:-1]
    assert len(src) == len(tgt) == len(scores) == 96
    assert all("\t" not in line for line in src + tgt)
    assert sum(bool(line) for line in tgt) >= 48  # the trained teacher says something
    # the lines are what the cached teacher generates for those sources
    path = metrics["teacher_path"]
    teacher = AutoModelForSeq2SeqLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    sources = src[::2]
    ids = tok(sources, truncation=True, max_length=64)["input_ids"]
    settings = GenerationSettings(num_beams=2, n_best=2, max_new_tokens=6, batch_size=64)
    with torch.autocast("cpu", enabled=False):
        texts, _ = generate(teacher, tok, ids, settings, torch.device("cpu"))
    assert [t for pair in texts for t in pair] == tgt
    # a second run reads the teacher and its generations from the cache
    again = tmp_path / "again"
    _ok(run_cli([*TINY, *beams, f"hydra.run.dir={again}"], cwd=tmp_path))
    record = _metrics(again)
    assert record["stages"]["teacher"] == "cache" and record["stages"]["teacher_targets"] == "cache"
    assert record["targets"]["sequence_kd"]["generations"] == "cache"
    assert (again / "seqkd" / "train.tgt").read_text().split("\n")[:-1] == tgt


def test_step_by_step_run_trains_both_tasks_and_infers_with_predict(tmp_path):
    run_dir = tmp_path / "run"
    _ok(run_cli([*TINY, "loss=step_by_step", "loss.alpha=0.7", f"hydra.run.dir={run_dir}"],
                cwd=tmp_path))
    metrics = _metrics(run_dir)
    assert set(metrics["train"]["last_losses"]) == {"label", "rationale", "total"}
    losses = metrics["train"]["last_losses"]
    assert losses["total"] == pytest.approx(0.7 * losses["label"] + 0.3 * losses["rationale"],
                                            rel=1e-4)
    assert metrics["train"]["pairs"] == 96 and metrics["inference_prefix"] == "predict: "
    lines = (run_dir / "predictions_student.tsv").read_text().splitlines()[1:]
    assert lines and all(line.startswith("predict: ") for line in lines)


def test_step_by_step_with_teacher_rationales_and_labels(tmp_path):
    run_dir = tmp_path / "run"
    _ok(run_cli([*TINY, "loss=step_by_step", "loss.rationale_source=teacher",
                 "loss.label_type=llm", f"hydra.run.dir={run_dir}"], cwd=tmp_path))
    record = _metrics(run_dir)
    targets = record["targets"]
    assert targets["teacher_rationales"] == "computed" and targets["teacher_labels"] == "computed"
    assert record["stages"]["teacher_targets"] == "computed"


def test_classification_option_with_seq2seq_is_one_error_line(tmp_path):
    proc = run_cli(["teacher=t5_small_scratch", "student=t5_tiny", "data=arith",
                    "loss=seq_word_kd", f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and "task=classification" in errors[0]
    assert "add task=seq2seq" in errors[0] and "Traceback" not in proc.stderr
