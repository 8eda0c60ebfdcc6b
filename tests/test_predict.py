"""``distillkit predict`` through the real CLI, on a saved tiny classifier: outputs, input
forms, agreement with transformers' pipeline, and one error line for every bad input.

The whole path from a real (tiny) run to its predictions is tested with the guided example,
tests/test_own_data_doc.py."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import pipeline, set_seed

from distillkit.models import tiny_teacher
from tests.conftest import one_error_line
from tests.own_files import pairs, reviews, write_csv

pytestmark = pytest.mark.e2e
LABELS = ["negative", "positive"]
NLI = ["entailment", "neutral", "contradiction"]


def _predict(args: list[str], cwd: Path, stdin: bytes | None = None):
    return subprocess.run([sys.executable, "-m", "distillkit", "predict", *map(str, args)],
                          cwd=cwd, input=stdin, capture_output=True, timeout=300, check=False)


def _ok(proc) -> str:
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()[-3000:]
    return proc.stdout.decode()


def _fake_run(tmp: Path, labels: list[str], data: str, seed: int = 0) -> Path:
    """A run directory as a run leaves it: student/ (a seeded random tiny classifier) and
    resolved_config.yaml with the data section ``data`` (YAML lines)."""
    run = tmp / f"run{seed}"
    set_seed(seed)
    bundle = tiny_teacher(labels=labels)
    bundle.model.save_pretrained(run / "student")
    bundle.tokenizer.save_pretrained(run / "student")
    (run / "resolved_config.yaml").write_text("task: classification\ndata:\n" + data)
    return run


@pytest.fixture(scope="module")
def review_run(tmp_path_factory) -> Path:
    return _fake_run(tmp_path_factory.mktemp("predict"), LABELS,
                     "  text_column: review\n  text_pair_column: null\n  id_column: null\n"
                     "  max_length: 64\n")


def _like_pipeline(model_dir: Path, inputs: list, out: list[dict]) -> None:
    """``out`` (predict's rows) has the labels and probabilities of transformers' pipeline."""
    classify = pipeline("text-classification", model=str(model_dir), device="cpu", top_k=None)
    expected = classify(inputs)
    assert len(out) == len(expected)
    for row, scores in zip(out, expected, strict=True):
        assert row["label"] == max(scores, key=lambda s: s["score"])["label"]
        for s in scores:
            assert float(row[f"p_{s['label']}"]) == pytest.approx(s["score"], abs=2e-6)


def test_csv_rows_with_ids_labels_and_probabilities_like_pipeline(tmp_path, review_run):
    rows = reviews(7, seed=3)
    write_csv(tmp_path / "new.csv", [{"id": r["id"], "review": r["text"]} for r in rows])
    proc = _predict([review_run, "new.csv", "--batch-size", "3"], tmp_path)
    out = list(csv.DictReader(io.StringIO(_ok(proc))))
    assert list(out[0]) == ["id", "label", "p_negative", "p_positive"]
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    for r in out:
        p = [float(r["p_negative"]), float(r["p_positive"])]
        assert sum(p) == pytest.approx(1.0, abs=1e-5)
        assert r["label"] == LABELS[p.index(max(p))]
    _like_pipeline(review_run / "student", [r["text"] for r in rows], out)
    assert "predict: 100%" in proc.stderr.decode() and "7/7" in proc.stderr.decode()


def test_jsonl_output_file_and_stdin_forms(tmp_path, review_run):
    texts = [r["text"] for r in reviews(4, seed=5)]
    lines = ("\n".join(texts) + "\n\n").encode()  # a blank line is skipped
    _ok(_predict([review_run / "student", "-", "--output", "out.jsonl"], tmp_path, lines))
    by_lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in by_lines] == [["label", "p_negative", "p_positive"]] * 4
    jsonl = "".join(json.dumps({"id": i, "review": t}) + "\n" for i, t in enumerate(texts))
    by_json = [json.loads(x) for x in _ok(_predict(
        [review_run, "-", "--format", "jsonl", "--no-progress"], tmp_path,
        jsonl.encode())).splitlines()]
    assert [r["id"] for r in by_json] == ["0", "1", "2", "3"]
    assert [r["label"] for r in by_json] == [r["label"] for r in by_lines]
    _like_pipeline(review_run / "student", texts, by_json)


def test_a_student_dir_without_run_config_takes_the_column_flags(tmp_path):
    run = _fake_run(tmp_path, NLI, "  text_column: premise\n", seed=1)
    (run / "resolved_config.yaml").unlink()  # a plain save_pretrained directory
    rows = pairs(6, seed=4)
    write_csv(tmp_path / "pairs.tsv", rows)
    (tmp_path / "pairs.tsv").write_text((tmp_path / "pairs.tsv").read_text().replace(",", "\t"))
    out = list(csv.DictReader(io.StringIO(_ok(_predict(
        [run / "student", "pairs.tsv", "--text-column", "premise", "--text-pair-column",
         "hypothesis"], tmp_path)))))
    assert list(out[0]) == ["label", *[f"p_{n}" for n in NLI]]
    _like_pipeline(run / "student",
                   [{"text": r["premise"], "text_pair": r["hypothesis"]} for r in rows], out)


def test_text_pair_columns_come_from_the_run(tmp_path):
    run = _fake_run(tmp_path, NLI, "  text_column: premise\n  text_pair_column: hypothesis\n"
                                   "  id_column: pid\n  max_length: 48\n", seed=2)
    rows = [{**r, "pid": f"p{i}"} for i, r in enumerate(pairs(5, seed=6))]
    write_csv(tmp_path / "pairs.csv", rows)
    out = list(csv.DictReader(io.StringIO(_ok(_predict([run, "pairs.csv"], tmp_path)))))
    assert [r["pid"] for r in out] == [r["pid"] for r in rows]
    _like_pipeline(run / "student",
                   [{"text": r["premise"], "text_pair": r["hypothesis"]} for r in rows], out)


# case -> (arguments after `predict`, stdin, phrases of the error line); run in a scratch dir
# holding good.csv (id, review), run/ (the review run) and the files each case writes
BAD = {
    "missing_input_file": (["run", "nope.csv"], None,
                           ["input file not found: nope.csv", "check the path"]),
    "missing_column": (["run", "good.csv", "--text-column", "sentence"], None,
                       ["column 'sentence' (--text-column) not in good.csv",
                        "its columns are: id, review", "Pass --text-column"]),
    "empty_text": (["run", "empty_text.csv"], None,
                   ["row 2 of empty_text.csv has an empty text in column 'review'",
                    "fill it or remove the row"]),
    "not_utf8": (["run", "latin1.csv"], None,
                 ["latin1.csv:3: not UTF-8 text (byte 0xe9)", "save the input as UTF-8"]),
    "not_utf8_stdin": (["run", "-"], b"fine\ncaf\xe9\n",
                       ["<stdin>:2: not UTF-8 text", "save the input as UTF-8"]),
    "not_a_model_dir": (["elsewhere", "good.csv"], None,
                        ["elsewhere is not a model directory", "no config.json",
                         "pass a run directory"]),
    "run_without_student": (["nostudent", "good.csv"], None,
                            ["nostudent is a run directory without a student/",
                             "export_student=false"]),
    "unknown_extension": (["run", "good.xlsx"], None,
                          ["cannot tell the format of good.xlsx", "--input-format"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_error_line(tmp_path, review_run, case):
    args, stdin, phrases = BAD[case]
    (tmp_path / "run").symlink_to(review_run)
    write_csv(tmp_path / "good.csv", [{"id": "a", "review": "yes"}])
    (tmp_path / "good.xlsx").write_text("id,review\na,yes\n")
    (tmp_path / "empty_text.csv").write_text("id,review\na,yes\nb, \n")
    (tmp_path / "latin1.csv").write_bytes("id,review\na,yes\nb,café\n".encode("latin-1"))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "nostudent").mkdir()
    (tmp_path / "nostudent" / "resolved_config.yaml").write_text("task: classification\n")
    proc = _predict([*args, "--output", "out.csv"], tmp_path, stdin)
    one_error_line(proc.returncode, (proc.stdout + proc.stderr).decode(), phrases)
    assert not (tmp_path / "out.csv").exists() and not list(tmp_path.glob(".out.csv*"))
