"""Tiny end-to-end runs through the real CLI (``python -m distillkit``) in subprocesses."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distillkit.models import tiny_teacher
from tests.conftest import TINY_RUN, one_error_line, run_cli

pytestmark = pytest.mark.e2e


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_tiny_run_writes_metrics_and_loadable_student(tmp_path):
    run_dir = tmp_path / "run"
    _ok(run_cli([*TINY_RUN, f"hydra.run.dir={run_dir}"], cwd=tmp_path))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for who in ("teacher", "student"):
        assert 0.0 <= metrics[who]["accuracy"] <= 1.0
        assert metrics["params"][who] > 0
    assert metrics["retention"] == pytest.approx(
        metrics["student"]["accuracy"] / metrics["teacher"]["accuracy"])
    assert metrics["train"]["steps"] == 10
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "student")
    tok = AutoTokenizer.from_pretrained(run_dir / "student")
    logits = model(**tok("a man runs", "yes he is", return_tensors="pt")).logits
    assert logits.shape == (1, 3)
    assert model.config.id2label[0] == "entailment"
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "temperature: 4.0" in (run_dir / "resolved_config.yaml").read_text()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "distillkit.log").is_file()


def test_default_output_dir_is_dated(tmp_path):
    _ok(run_cli([*TINY_RUN, "trainer.max_steps=2", "export_student=false"], cwd=tmp_path))
    runs = list((tmp_path / "outputs").glob("*/*/metrics.json"))
    assert len(runs) == 1, runs
    date, time_ = runs[0].parent.parent.name, runs[0].parent.name
    assert len(date.split("-")) == 3 and len(time_.split("-")) == 3


def test_typo_override_fails_clearly(tmp_path):
    proc = run_cli(["loss.temprature=3"], cwd=tmp_path)
    one_error_line(proc.returncode, proc.stdout + proc.stderr,
                   ["Could not override 'loss.temprature'", "did you mean loss.temperature"])
    assert not (tmp_path / "outputs").exists()


def test_unknown_option_fails_clearly(tmp_path):
    proc = run_cli(["student=bert5l"], cwd=tmp_path)
    one_error_line(proc.returncode, proc.stdout + proc.stderr,
                   ["Could not find 'student/bert5l'", "bert4l"])
    assert not (tmp_path / "outputs").exists()


def test_bad_value_is_one_error_line(tmp_path):
    proc = run_cli([*TINY_RUN, "loss.alpha=1.5", f"hydra.run.dir={tmp_path / 'r'}"],
                   cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and "loss.alpha must be in [0, 1], got 1.5" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_vocab_mismatch_refused_before_training(tmp_path):
    other = tiny_teacher(words=["zebra", "quokka"], labels=["entailment", "neutral",
                                                             "contradiction"])
    other.model.save_pretrained(tmp_path / "other")
    other.tokenizer.save_pretrained(tmp_path / "other")
    proc = run_cli([*TINY_RUN, "student=hub", f"student.name_or_path={tmp_path / 'other'}",
                    f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "vocabulary mismatch" in proc.stderr + proc.stdout
    assert "stage: distil" not in proc.stderr + proc.stdout


def test_multirun_one_dir_per_job_named_by_overrides(tmp_path):
    sweep = tmp_path / "sweep"
    _ok(run_cli(["-m", *TINY_RUN, "trainer.max_steps=2", "export_student=false",
                 "loss.temperature=1,4", f"hydra.sweep.dir={sweep}"], cwd=tmp_path))
    jobs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert len(jobs) == 2
    assert all("loss.temperature=" in j for j in jobs)
    assert {j.split("loss.temperature=")[1].split(",")[0] for j in jobs} == {"1", "4"}


def test_user_config_dir_adds_experiments(tmp_path):
    user = tmp_path / "myconf" / "experiment"
    user.mkdir(parents=True)
    (user / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /loss: kl\nloss:\n  temperature: 3.0\n")
    run_dir = tmp_path / "r"
    _ok(run_cli(["--config-dir", str(tmp_path / "myconf"), "experiment=mine", *TINY_RUN,
                 "trainer.max_steps=2", f"hydra.run.dir={run_dir}"], cwd=tmp_path))
    resolved = (run_dir / "resolved_config.yaml").read_text()
    assert "KLDivergence" in resolved and "temperature: 3.0" in resolved


def test_fetch_subcommand_rejects_unknown_asset(tmp_path):
    proc = run_cli(["fetch", "--only", "bogus"], cwd=tmp_path,
                   env={"DISTILLKIT_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2
    assert "bogus" in proc.stderr and "minilm6" in proc.stderr


def test_interrupted_run_keeps_output_and_exits_130(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import threading

    run_dir = tmp_path / "r"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DISTILLKIT_CACHE": str(tmp_path / "c")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "distillkit", *TINY_RUN, "trainer.max_steps=1000000",
         f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        # a suite started in the background (`cmd &`) passes SIGINT on as ignored, and Python
        # then never raises KeyboardInterrupt: give the run the terminal's default, as a user has
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    watchdog = threading.Timer(240, proc.kill)  # never hang the suite
    watchdog.start()
    lines, distilling = [], False
    for line in proc.stdout:
        lines.append(line)
        distilling = distilling or "== stage: distil" in line
        if distilling and "optimizer steps (batch" in line:  # the student is training
            proc.send_signal(signal.SIGINT)
            break
    try:
        rest, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # show where the run was instead of a bare timeout
        proc.kill()
        rest = proc.communicate()[0]
        pytest.fail("the run did not stop within 120 s of SIGINT; its output ends:\n"
                    + ("".join(lines) + (rest or ""))[-3000:])
    watchdog.cancel()
    output = "".join(lines) + (rest or "")
    assert proc.returncode == 130, output[-2000:]
    assert "interrupted" in output and "Traceback" not in output
    assert (run_dir / "resolved_config.yaml").is_file() and (run_dir / "mapping.json").is_file()
    assert not (run_dir / "metrics.json").exists()
