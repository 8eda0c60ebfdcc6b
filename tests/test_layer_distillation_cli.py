"""Intermediate-layer distillation through the real CLI on tiny models."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from tests.conftest import TINY_RUN, run_cli

pytestmark = pytest.mark.e2e


def test_mmd_with_projection_trains_and_exports_a_plain_student(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli([*TINY_RUN, "loss=mmd", "student.hidden_size=16", "student.num_heads=2",
                    f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "projections: s0-t0 16->32, s1-t1 16->32, s2-t2 16->32" in proc.stdout
    mapping = json.loads((run_dir / "mapping.json").read_text())
    assert [(p["student"], p["teacher"]) for p in mapping["pairs"]] == [(0, 0), (1, 1), (2, 2)]
    assert {p["term"] for p in mapping["plan"]} == {"hidden_mse", "mmd"}
    losses = json.loads((run_dir / "metrics.json").read_text())["train"]["last_losses"]
    assert {"kd", "hard", "hidden_mse", "mmd", "total"} <= set(losses)
    weights = load_file(run_dir / "student" / "model.safetensors")
    assert not [k for k in weights if "projection" in k]  # projections stay out of the export


def test_bad_explicit_pair_fails_before_any_training(tmp_path):
    proc = run_cli([*TINY_RUN, "loss=mmd", "mapping=explicit", "mapping.pairs=[[0,0],[3,1]]",
                    f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "mapping pair 1 (student 3, teacher 1) is out of range" in out
    assert "student indices must be in [0, 2]" in out
    assert "fine-tuning teacher" not in out and "stage: distil" not in out


def test_intermediate_terms_without_pairs_is_a_clear_error(tmp_path):
    proc = run_cli([*TINY_RUN, "loss=mmd", "mapping=none", f"hydra.run.dir={tmp_path / 'r'}"],
                   cwd=tmp_path)
    assert proc.returncode == 2
    assert "gives them no pairs; choose a mapping, e.g. mapping=uniform" in proc.stdout


def test_twelve_layer_teacher_four_layer_student_resolves_uniformly(tmp_path):
    proc = run_cli([*TINY_RUN, "loss=mmd", "teacher.num_layers=12", "student.num_layers=4",
                    "trainer.max_steps=2", "teacher.finetune_settings.epochs=1",
                    "export_student=false", f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "layer mapping (student-teacher): 0-0, 1-3, 2-6, 3-9, 4-12" in proc.stdout
