"""The run graph as objects: the stage runner's contract, the pipelines the task configs
declare, and what a run prints and records of them."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from distillkit.errors import ConfigError
from distillkit.pipeline import ORIGINS, RunContext, Stage, run_stages
from distillkit.stages import STAGES, stages_named
from tests.conftest import CONF, TINY_RUN, one_error_line, run_cli

DISTIL = ["build", "teacher", "student", "general", "teacher_targets", "distil", "evaluate", "export"]


@dataclass
class Recorder:
    """A stage that records the order of calls into a shared list."""

    name: str
    calls: list = field(default_factory=list)
    fail_prepare: bool = False
    main_first: bool = False

    def prepare(self, ctx) -> None:
        self.calls.append(f"prepare {self.name}")
        if self.fail_prepare:
            raise ConfigError(f"{self.name}: bad setting")

    def run(self, ctx) -> str:
        self.calls.append(f"run {self.name}")
        return "cache" if self.name == "b" else "computed"


class _Task:
    name, mode = "fake", "distil"


def _ctx() -> RunContext:
    return RunContext(cfg=OmegaConf.create({}), out_dir=Path("."), settings=None, dist=None,
                      task=_Task())


def test_every_prepare_runs_before_the_first_run_and_origins_are_recorded():
    calls: list[str] = []
    stages = [Recorder("a", calls), Recorder("b", calls), Recorder("c", calls)]
    ctx = run_stages(stages, _ctx())
    assert calls == ["prepare a", "prepare b", "prepare c", "run a", "run b", "run c"]
    assert ctx.origins == {"a": "computed", "b": "cache", "c": "computed"}
    assert set(ctx.stage_seconds) == {"a", "b", "c"}


def test_a_late_stage_that_fails_its_checks_stops_the_run_before_any_work():
    calls: list[str] = []
    stages = [Recorder("a", calls), Recorder("b", calls, fail_prepare=True)]
    with pytest.raises(ConfigError, match="b: bad setting"):
        run_stages(stages, _ctx())
    assert not [c for c in calls if c.startswith("run")]


def test_built_in_stages_keep_the_stage_contract():
    for name, cls in STAGES.items():
        stage = cls()
        assert isinstance(stage, Stage) and stage.name == name
    assert [s.name for s in stages_named(DISTIL)] == DISTIL
    with pytest.raises(ConfigError, match="unknown stage.*distill"):
        stages_named(["build", "distill"])
    with pytest.raises(ConfigError, match="stage 'export' needs evaluate before it; e.g. "
                                          "build -> teacher -> student -> teacher_targets -> "
                                          "distil -> evaluate -> export"):
        stages_named(["build", "teacher", "export"])
    with pytest.raises(ConfigError, match="lists stage 'build' twice"):
        stages_named(["build", "build"])
    with pytest.raises(ConfigError, match="stage 'teacher' needs build"):
        stages_named(["teacher", "build"])


@pytest.mark.parametrize(("task", "modes"), [
    ("classification", {"distil": DISTIL, "export_logits": ["build", "teacher",
                                                            "export_logits"]}),
    ("seq2seq", {"distil": [s for s in DISTIL if s != "general"]})])
def test_each_task_declares_its_pipeline_in_config(compose_cfg, task, modes):
    cfg = compose_cfg([f"task={task}"])
    assert cfg.task.name == task
    assert OmegaConf.to_container(cfg.task.pipeline) == modes
    built = instantiate(cfg.task, _convert_="all")
    assert built.name == task and built.stages_for("distil") == modes["distil"]
    if "export_logits" not in modes:
        with pytest.raises(ConfigError, match="mode=export_logits is not available"):
            built.stages_for("export_logits")


def test_cfg_job_shows_the_pipeline():
    out = subprocess.run([sys.executable, "-m", "distillkit", "--cfg", "job"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    task = OmegaConf.create(out).task
    assert task._target_ == "distillkit.tasks.classification.ClassificationTask"
    assert list(task.pipeline.distil) == DISTIL


def test_help_lists_the_options_of_each_group_and_no_schema():
    out = subprocess.run([sys.executable, "-m", "distillkit", "--help"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "schema" not in out.split("== Config ==")[0]
    for folder in (p for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"):
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        assert f"{folder.name}: {', '.join(options)}" in out
    assert ("loss: causal_ce, causal_hidden, causal_jsd, causal_kd, causal_rkl, causal_skew_kl, "
            "causal_tvd, hard, hidden, kd, kl, meta_kd, mmd, mse_logits, seq_hard, seq_kd") in out


def test_origins_name_only_known_words():
    assert {"computed", "cache", "file", "skipped"} <= set(ORIGINS)


@pytest.mark.e2e
def test_a_run_prints_its_graph_and_records_each_stage_origin(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    proc = run_cli([*TINY_RUN, f"hydra.run.dir={first}"], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert ("run graph (task=classification, mode=distil): build -> teacher -> student -> "
            "general -> teacher_targets -> distil -> evaluate -> export") in out
    record = json.loads((first / "metrics.json").read_text())
    assert record["schema"] == 2 and record["task"] == "classification"
    assert record["metric"] == "accuracy"
    stages = record["stages"]
    assert list(stages) == DISTIL
    assert stages["teacher"] == "fine-tuned"
    assert stages["general"] == "skipped"  # general=none
    assert stages["teacher_targets"] == {"train": "computed"}
    assert stages["evaluate"] == {"teacher": "computed", "student": "computed"}
    assert record["objective"] == {"name": "final_accuracy",
                                   "value": record["student"]["accuracy"]}
    # the same run again: the teacher, its logits and its evaluation come from the cache
    proc = run_cli([*TINY_RUN, f"hydra.run.dir={second}"], cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    again = json.loads((second / "metrics.json").read_text())["stages"]
    assert again["teacher"] == "cache" and again["teacher_targets"] == {"train": "cache"}
    assert again["evaluate"] == {"teacher": "cache", "student": "computed"}


@pytest.mark.e2e
@pytest.mark.parametrize(("args", "phrases"), [
    (["objective=final_bleu"], ["objective=final_bleu", "final_accuracy"]),
    (["mode=export_logits", "task=seq2seq", "data=arith", "teacher=t5_small_scratch",
      "student=t5_tiny", "loss=seq_kd"], ["mode=export_logits", "task=seq2seq"]),
    (["task.pipeline.distil=[build,teacher,distill]"], ["distill", "unknown stage"]),
    (["teacher.finetune=maybe"], ["teacher.finetune='maybe'", "auto, true or false"]),
])
def test_refused_pipeline_settings_give_one_error_line(tmp_path, args, phrases):
    proc = run_cli([*TINY_RUN, *args, f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    one_error_line(proc.returncode, proc.stdout + proc.stderr, phrases)
    assert not (tmp_path / "dk-cache" / "teachers").exists()  # refused before any training


def test_seq2seq_refuses_data_parallel_with_one_line(compose_cfg):
    cfg = compose_cfg(["experiment=arith_word_kd"])
    task = instantiate(cfg.task, _convert_="all")

    class TwoRanks:
        enabled = True
        world_size = 2

    with pytest.raises(ConfigError, match="task=seq2seq runs in one process; launch it without "
                                          "torchrun"):
        task.check(cfg, TwoRanks())

    class OneProcess:
        enabled = False

    task.check(cfg, OneProcess())  # the same config in one process passes
