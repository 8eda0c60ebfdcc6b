"""Data sources and the classification data module: columns, labels, files, errors."""

from __future__ import annotations

import json
from functools import partial

import pytest

from distillkit.data import TextClassificationData, local_files, synthetic_nli
from distillkit.errors import DataError
from distillkit.models.tokenizers import tiny_tokenizer


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_synthetic_is_deterministic_and_balanced():
    a, b = synthetic_nli(seed=3), synthetic_nli(seed=3)
    assert a["train"][:5] == b["train"][:5]
    assert set(a["train"]["label"]) == {"entailment", "neutral", "contradiction"}
    assert synthetic_nli(seed=4)["train"][:5] != a["train"][:5]


def test_pairs_tokenised_with_dynamic_padding():
    data = TextClassificationData(partial(synthetic_nli, n_train=20, n_validation=8, n_test=0),
                                  text_column="premise", text_pair_column="hypothesis",
                                  max_length=16)
    data.tokenize(tiny_tokenizer())
    batch = next(iter(data.loader("train", batch_size=4)))
    assert set(batch) >= {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] <= 16
    assert (batch["token_type_ids"] == 1).any(), "the pair's second text gets segment 1"
    assert data.labels == ["contradiction", "entailment", "neutral"]  # inferred, sorted


def test_local_csv_jsonl_tsv_and_drop_labels(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\ngood film,pos\nbad film,neg\nmeh,-\n")
    _write_jsonl(tmp_path / "dev.jsonl", [{"text": "great", "label": "pos"}])
    (tmp_path / "test.tsv").write_text("text\tlabel\nawful\tneg\n")
    data = TextClassificationData(
        partial(local_files, train=str(tmp_path / "train.csv"),
                validation=str(tmp_path / "dev.jsonl"), test=str(tmp_path / "test.tsv")),
        labels=["neg", "pos"], drop_labels=["-"], test_split="test",
    )
    data.prepare()
    assert data.raw["train"]["labels"] == [1, 0]
    assert data.raw["eval"]["labels"] == [1] and data.raw["test"]["labels"] == [0]


def test_missing_column_names_column_and_choices(tmp_path):
    path = _write_jsonl(tmp_path / "t.jsonl", [{"sentence": "x", "label": "a"}])
    data = TextClassificationData(partial(local_files, train=str(path), validation=str(path)))
    with pytest.raises(DataError, match=r"column 'text' \(data.text_column\).*sentence"):
        data.prepare()


def test_unknown_label_value(tmp_path):
    path = _write_jsonl(tmp_path / "t.jsonl", [{"text": "x", "label": "a"},
                                               {"text": "y", "label": "zzz"}])
    data = TextClassificationData(partial(local_files, train=str(path), validation=str(path)),
                                  labels=["a", "b"])
    with pytest.raises(DataError, match="row 1 .*'zzz'.*data.labels"):
        data.prepare()


def test_malformed_jsonl_reports_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "x", "label": "a"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        local_files(train=str(path))


def test_malformed_csv_reports_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("text,label\nfine,a\nshort\n")
    with pytest.raises(DataError, match=r"bad.csv:3: expected 2 fields"):
        local_files(train=str(path))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        local_files(train=str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        local_files(train=str(tmp_path / "empty.jsonl"))


def test_missing_split_lists_available():
    data = TextClassificationData(partial(synthetic_nli, n_test=0), text_column="premise",
                                  eval_split="dev")
    with pytest.raises(DataError, match="split 'dev'.*train, validation"):
        data.prepare()


def test_row_ids_follow_dropped_rows_and_limits_and_stay_out_of_batches(tmp_path):
    rows = [{"text": f"t{i}", "label": "-" if i == 1 else "a", "uid": f"u{i}"}
            for i in range(5)]
    path = _write_jsonl(tmp_path / "t.jsonl", rows)
    source = partial(local_files, train=str(path), validation=str(path))
    data = TextClassificationData(source, labels=["a"], drop_labels=["-"], id_column="uid",
                                  max_train_samples=3)
    data.tokenize(tiny_tokenizer())
    assert data.row_ids("train") == ["u0", "u2", "u3"]  # row 1 dropped, then the first 3
    assert data.row_ids("eval") == ["u0", "u2", "u3", "u4"]
    assert "uid" not in data.tokenized["train"].column_names
    assert "uid" not in next(iter(data.loader("train", 2)))
    by_index = TextClassificationData(source, labels=["a"], drop_labels=["-"])
    assert by_index.row_ids("train") == ["0", "2", "3", "4"]  # the source row, as a string


def test_duplicate_or_missing_ids_are_data_errors(tmp_path):
    path = _write_jsonl(tmp_path / "t.jsonl", [{"text": "x", "label": "a", "uid": "k"},
                                               {"text": "y", "label": "a", "uid": "k"}])
    data = TextClassificationData(partial(local_files, train=str(path), validation=str(path)),
                                  id_column="uid")
    with pytest.raises(DataError, match=r"duplicate ids in column 'uid'.*'k' at rows 0 and 1"):
        data.row_ids("train")
    other = TextClassificationData(partial(local_files, train=str(path), validation=str(path)),
                                   id_column="pairID")
    with pytest.raises(DataError, match=r"column 'pairID' \(data.id_column\)"):
        other.prepare()
