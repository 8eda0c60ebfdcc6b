"""A saved run re-runs from its .hydra/config.yaml with the same metrics; provenance is saved."""

from __future__ import annotations

import json

import pytest
import torch

from distillkit.app.reproduce import compare
from tests.conftest import TINY_RUN, run_cli


def _metrics(acc=0.5, loss=0.7):
    return {"teacher": {"accuracy": 0.9, "loss": 0.2}, "student": {"accuracy": acc, "loss": loss},
            "train": {"steps": 4, "last_losses": {"total": 1.0},
                      "evals": [{"step": 2, "accuracy": 0.4, "loss": 1.0}]}}


def test_compare_accepts_tiny_loss_noise_only():
    assert compare(_metrics(), _metrics(loss=0.7 + 5e-7)) == []
    assert compare(_metrics(), _metrics(loss=0.7 + 5e-6)) == ["student.loss: 0.7 -> 0.700005"]
    assert compare(_metrics(), _metrics(acc=0.5 + 1e-9))[0].startswith("student.accuracy")


@pytest.mark.e2e
def test_saved_run_reproduces_exactly(tmp_path):
    run_dir, again, short = tmp_path / "run", tmp_path / "again", tmp_path / "short"
    proc = run_cli([*TINY_RUN, "trainer.max_steps=6", "loss.temperature=2",
                    f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["seed"] == 42 and prov["versions"]["torch"].split("+")[0] == \
        torch.__version__.split("+")[0]
    assert len(prov["git"]["commit"]) == 40 or prov["git"]["commit"] == "unknown"
    assert "loss.temperature=2" in prov["launch"]["overrides"]
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        assert (run_dir / ".hydra" / name).is_file()

    # the documented long form: the saved job config, no defaults recomposed
    proc = run_cli(["--config-path", str(run_dir / ".hydra"), "--config-name", "config",
                    f"hydra.run.dir={again}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    original = json.loads((run_dir / "metrics.json").read_text())
    rerun = json.loads((again / "metrics.json").read_text())
    assert compare(original, rerun) == []
    assert rerun["student"]["accuracy"] == original["student"]["accuracy"]
    assert (again / "distillkit.log").is_file()
    assert (again / "resolved_config.yaml").read_text() == \
        (run_dir / "resolved_config.yaml").read_text()

    # the short form compares the metrics itself
    proc = run_cli(["reproduce", str(run_dir), f"hydra.run.dir={short}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"reproduced {run_dir}" in proc.stdout + proc.stderr
    assert compare(original, json.loads((short / "metrics.json").read_text())) == []


@pytest.mark.e2e
def test_reproduce_refuses_a_directory_that_is_no_run(tmp_path):
    proc = run_cli(["reproduce", str(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 2
    assert "is not a distillkit run directory" in proc.stderr


def test_compare_offline_teacher_and_export_runs():
    offline = _metrics() | {"teacher": {"accuracy": None, "loss": None}}
    assert compare(offline, offline) == []
    export = {"mode": "export_logits", "export": {"rows": 512}, "teacher": {"accuracy": 0.75}}
    assert compare(export, export) == []
    assert compare(export, export | {"export": {"rows": 500}}) == ["export.rows: 512 -> 500"]
