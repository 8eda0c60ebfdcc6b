"""The validation split carved from the training file, and which split plays which role
(distillkit.data.splits, data=files)."""

from __future__ import annotations

import json
from functools import partial

import pytest
from transformers import set_seed

from distillkit.data import TextClassificationData, local_files
from distillkit.data.splits import stratified_indices
from distillkit.errors import ConfigError, DataError
from distillkit.models import tiny_teacher
from distillkit.teachers.finetune import FinetuneSettings, cache_key

# What conf/data/files.yaml sets (besides the files).
FILES = {"eval_split": "validation", "test_split": "test", "validation_fraction": 0.1,
         "split_seed": 0, "optional_test": True}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _pairs(n_a: int, n_b: int) -> list[dict]:
    """Text pairs whose hypothesis repeats its premise's number, labels a then b."""
    return [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": "a" if i < n_a else "b"}
            for i in range(n_a + n_b)]


def test_stratified_share_of_every_label_in_row_order():
    labels = ["a"] * 30 + ["b"] * 10
    kept, carved = stratified_indices(labels, 0.1, seed=0)
    assert [labels[i] for i in carved].count("a") == 3
    assert [labels[i] for i in carved].count("b") == 1
    assert sorted(kept + carved) == list(range(40)) and not set(kept) & set(carved)
    assert kept == sorted(kept) and carved == sorted(carved)


def test_rounding_gives_the_total_and_every_label_keeps_a_row():
    # 3 x 5 rows at 0.3: 1.5 each, 4.5 -> 5 in all (largest remainders, ties by label name)
    labels = ["x"] * 5 + ["y"] * 5 + ["z"] * 5
    _, carved = stratified_indices(labels, 0.3, seed=1)
    assert [sum(labels[i] == n for i in carved) for n in "xyz"] == [2, 2, 1]
    # a label with one row keeps it for training, whatever the fraction
    kept, carved = stratified_indices(["a", "b", "b", "b"], 0.5, seed=0)
    assert 0 in kept and len(carved) == 2


def test_carving_is_seeded():
    labels = ["a", "b"] * 50
    assert stratified_indices(labels, 0.2, 7) == stratified_indices(labels, 0.2, 7)
    assert stratified_indices(labels, 0.2, 7) != stratified_indices(labels, 0.2, 8)


def test_text_pairs_carved_whole_and_logged(tmp_path, caplog):
    train = _write(tmp_path / "train.jsonl", _pairs(40, 20))
    data = TextClassificationData(partial(local_files, train=train), text_column="premise",
                                  text_pair_column="hypothesis", **FILES)
    with caplog.at_level("INFO"):
        data.prepare()
    train_rows, val_rows = data.raw["train"], data.raw["eval"]
    assert (len(train_rows), len(val_rows)) == (54, 6)
    assert val_rows["labels"].count(0) == 4 and val_rows["labels"].count(1) == 2
    for rows in (train_rows, val_rows):  # every pair stays whole
        assert [p[1:] for p in rows["premise"]] == [h[1:] for h in rows["hypothesis"]]
    assert not set(train_rows["premise"]) & set(val_rows["premise"])
    assert data.split_names["test"] is None  # no test file: final evaluation on validation
    assert data.carved["rows"] == {"train": 54, "validation": 6}
    log = caplog.text
    assert "carved 6 of the 60 rows of split 'train' into 'validation'" in log
    assert "'train' keeps 54 rows, 'validation' has 6" in log
    assert "a 36/4, b 18/2" in log


def test_single_text_and_same_files_give_the_same_teacher_cache_key(tmp_path):
    rows = [{"text": f"t{i}", "label": "pos" if i % 3 else "neg"} for i in range(50)]
    train = _write(tmp_path / "train.jsonl", rows)

    def key(seed: int) -> str:
        data = TextClassificationData(partial(local_files, train=train),
                                      **{**FILES, "split_seed": seed})
        set_seed(0)  # the same initial teacher weights each time
        bundle = tiny_teacher(labels=data.labels)
        data.tokenize(bundle.tokenizer)
        assert len(data.raw["eval"]) == 5
        return cache_key(bundle, data, FinetuneSettings(), seed=0)
    assert key(0) == key(0)
    assert key(0) != key(1)  # another carving trains the teacher on other rows


def test_given_validation_file_is_used_as_it_is(tmp_path):
    train = _write(tmp_path / "train.jsonl", _pairs(10, 10))
    dev = _write(tmp_path / "dev.jsonl", _pairs(2, 1))
    data = TextClassificationData(partial(local_files, train=train, validation=dev),
                                  text_column="premise", **FILES)
    data.prepare()
    assert (len(data.raw["train"]), len(data.raw["eval"])) == (20, 3)
    assert data.carved is None


def test_given_test_file_is_the_test_split(tmp_path):
    train = _write(tmp_path / "train.jsonl", _pairs(10, 10))
    test = _write(tmp_path / "test.jsonl", _pairs(1, 1))
    data = TextClassificationData(partial(local_files, train=train, test=test),
                                  text_column="premise", **FILES)
    data.prepare()
    assert data.has_split("test") and len(data.raw["test"]) == 2


def test_no_validation_and_no_carving_names_the_fixes(tmp_path):
    train = _write(tmp_path / "train.jsonl", _pairs(10, 10))
    data = TextClassificationData(partial(local_files, train=train), text_column="premise",
                                  **{**FILES, "validation_fraction": 0.0})
    with pytest.raises(DataError) as err:
        data.prepare()
    for phrase in ("split 'validation' (data.eval_split) not found", "the data has: train",
                   "data.source.validation=<file>", "data.validation_fraction=0.1",
                   "data.eval_split="):
        assert phrase in str(err.value)


def test_missing_required_test_split_names_the_fixes(tmp_path):
    train = _write(tmp_path / "train.jsonl", _pairs(10, 10))
    data = TextClassificationData(partial(local_files, train=train, validation=train),
                                  text_column="premise", test_split="test")
    with pytest.raises(DataError, match=r"split 'test' \(data.test_split\) not found.*"
                                        r"data.test_split=null"):
        data.prepare()


def test_fraction_out_of_range_and_too_few_rows(tmp_path):
    train = _write(tmp_path / "train.jsonl", _pairs(2, 2))
    data = TextClassificationData(partial(local_files, train=train), text_column="premise",
                                  **{**FILES, "validation_fraction": 1.0})
    with pytest.raises(ConfigError, match=r"data.validation_fraction=1.0 must be in \[0, 1\)"):
        data.prepare()
    data = TextClassificationData(partial(local_files, train=train), text_column="premise",
                                  **{**FILES, "validation_fraction": 0.1})
    with pytest.raises(DataError, match="split 'train' has 4 rows and "
                                        "data.validation_fraction=0.1 leaves none"):
        data.prepare()
