"""Multiruns through the real CLI: one directory per job, a summary at the end, failing jobs
recorded instead of stopping the sweep, the teacher trained once, Optuna and joblib sweeps."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.conftest import TINY_RUN, run_cli

pytestmark = pytest.mark.e2e
FAST = ["trainer.max_steps=2", "export_student=false"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One teacher cache for the module (the first sweep starts it empty)."""
    return tmp_path_factory.mktemp("dk-cache")


def _hparams(tb_dir) -> dict:
    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    values = {k: v.number_value if v.HasField("number_value") else v.string_value
              for k, v in start.session_start_info.hparams.items()}
    return {"hparams": values,
            "student_accuracy": acc.Scalars("hparams/student_accuracy")[-1].value}


def test_sweep_summarises_itself_and_survives_a_failing_job(tmp_path, cache):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *TINY_RUN, *FAST, "loss.temperature=1,4", "loss.alpha=0.5,1.5",
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                   env={"DISTILLKIT_CACHE": str(cache)})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]  # the sweep finished, but a job failed
    assert "2 of 4 sweep jobs failed" in out and "Traceback" not in out
    # teacher work once per sweep: the first valid job fine-tunes, the other reuses it; the
    # alpha=1.5 jobs fail on their config before any teacher work
    assert out.count("fine-tuning teacher") == 1
    assert out.count("reusing fine-tuned teacher from cache") == 1

    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 4 and all("loss.temperature=" in j.name for j in jobs)
    finished = {j.name: json.loads((j / "metrics.json").read_text())
                for j in jobs if (j / "metrics.json").is_file()}
    failed = [j for j in jobs if (j / "error.json").is_file()]
    assert len(finished) == 2 and all("loss.alpha=0.5" in name for name in finished)
    assert len(failed) == 2 and all("loss.alpha=1.5" in j.name for j in failed)
    error = json.loads((failed[0] / "error.json").read_text())
    assert error["error"].startswith("loss.alpha must be in [0, 1], got 1.5")

    rows = {r["job"]: r for r in csv.DictReader((sweep / "summary.csv").open())}
    assert set(rows) == {j.name for j in jobs}
    for name, metrics in finished.items():
        assert rows[name]["status"] == "ok"
        assert float(rows[name]["student_accuracy"]) == metrics["student"]["accuracy"]
        assert float(rows[name]["train_loss"]) == metrics["train"]["last_losses"]["total"]
        assert metrics["stages"]["teacher"] in ("fine-tuned", "cache")
        tb = _hparams(sweep / name / "tb")  # TensorBoard HParams session of the job
        assert tb["hparams"]["loss.temperature"] == float(rows[name]["loss.temperature"])
        assert tb["hparams"]["loss.alpha"] == 0.5 and tb["hparams"]["student"] == "tiny"
        assert tb["student_accuracy"] == pytest.approx(metrics["student"]["accuracy"])
    for job in failed:
        assert rows[job.name]["status"] == "failed"
        assert "got 1.5" in rows[job.name]["error"]
    md = (sweep / "summary.md").read_text()
    assert "4 job(s): 2 finished, 2 failed" in md and "## Failed jobs" in md
    assert "Teacher: fine-tuned in 1 job(s), reused from the cache in 1 job(s)" in md
    assert (sweep / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_optuna_search_optimises_validation_accuracy(tmp_path, cache):
    sweep = tmp_path / "optuna"
    proc = run_cli(["-m", "experiment=tiny_kd", "hparams_search=optuna",
                    "hydra.sweeper.n_trials=3", *FAST, "trainer.progress=false",
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                   env={"DISTILLKIT_CACHE": str(cache)})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    metrics = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert len(metrics) == 3
    for m in metrics:
        assert m["objective"]["name"] == "validation_accuracy"
        assert m["objective"]["value"] == m["validation"]["student"]["accuracy"]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(m["objective"]["value"] for m in metrics)
    assert set(best["best_params"]) == {"loss.temperature", "loss.alpha",
                                        "trainer.optimizer.lr"}
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert len(rows) == 3 and {"loss.temperature", "trainer.optimizer.lr"} <= set(rows[0])


def test_parallel_joblib_sweep_finetunes_the_teacher_once(tmp_path):
    sweep = tmp_path / "parallel"
    proc = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY_RUN, *FAST,
                    "loss.temperature=1,4", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    logs = [p.read_text() for p in sweep.glob("*/distillkit.log")]
    assert len(logs) == 2 and len(list(sweep.glob("*/metrics.json"))) == 2
    assert sum("fine-tuning teacher" in text for text in logs) == 1
    assert sum("reusing fine-tuned teacher from cache" in text for text in logs) == 1
    assert (sweep / "summary.md").is_file()
