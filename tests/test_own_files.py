"""data=files through the real CLI: which split the final evaluation runs on, and the
validation split carved from the training file when no validation file is given."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.own_files import pairs, reviews, write_csv

pytestmark = pytest.mark.e2e
# tiny models, the teacher used as it is, two steps: only the splits matter here
QUICK = ["teacher=tiny", "student=tiny", "teacher.finetune=false", "trainer=debug",
         "trainer.max_steps=2", "trainer.eval_every_steps=2", "data=files"]


def _run(tmp_path, *args):
    run_dir = tmp_path / "run"
    proc = run_cli([*QUICK, *args, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    return json.loads((run_dir / "metrics.json").read_text()), output


def test_a_given_test_file_is_the_final_evaluation(tmp_path):
    """Before issue 23, data=files left data.test_split unset: the test file was read and
    the final evaluation silently ran on the validation file."""
    write_csv(tmp_path / "train.csv", pairs(60, seed=1))
    write_csv(tmp_path / "dev.csv", pairs(12, seed=2))
    write_csv(tmp_path / "test.csv", pairs(20, seed=3))
    metrics, output = _run(tmp_path, "data.source.train=train.csv",
                           "data.source.validation=dev.csv", "data.source.test=test.csv",
                           "data.text_column=premise", "data.text_pair_column=hypothesis")
    assert metrics["eval_split"] == "test"
    assert metrics["student"]["examples"] == metrics["teacher"]["examples"] == 20
    assert metrics["splits"]["final_role"] == "test" and metrics["splits"]["carved"] is None
    assert "[test split, 20 examples]" in output


def test_train_and_test_files_carve_a_validation_split(tmp_path):
    write_csv(tmp_path / "train.csv", reviews(100))
    write_csv(tmp_path / "test.csv", reviews(15, seed=9, start=100))
    metrics, output = _run(tmp_path, "data.source.train=train.csv",
                           "data.source.test=test.csv")
    assert "carved 10 of the 100 rows of split 'train' into 'validation'" in output
    assert "(rows per label, train/validation: negative 36/4, positive 54/6)" in output
    assert metrics["splits"]["carved"] == {
        "from": "train", "into": "validation", "fraction": 0.1, "seed": 0,
        "rows": {"train": 90, "validation": 10}}
    assert metrics["eval_split"] == "test" and metrics["student"]["examples"] == 15
    assert metrics["train"]["evals"][-1]["examples"] == 10  # evaluated on the carved rows


def test_without_a_test_file_the_summary_says_validation(tmp_path):
    write_csv(tmp_path / "train.csv", reviews(50))
    metrics, output = _run(tmp_path, "data.source.train=train.csv")
    assert metrics["eval_split"] == "validation"
    assert metrics["splits"]["final_role"] == "eval"
    assert metrics["student"]["examples"] == 5
    assert ("[validation split (carved from train: 10%) - no test split: these are "
            "validation accuracies, 5 examples]") in output
