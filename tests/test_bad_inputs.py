"""The bad-input matrix: every way a user can get a run wrong, through the real CLI.

One row per case. Each runs ``python -m distillkit`` in a subprocess on tiny models and asserts
that it ends with exit code 2 and exactly one ``error:`` line that names the culprit (key, file,
line, pair, step ...) and a fix, prints no traceback, and leaves nothing that looks finished:
no ``metrics.json``, no exported ``student/``, no temp files; checkpoints written before the
failure stay loadable. Config errors are refused before Hydra creates the run directory.

Unit-level tests of the same checks: tests/test_config.py (typos, types), test_mapping.py,
test_models.py, test_data.py, test_offline_logits.py, test_checkpoint.py, test_engine.py;
malicious YAML: tests/test_safety.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from distillkit.models import tiny_teacher
from distillkit.models.tokenizers import tiny_tokenizer
from distillkit.teachers.offline import write_logits
from tests.conftest import TINY_RUN, one_error_line, run_cli

pytestmark = pytest.mark.e2e
LABELS = ["entailment", "neutral", "contradiction"]
# Trains from step 0 at once: the tiny teacher is used as it is (no fine-tune stage).
QUICK = [*TINY_RUN, "teacher.finetune=false"]
# The disk fills up at the second checkpoint: the write gets half the bytes, then ENOSPC.
DISK_FULL = """
import errno, os
import distillkit.runtime.checkpoint as ck
real, calls = ck.write_file, []
def write_file(path, writer):
    calls.append(path)
    if len(calls) < 2:
        return real(path, writer)
    def half(fh):
        fh.write(b"x" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(path, half)
ck.write_file = write_file
from distillkit.app.cli import main
main()
"""


def _with(*overrides: str) -> list[str]:
    """QUICK with other options of the groups that ``overrides`` pick (``student=hub``)."""
    groups = {o.split("=")[0] for o in overrides if "." not in o.split("=")[0]}
    return [a for a in QUICK if a.split("=")[0] not in groups] + list(overrides)


def _files(tmp: Path, name: str, body: str, encoding: str = "utf-8") -> list[str]:
    (tmp / name).write_text(body, encoding=encoding)
    return _with("data=files", f"data.source.train={tmp / name}",
                 f"data.source.validation={tmp / name}")


def _train_file_only(tmp: Path, *overrides: str) -> list[str]:
    (tmp / "train.jsonl").write_text("".join(
        f'{{"text": "t {i}", "label": "{"ab"[i % 2]}"}}\n' for i in range(20)))
    return _with("data=files", f"data.source.train={tmp / 'train.jsonl'}", *overrides)


def _saved_model(tmp: Path, labels: list[str], words: list[str] | None = None) -> Path:
    bundle = tiny_teacher(labels=labels, **({"words": words} if words else {}))
    bundle.model.save_pretrained(tmp / "model")
    bundle.tokenizer.save_pretrained(tmp / "model")
    return tmp / "model"


def _logits_file(tmp: Path, classes: int) -> list[str]:
    tiny_tokenizer().save_pretrained(tmp / "tok")
    write_logits(tmp / "two.tsv", [str(i) for i in range(512)], np.zeros((512, classes)))
    return [a for a in _with("teacher=offline", f"teacher.tokenizer={tmp / 'tok'}",
                             f"teacher.logits_path={tmp / 'two.tsv'}")
            if a != "teacher.finetune=false"]  # no teacher stage without a teacher model


# case -> (command line from a scratch dir, phrases of the error line, extra environment)
Case = Callable[[Path], tuple[list[str], list[str], dict[str, str]]]
CASES: dict[str, Case] = {
    "unknown_group_option": lambda t: (
        ["student=bert5l"],
        ["Could not find 'student/bert5l'", "available options in 'student': bert4l, copy3",
         "Pick one"], {}),
    "typo_key": lambda t: (
        ["loss.temprature=3"],
        ["Could not override 'loss.temprature'", "did you mean loss.temperature?"], {}),
    "wrong_type": lambda t: (
        ["loss.alpha=high"],
        ["loss.alpha=high", "could not be converted to Float",
         "give loss.alpha a value of that type"], {}),
    "teacher_seed_not_an_integer": lambda t: (
        [*QUICK, "teacher.finetune_settings.seed=abc"],
        ["teacher.finetune_settings.seed must be an integer or null", "(null: trainer.seed)",
         "got 'abc'"], {}),
    "freeze_pattern_matches_nothing": lambda t: (
        [*TINY_RUN, "teacher.finetune_settings.freeze=['encoder.*']"],
        ["teacher.finetune_settings.freeze: pattern 'encoder.*' matches no parameter",
         "bert.embeddings.word_embeddings.weight"], {}),
    "layer_pair_out_of_range": lambda t: (
        [*QUICK, "loss=mmd", "mapping=explicit", "mapping.pairs=[[0,0],[3,1]]"],
        ["mapping pair 1 (student 3, teacher 1) is out of range",
         "student indices must be in [0, 2]", "fix mapping.pairs"], {}),
    "vocab_mismatch": lambda t: (
        _with("student=hub",
              f"student.name_or_path={_saved_model(t, LABELS, words=['zebra', 'quokka'])}"),
        ["vocabulary mismatch", "Use a student built from the teacher's tokenizer"], {}),
    "label_count_mismatch": lambda t: (
        _with("student=hub", f"student.name_or_path={_saved_model(t, ['a', 'b'])}"),
        ["label-count mismatch: student.name_or_path=", "head with 2 labels but the data has 3",
         "fix data.labels"], {}),
    "missing_data_file": lambda t: (
        _with("data=files", f"data.source.train={t / 'nope.jsonl'}"),
        [f"data file not found: {t / 'nope.jsonl'}", "check the path in data.source.train"],
        {}),
    "no_validation_split_and_no_carving": lambda t: (
        _train_file_only(t, "data.validation_fraction=0"),
        ["split 'validation' (data.eval_split) not found; the data has: train",
         "data.source.validation=<file>", "data.validation_fraction=0.1",
         "data.eval_split=<one of them>"], {}),
    "missing_column": lambda t: (
        _files(t, "t.jsonl", '{"sentence": "a b", "label": "x"}\n'),
        ["column 'text' (data.text_column) not in split 'train'",
         "Set data.text_column to one of them"], {}),
    "unknown_label_value": lambda t: (
        [*_files(t, "t.jsonl", '{"text": "a", "label": "x"}\n'
                                        '{"text": "b", "label": "zzz"}\n'), "data.labels=[x,y]"],
        ["row 1 of split 'train' has label 'zzz'", "add it to data.labels or to "
         "data.drop_labels"], {}),
    "empty_file": lambda t: (
        _files(t, "empty.jsonl", ""),
        [f"data file is empty: {t / 'empty.jsonl'}", "point data.source.train at another"], {}),
    "malformed_json_line": lambda t: (
        _files(t, "bad.jsonl", '{"text": "a", "label": "x"}\n{"text": oops}\n'),
        [f"{t / 'bad.jsonl'}:2: malformed JSON line", "fix or remove that line"], {}),
    "malformed_csv_line": lambda t: (
        _files(t, "bad.csv", "text,label\nfine,x\nshort\n"),
        [f"{t / 'bad.csv'}:3: expected 2 fields (text, label)", "fix that line"], {}),
    "non_utf8_file": lambda t: (
        _files(t, "latin.jsonl", '{"text": "ok", "label": "x"}\n{"text": "caf\u00e9", '
                                 '"label": "x"}\n', encoding="latin-1"),
        [f"{t / 'latin.jsonl'}: not valid utf-8 text at byte offset 42 (line 2",
         "set data.encoding to the file's encoding (e.g. data.encoding=latin-1)"], {}),
    "null_text": lambda t: (
        _files(t, "null.jsonl", '{"text": "a", "label": "x"}\n{"text": null, "label": "x"}\n'),
        ["split 'train' has 1 row without a text in column 'text'", "rows 1",
         "fix or remove them"], {}),
    "nan_text": lambda t: (
        _files(t, "nan.jsonl", '{"text": "a", "label": "x"}\n{"text": NaN, "label": "x"}\n'),
        [f"{t / 'nan.jsonl'}: row 1 has nan (NaN) in column 'text'",
         "whose other rows hold text", "fix or remove that row"], {}),
    "empty_texts": lambda t: (
        _files(t, "empty_texts.jsonl", '{"text": "a", "label": "x"}\n{"text": "", "label": '
                                       '"x"}\n{"text": " \\t", "label": "y"}\n'),
        ["split 'train' has 2 rows with an empty or whitespace-only text", "(rows 1, 2)",
         "or set data.drop_empty=true to drop them"], {}),
    "stray_inferred_label": lambda t: (
        _files(t, "labels.jsonl", "".join(
            f'{{"text": "t{i}", "label": "{"pos" if i % 2 else "neg"}"}}\n' for i in range(40))
            + '{"text": "t40", "label": "Pos"}\n'),
        ["labels inferred from split 'train'", "'Pos' in 1 row: 40",
         "while 'neg' is in 20", "data.labels=[neg,pos]", "data.drop_labels=[Pos]"], {}),
    "log_file_in_a_missing_directory": lambda t: (
        [*QUICK, f"hydra.job_logging.handlers.file.filename={t / 'nodir' / 'x.log'}"],
        ["Hydra could not set up the run", "Unable to configure handler 'file'",
         f"{t / 'nodir' / 'x.log'}", "hydra.job_logging"], {}),
    "callback_with_wrong_arguments": lambda t: (
        [*QUICK, "+hydra.callbacks.bad._target_=distillkit.reporting.sweep.SweepSummary",
         "+hydra.callbacks.bad.every=1"],
        ["Hydra could not set up the run", "distillkit.reporting.sweep.SweepSummary",
         "takes no arguments", "hydra.callbacks"], {}),
    "logits_file_mismatch": lambda t: (
        _logits_file(t, classes=2),
        ["two.tsv has 2 logits per row but data.labels has 3",
         "use logits of a teacher trained on these labels"], {}),
    "non_finite_loss": lambda t: (
        [*QUICK, "trainer.optimizer.lr=1e30", "trainer.checkpoint_every_steps=1"],
        ["non-finite loss at step", "total=nan", "the checkpoints written before it are kept",
         "lower trainer.optimizer.lr", "max_grad_norm", "trainer.precision=fp32"], {}),
    "disk_full_while_checkpointing": lambda t: (
        [*QUICK, "trainer.max_steps=4", "trainer.checkpoint_every_steps=1"],
        ["checkpoint at step 2 not saved", "step-00000002.pt: No space left on device",
         "step-00000001.pt, is intact", "resume=auto", "Free space"], {}),
    "unreachable_hub_name_offline": lambda t: (
        _with("teacher=hub", "teacher.name_or_path=distillkit-test/no-such-model"),
        ["could not load teacher.name_or_path='distillkit-test/no-such-model'",
         "HF_HUB_OFFLINE=1 is set", "set teacher.name_or_path to a local directory"],
        {"HF_HUB_OFFLINE": "1", "HF_HOME": str(t / "hf")}),
}
# Refused while the config composes: Hydra has not created the run directory.
AT_COMPOSE = {"unknown_group_option", "typo_key", "wrong_type"}


def _run(case: str, args: list[str], cwd: Path, env: dict[str, str]):
    if case != "disk_full_while_checkpointing":
        return run_cli(args, cwd=cwd, env=env)
    full_env = {**__import__("os").environ, "PYTHONUNBUFFERED": "1",
                "DISTILLKIT_CACHE": str(cwd / "dk-cache"), **env}
    return subprocess.run([sys.executable, "-c", DISK_FULL, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300, check=False)


def _finite_checkpoints(run_dir: Path) -> list[int]:
    """The steps of the kept checkpoints, each loadable (weights_only) with finite weights."""
    steps = []
    for path in sorted((run_dir / "checkpoints").glob("step-*.pt")):
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["student"].values()
                   if v.is_floating_point()), path
        steps.append(state["step"])
    return steps


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line_with_culprit_and_fix(tmp_path, case):
    args, phrases, env = CASES[case](tmp_path)
    run_dir = tmp_path / "run"
    proc = _run(case, [*args, f"hydra.run.dir={run_dir}"], tmp_path, env)
    output = proc.stdout + proc.stderr
    error = one_error_line(proc.returncode, output, phrases)
    # nothing left that looks finished
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "student").exists()
    assert not [p for p in tmp_path.rglob("*.tmp")], "a half-written file stayed"
    if case in AT_COMPOSE:
        assert not run_dir.exists(), "refused before Hydra created the run directory"
    if case == "non_finite_loss":
        bad = int(error.split("non-finite loss at step ")[1].split(" ")[0])
        kept = _finite_checkpoints(run_dir)
        assert kept and max(kept) < bad, (kept, bad)
        failure = json.loads((run_dir / "error.json").read_text())
        assert failure["type"] == "TrainingError"
    if case == "disk_full_while_checkpointing":
        assert _finite_checkpoints(run_dir) == [1]
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
            "index.json", "step-00000001.pt"]
