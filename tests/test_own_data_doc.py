"""docs/own-data.md, the guided example, runs as written: every shell command and the Python
snippet on its page, on small generated files, with tiny models (the overrides the page names
are appended to each distillation command); then what the page says about their output holds.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import pipeline

from tests.own_files import pairs, read_csv, reviews, write_csv

pytestmark = pytest.mark.e2e
DOC = Path(__file__).resolve().parents[1] / "docs" / "own-data.md"
TINY = "teacher=tiny student=tiny trainer=debug teacher.finetune_settings.epochs=2"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)


def _blocks(kind: str) -> list[str]:
    return [body for lang, body in FENCE.findall(DOC.read_text()) if lang == kind]


def _command(line: str) -> str:
    """A documented command as the test runs it: this interpreter, tiny models."""
    python = shlex.quote(sys.executable)
    line = line.replace("python -m distillkit", "@DK@").replace("distillkit predict",
                                                                  "@DK@ predict")
    if "@DK@ predict" not in line:
        line = f"{line} {TINY}"
    return line.replace("@DK@", f"{python} -m distillkit")


def _write_files(cwd: Path) -> None:
    write_csv(cwd / "reviews.csv", reviews(200))
    write_csv(cwd / "reviews_test.csv", reviews(40, seed=1, start=200))
    new = [{**r, "id": f"n{i}"} for i, r in enumerate(reviews(6, seed=2))]
    write_csv(cwd / "new.csv", new, ["id", "text"])
    write_csv(cwd / "pairs_train.csv", pairs(150, seed=3))
    write_csv(cwd / "pairs_dev.csv", pairs(30, seed=4))
    write_csv(cwd / "pairs_test.csv", pairs(30, seed=5))


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> dict:
    """Runs the page's commands in order in a scratch directory; their outputs by command."""
    cwd = tmp_path_factory.mktemp("own-data")
    _write_files(cwd)
    env = {"DISTILLKIT_CACHE": str(cwd / "dk-cache"), "PYTHONUNBUFFERED": "1"}
    outputs = {}
    commands = [line for block in _blocks("bash") for line in block.splitlines()
                if line.strip() and not line.startswith("#")]
    assert len(commands) == 5, commands
    for line in commands:
        proc = subprocess.run(["bash", "-c", _command(line)], cwd=cwd, capture_output=True,
                              text=True, timeout=600, check=False,
                              env={**__import__("os").environ, **env})
        assert proc.returncode == 0, f"{line}\n{(proc.stdout + proc.stderr)[-3000:]}"
        outputs[line] = proc.stdout + proc.stderr
    (snippet,) = _blocks("python")
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"cwd": cwd, "outputs": outputs, "snippet": proc.stdout}


def _output(walkthrough: dict, start: str) -> str:
    (line,) = [c for c in walkthrough["outputs"] if c.startswith(start)]
    return walkthrough["outputs"][line]


def test_the_page_names_the_tiny_form_the_suite_runs():
    assert TINY in _blocks("text")[1]
    assert "tests/test_own_data_doc.py" in DOC.read_text()


def test_the_files_look_as_documented(tmp_path):
    _write_files(tmp_path)
    train_sample, new_sample, predictions_sample = _blocks("csv")
    assert train_sample.splitlines()[0] == "id,text,label"
    assert list(read_csv(tmp_path / "reviews.csv")[0]) == ["id", "text", "label"]
    assert list(read_csv(tmp_path / "new.csv")[0]) == new_sample.splitlines()[0].split(",")
    assert predictions_sample.splitlines()[0] == "id,label,p_negative,p_positive"


def test_distillation_carves_validation_and_ends_on_the_test_file(walkthrough):
    output = _output(walkthrough, "python -m distillkit data=files data.source.train=reviews")
    for line in _blocks("text")[0].splitlines():  # the log lines the page shows
        if line != "...":
            assert line in output, line
    assert "[test split, 40 examples]" in output
    metrics = json.loads((walkthrough["cwd"] / "runs/reviews/metrics.json").read_text())
    assert metrics["eval_split"] == "test" and metrics["splits"]["carved"]["rows"] == {
        "train": 180, "validation": 20}
    pair_metrics = json.loads((walkthrough["cwd"] / "runs/pairs/metrics.json").read_text())
    assert pair_metrics["eval_split"] == "test" and pair_metrics["splits"]["carved"] is None
    assert pair_metrics["student"]["examples"] == 30


def test_predictions_match_the_pipeline_one_liner(walkthrough):
    cwd = walkthrough["cwd"]
    rows = read_csv(cwd / "predictions.csv")
    new = read_csv(cwd / "new.csv")
    assert [r["id"] for r in rows] == [r["id"] for r in new]
    classify = pipeline("text-classification", model=str(cwd / "runs/reviews/student"),
                        device="cpu")
    assert [r["label"] for r in rows] == [p["label"] for p in classify([r["text"]
                                                                        for r in new])]
    # the snippet's first text is the one the page pipes into distillkit predict
    snippet_labels = re.findall(r"'label': '(\w+)'", walkthrough["snippet"])
    echoed = [line.split(",")[0] for line in _output(walkthrough, "echo ").splitlines()
              if line.startswith(("positive,", "negative,"))]
    assert len(snippet_labels) == 2 and snippet_labels[:1] == echoed


def test_pair_run_and_stdin_predictions(walkthrough):
    cwd = walkthrough["cwd"]
    lines = (cwd / "pairs_predictions.jsonl").read_text().splitlines()
    assert len(lines) == 30
    assert sorted(json.loads(lines[0])) == ["label", "p_contradiction", "p_entailment",
                                            "p_neutral"]
    stdout = _output(walkthrough, "echo ")
    rows = list(csv.reader(line for line in stdout.splitlines()
                           if line.startswith(("label,", "positive,", "negative,"))))
    assert rows[0] == ["label", "p_negative", "p_positive"] and len(rows) == 2
