"""Offline teacher logits: export (mode=export_logits), file formats, teacher=offline."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
from omegaconf import OmegaConf

from distillkit.data import TextClassificationData, synthetic_nli
from distillkit.errors import ConfigError, DataError
from distillkit.models import bert_student, student_from_teacher, tiny_teacher
from distillkit.models.tokenizers import tiny_tokenizer
from distillkit.teachers.export import ExportRequest
from distillkit.teachers.offline import (
    OfflineTeacher,
    check_offline,
    match_offline_logits,
    offline_teacher,
    read_logits,
    write_logits,
)
from tests.conftest import TINY_RUN, run_cli

LABELS = ["entailment", "neutral", "contradiction"]


@pytest.fixture
def tok_dir(tmp_path):
    """The tiny tokenizer saved as a directory (what teacher.tokenizer loads)."""
    path = tmp_path / "tok"
    tiny_tokenizer().save_pretrained(path)
    return path


def _data(**kwargs) -> TextClassificationData:
    data = TextClassificationData(partial(synthetic_nli, n_train=20, n_validation=8, n_test=0),
                                  text_column="premise", text_pair_column="hypothesis",
                                  labels=LABELS, **kwargs)
    data.prepare()
    return data


def _teacher(path, tok_dir, **kwargs) -> OfflineTeacher:
    return offline_teacher(str(path), tokenizer=str(tok_dir), labels=LABELS, **kwargs)


@pytest.mark.parametrize("name", ["logits.tsv", "logits.parquet"])
def test_round_trip_is_exact(tmp_path, name):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((50, 3)) * 10 ** rng.uniform(-6, 3, (50, 1))).astype(np.float32)
    ids = [f"id {i}#x" for i in range(50)]
    fmt = write_logits(tmp_path / name, ids, logits)
    table = read_logits(tmp_path / name)
    assert fmt == name.split(".")[1]
    assert table.ids == ids
    assert table.logits.dtype == np.float32
    assert np.array_equal(table.logits, logits), "float32 values must read back bit for bit"
    if fmt == "tsv":
        lines = (tmp_path / name).read_text().splitlines()
        assert lines[0] == "id\tlogits" and lines[1].startswith("id 0#x\t")
        assert lines[1].split("\t")[1].count(",") == 2
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pq.read_schema(tmp_path / name)
        assert schema.field("id").type == pa.string()
        kind = schema.field("logits").type
        assert pa.types.is_list(kind) and kind.value_type == pa.float32()


def test_easynlp_style_tsv_variants(tmp_path):
    path = tmp_path / "pred.tsv"
    path.write_text("label\tguid\tpred_logits\r\n1\ta\t0.5, -1.25,2\r\n\r\n0\tb\t[1e-3,2,3]\r\n")
    table = read_logits(path, id_column="guid", logits_column="pred_logits")
    assert table.ids == ["a", "b"]
    assert np.array_equal(table.logits, np.array([[0.5, -1.25, 2], [1e-3, 2, 3]], np.float32))
    bare = tmp_path / "bare.txt"
    bare.write_text("x\t1,2,3\ny\t4,5,6\n")  # header-less id<TAB>logits
    table = read_logits(bare)
    assert table.ids == ["x", "y"] and table.logits[1].tolist() == [4, 5, 6]


@pytest.mark.parametrize(("body", "message"), [
    ("id\tlogits\na\t1,2,3\nb\t1,two,3\n", r"bad.tsv:3: logits '1,two,3' are not comma-separated"),
    ("id\tlogits\na\t1,2,3\nb\t1,2,3\textra\n", r"bad.tsv:3: expected 2 tab-separated fields"),
    ("id\tlogits\na\t1,2,3\nb\t1,2\n", r"bad.tsv:3: 2 logits, but the rows before it have 3"),
    ("id\tlogits\na\t1,nan,3\n", r"bad.tsv:2: non-finite logits"),
    ("id\tlogits\na\t1,2,3\na\t1,2,3\n", r"bad.tsv: id 'a' occurs twice \(line 2 and line 3\)"),
    ("key\tscores\na\t1,2,3\n", r"bad.tsv:1: expected a header with the columns 'id' and "
                                r"'logits'"),
    ("id\tlogits\n", r"has no rows"),
])
def test_malformed_tsv_is_a_data_error_with_the_line(tmp_path, body, message):
    path = tmp_path / "bad.tsv"
    path.write_text(body)
    with pytest.raises(DataError, match=message):
        read_logits(path)


def test_parquet_errors_name_column_and_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"key": ["a"], "logits": [[1.0, 2.0]]}), path)
    with pytest.raises(DataError, match=r"no column 'id' \(teacher.id_column\); its columns: "
                                        r"key, logits"):
        read_logits(path)
    pq.write_table(pa.table({"id": ["a", "b"], "logits": [["1", "2"], ["3", "4"]]}), path)
    with pytest.raises(DataError, match=r"column 'logits' holds list<.*string>, expected a "):
        read_logits(path)
    pq.write_table(pa.table({"id": ["a", "b"], "logits": [[1.0, 2.0], [3.0]]}), path)
    with pytest.raises(DataError, match=r"row 1 has 1 logits, but row 0 has 2"):
        read_logits(path)
    with pytest.raises(ConfigError, match="teacher.format=tsv but the file"):
        read_logits(path, fmt="tsv")


def test_logits_matched_by_id_in_any_row_order(tmp_path, tok_dir):
    data = _data(id_column=None)
    ids = data.row_ids("train")
    logits = np.arange(len(ids) * 3, dtype=np.float32).reshape(-1, 3)
    order = np.random.default_rng(1).permutation(len(ids))  # the file in another order
    write_logits(tmp_path / "l.tsv", [ids[i] for i in order], logits[order])
    matched = match_offline_logits(_teacher(tmp_path / "l.tsv", tok_dir), data)
    assert set(matched) == {"train"}
    assert np.array_equal(matched["train"], logits)


def test_missing_ids_and_class_count_are_data_errors(tmp_path, tok_dir):
    data = _data()
    ids = data.row_ids("train")
    write_logits(tmp_path / "few.tsv", ids[:13], np.zeros((13, 3)))
    with pytest.raises(DataError, match=r"7 of the 20 ids of split 'train' \(row index, "
                                        r"data.id_column is null\) are not in the logits file "
                                        r".*few.tsv: '13', '14', '15', '16', '17', \.\.\."):
        match_offline_logits(_teacher(tmp_path / "few.tsv", tok_dir), data)
    write_logits(tmp_path / "two.parquet", ids, np.zeros((20, 2)))
    with pytest.raises(DataError, match=r"has 2 logits per row but data.labels has 3 "
                                        r"\(entailment, neutral, contradiction\)"):
        match_offline_logits(_teacher(tmp_path / "two.parquet", tok_dir), data)


def test_transfer_split_needs_distinct_ids_or_its_own_file(tmp_path, tok_dir):
    data = _data(transfer_split="validation")
    train, transfer = data.row_ids("train"), data.row_ids("transfer")
    write_logits(tmp_path / "train.tsv", train, np.ones((len(train), 3)))
    with pytest.raises(ConfigError, match="row-index ids.*teacher.transfer_logits_path"):
        match_offline_logits(_teacher(tmp_path / "train.tsv", tok_dir), data)
    write_logits(tmp_path / "transfer.tsv", transfer, np.full((len(transfer), 3), 2.0))
    teacher = _teacher(tmp_path / "train.tsv", tok_dir,
                       transfer_logits_path=str(tmp_path / "transfer.tsv"))
    matched = match_offline_logits(teacher, data)
    assert (matched["train"] == 1).all() and (matched["transfer"] == 2).all()
    assert matched["transfer"].shape == (8, 3)


def test_offline_teacher_refuses_what_needs_a_model(tmp_path, tok_dir):
    from distillkit.losses import DistillationLoss, HiddenMSE, SoftTargetCrossEntropy

    write_logits(tmp_path / "l.tsv", ["0"], np.zeros((1, 3)))
    teacher = _teacher(tmp_path / "l.tsv", tok_dir)
    kd = DistillationLoss(kd=SoftTargetCrossEntropy())
    check_offline(teacher, kd, "distillkit.losses.mapping.none_mapping")  # logits only: fine
    hidden = DistillationLoss(kd=SoftTargetCrossEntropy(), intermediate={"hidden_mse": HiddenMSE()})
    with pytest.raises(ConfigError, match=r"\(hidden_mse\) need the teacher's hidden states.*"
                                          r"use loss=kd"):
        check_offline(teacher, hidden, "distillkit.losses.mapping.none_mapping")
    with pytest.raises(ConfigError, match="no layers to map; use mapping=none"):
        check_offline(teacher, kd, "distillkit.losses.mapping.uniform_mapping")
    with pytest.raises(ConfigError, match=r"copies the teacher's layers.*student=bert4l"):
        student_from_teacher([0], teacher=teacher, labels=LABELS)


def test_student_sized_from_offline_tokenizer_matches_one_from_the_teacher(tmp_path, tok_dir):
    """What makes teacher=offline give the same student as the model teacher it came from."""
    import torch

    write_logits(tmp_path / "l.tsv", ["0"], np.zeros((1, 3)))
    offline = _teacher(tmp_path / "l.tsv", tok_dir)
    live = tiny_teacher(labels=LABELS)
    students = []
    for teacher in (live, offline):
        torch.manual_seed(0)
        students.append(bert_student(2, 32, 2, 64, teacher=teacher, labels=LABELS).model)
    assert students[0].config.to_dict() == students[1].config.to_dict()
    for (name, a), b in zip(students[0].state_dict().items(), students[1].state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_export_request_validation(compose_cfg):
    data = _data()
    assert ExportRequest.from_config(compose_cfg()) is None  # mode=distil
    request = ExportRequest.from_config(compose_cfg(["mode=export_logits"]))
    assert (request.split, request.path, request.format) == ("train", None, "tsv")
    request = ExportRequest.from_config(compose_cfg(
        ["mode=export_logits", "export.split=validation", "export.path=out/x.pq"]))
    assert request.format == "parquet" and request.role(data) == "eval"
    cases = [(["mode=export"], "mode=export is not one of distil, export_logits"),
             (["export.path=x.csv"], "cannot tell the format of x.csv"),
             (["export.format=csv"], "export.format=csv is not a logits file format"),
             (["export.path=x.tsv", "export.format=parquet"], "has a tsv extension")]
    for overrides, message in cases:
        mode = [] if overrides[0].startswith("mode=") else ["mode=export_logits"]
        with pytest.raises(ConfigError, match=message):
            ExportRequest.from_config(compose_cfg([*mode, *overrides]))
    request = ExportRequest.from_config(compose_cfg(["mode=export_logits", "export.split=dev"]))
    with pytest.raises(ConfigError, match=r"export.split=dev is not a split of this data; choose "
                                          r"one of: train \(train\), eval \(validation\)"):
        request.role(data)
    assert OmegaConf.select(compose_cfg(), "mode") == "distil"


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.e2e
def test_export_then_offline_teacher_gives_the_cached_logits_student(tmp_path, tok_dir):
    """EasyNLP's vanilla_kd flow through the real CLI: export the teacher's logits (TSV and
    Parquet), then distil from each file without the teacher; the student is the one that
    distilling from the same teacher's cached logits gives (same seed)."""
    common = ["student=tiny", "data=tiny", "trainer=debug", "trainer.eval_batch_size=32",
              "trainer.max_steps=30", "trainer.optimizer.lr=3e-3"]
    files = {"tsv": tmp_path / "logits.tsv", "parquet": tmp_path / "logits.parquet"}
    for fmt, path in files.items():
        proc = _ok(run_cli(["teacher=tiny", *common, "mode=export_logits", "export.split=train",
                            f"export.path={path}", f"hydra.run.dir={tmp_path / ('x' + fmt)}"],
                           cwd=tmp_path))
        assert f"written to {path.resolve()}" in proc.stdout and "stage: distil" not in proc.stdout
        summary = json.loads((tmp_path / f"x{fmt}" / "metrics.json").read_text())
        assert summary["export"] | {"seconds": 0} == {
            "split": "train", "role": "train", "path": str(path.resolve()), "format": fmt, "rows": 512,
            "labels": LABELS, "id_column": None, "seconds": 0}
        assert 0.5 < summary["teacher"]["accuracy"] <= 1.0
    cached = _ok(run_cli(["teacher=tiny", *common, f"hydra.run.dir={tmp_path / 'cached'}"],
                         cwd=tmp_path))
    assert "reusing fine-tuned teacher" in cached.stdout  # the teacher the export fine-tuned
    # the train split's logits, and the test split's (the teacher's cached evaluation)
    npy = [p for p in (tmp_path / "dk-cache" / "teacher_outputs").glob("*.npy")
           if len(np.load(p)) == 512]
    assert len(npy) == 1
    assert len(list((tmp_path / "dk-cache" / "teacher_outputs").glob("*.npy"))) == 2
    for path in files.values():  # the files hold exactly the logits the cached run used
        table = read_logits(path)
        assert table.ids == [str(i) for i in range(512)]
        assert np.array_equal(table.logits, np.load(npy[0]))
    want = json.loads((tmp_path / "cached" / "metrics.json").read_text())
    for fmt, path in files.items():
        proc = _ok(run_cli(["teacher=offline", f"teacher.logits_path={path}",
                            f"teacher.tokenizer={tok_dir}", *common,
                            f"hydra.run.dir={tmp_path / ('off' + fmt)}"], cwd=tmp_path))
        assert "teacher stage skipped" in proc.stdout
        assert "fine-tuning teacher" not in proc.stdout and "reusing" not in proc.stdout
        assert "teacher: offline logits file" in proc.stdout
        got = json.loads((tmp_path / f"off{fmt}" / "metrics.json").read_text())
        assert got["student"] | {"seconds": 0} == want["student"] | {"seconds": 0}, fmt
        assert got["train"]["last_losses"] == pytest.approx(want["train"]["last_losses"],
                                                            rel=1e-6)
        assert got["train"]["last_losses"]["kd"] > 0
        assert got["teacher"]["accuracy"] is None and got["retention"] is None
        assert got["params"]["teacher"] is None and got["inference"]["speedup"] is None
        assert got["stages"] == {"build": "computed", "teacher": "offline",
                                 "student": "computed", "general": "skipped",
                                 "teacher_targets": {"train": "file"},
                                 "distil": "computed",
                                 "evaluate": {"teacher": "offline", "student": "computed"},
                                 "export": "computed"}
        assert set(got) == set(want), "metrics.json keeps its keys"
        assert (tmp_path / f"off{fmt}" / "student" / "config.json").is_file()


def _tiny_logits_file(tmp_path, name, rows=512, classes=3):
    write_logits(tmp_path / name, [str(i) for i in range(rows)], np.zeros((rows, classes)))
    return tmp_path / name


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["missing_ids", "classes", "malformed", "copy_student",
                                  "export_split"])
def test_offline_errors_are_one_line_and_exit_2(tmp_path, tok_dir, case):
    offline = ["teacher=offline", f"teacher.tokenizer={tok_dir}", "student=tiny"]
    if case == "missing_ids":
        path = _tiny_logits_file(tmp_path, "few.tsv", rows=500)
        args = [*offline, f"teacher.logits_path={path}"]
        message = (f"12 of the 512 ids of split 'train' (row index, data.id_column is null) are "
                   f"not in the logits file {path}: '500', '501', '502', '503', '504', ...")
    elif case == "classes":
        path = _tiny_logits_file(tmp_path, "two.parquet", classes=2)
        args = [*offline, f"teacher.logits_path={path}"]
        message = (f"the logits file {path} has 2 logits per row but data.labels has 3 "
                   "(entailment, neutral, contradiction)")
    elif case == "malformed":
        path = _tiny_logits_file(tmp_path, "bad.tsv")
        lines = path.read_text().splitlines()
        lines[8] = "7\t0.1,oops,0.3"
        path.write_text("\n".join(lines) + "\n")
        args = [*offline, f"teacher.logits_path={path}"]
        message = f"{path}:9: logits '0.1,oops,0.3' are not comma-separated numbers"
    elif case == "copy_student":
        path = _tiny_logits_file(tmp_path, "ok.tsv")
        args = [*offline[:2], f"teacher.logits_path={path}", "student=copy3"]
        message = "this student copies the teacher's layers, but the teacher (offline logits"
    else:
        args = ["teacher=tiny", "student=tiny", "mode=export_logits", "export.split=dev"]
        message = "export.split=dev is not a split of this data; choose one of: train (train)"
    base = [a for a in TINY_RUN if not a.startswith(("teacher=", "student="))]
    proc = run_cli([*base, *args, f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert "Traceback" not in output
    assert "stage: teacher" not in output, "refused before any tokenising or teacher work"
    assert not (tmp_path / "r" / "metrics.json").exists()


@pytest.mark.assets
@pytest.mark.e2e
def test_snli_slice_exports_by_pair_id_and_distils_offline(tmp_path):
    """The packaged teacher + SNLI: train and transfer logits exported by pairID, then a
    bert4l student distilled from the two files with the default minilm6 tokenizer."""
    from distillkit.runtime.assets import cache_root

    env = {"DISTILLKIT_CACHE": str(cache_root())}
    data = ["data.source.train_size=64", "data.source.validation_size=32",
            "data.max_eval_samples=32", "data.max_transfer_samples=32", "trainer.progress=false"]
    files = {split: tmp_path / f"{split}.tsv" for split in ("train", "transfer")}
    for split, path in files.items():
        _ok(run_cli([*data, "teacher.finetune_settings.batch_size=16", "mode=export_logits", f"export.split={split}",
                     f"export.path={path}", f"hydra.run.dir={tmp_path / split}"],
                    cwd=tmp_path, env=env))
    from distillkit.data import snli

    ids = read_logits(files["train"]).ids
    assert ids == list(snli(train_size=64, validation_size=32)["train"]["pairID"])
    assert not set(ids) & set(read_logits(files["transfer"]).ids)
    run_dir = tmp_path / "offline"
    proc = _ok(run_cli([*data, "teacher=offline", f"teacher.logits_path={files['train']}",
                        f"teacher.transfer_logits_path={files['transfer']}", "student=bert4l",
                        "trainer.max_steps=2", f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                       env=env))
    assert "teacher logits for 'transfer' (32 x 3) matched by id" in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["stages"]["teacher_targets"] == {"train": "file", "transfer": "file"}
    assert metrics["stages"]["general"] == "skipped"  # bert4l's general stage: no teacher layers
    assert metrics["student"]["examples"] == 32 and metrics["teacher"]["accuracy"] is None
