"""Named experiments: global packages with their launch command in a header comment."""

from __future__ import annotations

import shlex

import pytest

from tests.conftest import CONF

EXPERIMENTS = sorted((CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_header_and_launch_command_composes(path, compose_cfg):
    lines = path.read_text().splitlines()
    assert lines[0] == "# @package _global_"
    launch = [line for line in lines if line.startswith("# Launch: python -m distillkit")]
    assert len(launch) == 1, f"{path.name} needs one '# Launch: python -m distillkit ...' line"
    args = shlex.split(launch[0].split("python -m distillkit", 1)[1])
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    assert f"experiment={path.stem}" in overrides
    cfg = compose_cfg(overrides, return_hydra_config=True)
    assert cfg.loss is not None and cfg.trainer is not None
