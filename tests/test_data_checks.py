"""Bad data gets one clear line (distillkit.data.checks): encodings, null/NaN values, empty
texts, stray inferred labels. The CLI cases are in tests/test_bad_inputs.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from datasets import Dataset

from distillkit.data import TextClassificationData, local_files
from distillkit.data.checks import check_texts, inferred_labels, text_encoding, to_dataset
from distillkit.data.sources import read_rows
from distillkit.errors import DataError


def _write(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding=encoding)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
def test_a_file_in_another_encoding_names_the_byte_offset_and_line(tmp_path, suffix):
    body = {".jsonl": ['{"text": "a", "label": "x"}', '{"text": "b", "label": "x"}',
                       '{"text": "d\u00e9j\u00e0", "label": "x"}'],
            ".csv": ["text,label", "a,x", "b,x", "d\u00e9j\u00e0,x"],
            ".json": ['[{"text": "a", "label": "x"},', '{"text": "b", "label": "x"},',
                      '{"text": "d\u00e9j\u00e0", "label": "x"}]']}[suffix]
    path = _write(tmp_path / f"data{suffix}", body, encoding="cp1252")
    offset = path.read_bytes().index(b"\xe9")
    line = path.read_bytes()[:offset].count(b"\n") + 1
    with pytest.raises(DataError, match=rf"data{suffix}: not valid utf-8 text at byte offset "
                                        rf"{offset} \(line {line}: .*data.encoding=latin-1"):
        read_rows(path)
    with text_encoding("cp1252"):
        assert read_rows(path)[-1]["text"] == "d\u00e9j\u00e0"
    with text_encoding("no-such-codec"), pytest.raises(DataError, match="data.encoding=no-su"):
        read_rows(path)


def test_data_encoding_reaches_the_files(tmp_path):
    path = _write(tmp_path / "t.jsonl", [f'{{"text": "caf\u00e9 {i}", "label": "{i % 2}"}}'
                                         for i in range(4)], encoding="latin-1")
    data = TextClassificationData(lambda: local_files(train=str(path), validation=str(path)),
                                  encoding="latin-1")
    assert data.labels == ["0", "1"] and data.raw["train"]["text"][0] == "caf\u00e9 0"


@pytest.mark.parametrize(("value", "shown"), [(float("nan"), r"nan \(NaN\)"),
                                              (3, r"3 \(a number\)"),
                                              (["a"], r"\['a'\] \(a list\)")])
def test_a_column_of_mixed_types_names_the_row(tmp_path, value, shown):
    rows = [{"text": "a", "label": "x"}, {"text": "b", "label": "x"},
            {"text": value, "label": "x"}]
    with pytest.raises(DataError, match=rf"f.jsonl: row 2 has {shown} in column 'text', "
                                        "whose other rows hold text"):
        to_dataset(rows, tmp_path / "f.jsonl")


def test_null_and_empty_texts():
    ds = Dataset.from_list([{"t": "a", "p": "b", "label": "x"},
                            {"t": "", "p": "b", "label": "x"},
                            {"t": "c", "p": " \t\n", "label": "x"},
                            {"t": "  ", "p": "d", "label": "-"}])  # dropped label: ignored
    with pytest.raises(DataError, match=r"split 'train' has 2 rows with an empty or "
                                        r"whitespace-only text in 't', 'p' \(rows 1, 2\)"):
        check_texts(ds, ["t", "p"], "train", labels=list(ds["label"]), drop_labels={"-"})
    with pytest.raises(DataError, match=r"has 3 rows with an empty.*rows 1, 2, 3"):
        check_texts(ds, ["t", "p"], "train")
    nulls = Dataset.from_list([{"t": "a"}, {"t": None}, {"t": None}])
    with pytest.raises(DataError, match=r"has 2 rows without a text in column 't' \(null or "
                                        r"not a string, e.g. None; rows 1, 2\)"):
        check_texts(nulls, ["t"], "train", drop_empty=True)


def test_drop_empty_drops_them_with_a_warning(caplog):
    ds = Dataset.from_list([{"t": "a"}, {"t": " "}, {"t": "b"}, {"t": ""}])
    with caplog.at_level(logging.WARNING, logger="distillkit"):
        kept = check_texts(ds, ["t"], "train", drop_empty=True)
    assert kept["t"] == ["a", "b"]
    assert "dropped 2 rows with an empty or whitespace-only text (rows 1, 3" in caplog.text
    with pytest.raises(DataError, match="no rows left"):
        check_texts(Dataset.from_list([{"t": ""}]), ["t"], "train", drop_empty=True)


def test_drop_empty_through_the_data_module(tmp_path):
    path = _write(tmp_path / "t.jsonl", ['{"text": "a", "label": "x"}',
                                         '{"text": "", "label": "y"}',
                                         '{"text": "b", "label": "y"}'])
    source = lambda: local_files(train=str(path), validation=str(path))  # noqa: E731
    with pytest.raises(DataError, match="data.drop_empty=true"):
        TextClassificationData(source).prepare()
    data = TextClassificationData(source, drop_empty=True)
    assert data.labels == ["x", "y"] and data.raw["train"]["labels"] == [0, 1]


def test_a_stray_inferred_label_is_refused():
    names = ["pos", "neg"] * 100 + ["neg "]
    with pytest.raises(DataError, match=r"1 label in very few of its 201 rows \('neg ' in 1 "
                                        r"row: 200\) while '(pos|neg)' is in 100.*data.labels="
                                        r"\[neg,pos\].*data.drop_labels=\[neg \]"):
        inferred_labels(names, set(), "train")
    assert inferred_labels(names, {"neg "}, "train") == ["neg", "pos"]


@pytest.mark.parametrize("names", [
    ["a", "b", "c"],                              # tiny data: no label is common
    ["a"] * 15 + ["b"] * 15 + ["c"],              # the most common has < 10 x 2 rows
    ["a"] * 2000 + ["b"] * 2000 + ["c"] * 5,      # 5 of 4005 rows: at the 0.1% floor (5)
])
def test_small_or_real_classes_are_not_stray(names):
    assert inferred_labels(names, set(), "train") == sorted(set(names))


def test_stray_threshold_grows_with_the_data():
    names = ["a"] * 5000 + ["b"] * 5000 + ["c"] * 9  # 9 < 0.1% of 10009 rows (11)
    with pytest.raises(DataError, match="'c' in 9 rows"):
        inferred_labels(names, set(), "train")
