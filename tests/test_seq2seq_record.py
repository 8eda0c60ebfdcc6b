"""A seq2seq run goes through the same stages and writes the same record as a classification
run, so every tool that reads the record works on it: sweep summaries, ``distillkit report``,
``distillkit reproduce``, HParams, checkpoints and ``resume``, the objective."""

from __future__ import annotations

import csv
import json
import signal

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distillkit.app.reproduce import compare
from distillkit.run import KILL_AT_STEP_ENV
from tests.conftest import run_cli
from tests.test_seq2seq_cli import TINY

pytestmark = pytest.mark.e2e
WORD_KD = [*TINY, "loss=seq_word_kd"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One teacher cache for the module: the first run trains the tiny T5 teacher."""
    return tmp_path_factory.mktemp("dk-cache")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache):
    """A two-job seq2seq multirun over loss.alpha."""
    root = tmp_path_factory.mktemp("s2s-sweep")
    proc = run_cli(["-m", *WORD_KD, "loss.alpha=0.3,0.7", f"hydra.sweep.dir={root / 'sweep'}",
                    "hydra.sweep.subdir=job${hydra.job.num}"],  # TINY's names are too long
                   cwd=root, env={"DISTILLKIT_CACHE": str(cache)})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return root / "sweep"


def _jobs(sweep):
    return {p.name: json.loads((p / "metrics.json").read_text())
            for p in sorted(sweep.iterdir()) if (p / "metrics.json").is_file()}


def test_seq2seq_multirun_summarises_itself_by_its_metric(sweep):
    jobs = _jobs(sweep)
    assert len(jobs) == 2
    rows = {r["job"]: r for r in csv.DictReader((sweep / "summary.csv").open())}
    assert set(rows) == set(jobs)
    for name, record in jobs.items():
        assert record["schema"] == 2 and record["task"] == "seq2seq"
        assert record["metric"] == "exact_match"
        assert rows[name]["status"] == "ok"
        assert float(rows[name]["student_exact_match"]) == record["student"]["exact_match"]
        assert float(rows[name]["teacher_exact_match"]) == record["teacher"]["exact_match"]
        assert float(rows[name]["train_loss"]) == record["train"]["last_losses"]["total"]
        assert record["objective"] == {"name": "final_exact_match",
                                       "value": record["student"]["exact_match"]}
    md = (sweep / "summary.md").read_text()
    assert "2 job(s): 2 finished, 0 failed" in md and "student EM" in md
    assert (sweep / "summary.png").is_file()


def test_report_command_on_a_seq2seq_sweep(sweep, tmp_path):
    (sweep / "summary.csv").unlink()
    proc = run_cli(["report", str(sweep)], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
    header = next(csv.reader((sweep / "summary.csv").open()))
    assert "student_exact_match" in header and "student_accuracy" not in header


def test_seq2seq_jobs_log_an_hparams_session_with_their_metric(sweep):
    for name, record in _jobs(sweep).items():
        acc = EventAccumulator(str(sweep / name / "tb"))
        acc.Reload()
        assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
        value = acc.Scalars("hparams/student_exact_match")[-1].value
        assert value == pytest.approx(record["student"]["exact_match"])


def test_reproduce_a_seq2seq_run(sweep, tmp_path, cache):
    job = sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file())[0]
    again = tmp_path / "again"
    proc = run_cli(["reproduce", str(job), f"hydra.run.dir={again}"], cwd=tmp_path,
                   env={"DISTILLKIT_CACHE": str(cache)})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and f"reproduced {job}" in out, out[-3000:]
    assert compare(json.loads((job / "metrics.json").read_text()),
                   json.loads((again / "metrics.json").read_text())) == []


def test_a_killed_seq2seq_run_resumes_to_the_same_record(tmp_path, cache):
    run = [*WORD_KD, "trainer.max_steps=8", "trainer.checkpoint_every_steps=3",
           "trainer.eval_every_steps=4", "export_student=false"]
    env = {"DISTILLKIT_CACHE": str(cache)}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = run_cli([*run, f"hydra.run.dir={straight}"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    proc = run_cli([*run, f"hydra.run.dir={killed}"], cwd=tmp_path,
                   env={**env, KILL_AT_STEP_ENV: "5"})
    assert proc.returncode == -signal.SIGKILL, (proc.stdout + proc.stderr)[-3000:]
    assert not (killed / "metrics.json").exists()
    assert (killed / "checkpoints" / "step-00000004.pt").is_file()  # after the step-4 eval
    proc = run_cli([*run, f"hydra.run.dir={killed}", "resume=auto"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert b["resumed_from"]["step"] == 4 and b["stages"]["distil"] == "resumed"
    assert [e["step"] for e in b["train"]["evals"]] == [4, 8]
    assert "exact_match" in b["train"]["evals"][0]
    assert compare(a, b) == []


def test_validation_objective_for_seq2seq(tmp_path, cache):
    run_dir = tmp_path / "run"
    proc = run_cli([*WORD_KD, "objective=validation", f"hydra.run.dir={run_dir}"],
                   cwd=tmp_path, env={"DISTILLKIT_CACHE": str(cache)})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["objective"]["name"] == "validation_exact_match"
    assert record["objective"]["value"] == record["validation"]["student"]["exact_match"]
    assert record["validation"]["split"] == "validation"
