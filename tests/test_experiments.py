"""Named experiments: global packages with their launch command in a header comment."""

from __future__ import annotations

import shlex

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conf_files import expected_values, merge, mismatches
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
    # what the experiment file sets (its body and the options it overrides), and the options the
    # launch line picks beside it, read from the YAML files themselves
    expected = {}
    for override in overrides:
        group, _, option = override.partition("=")
        if group != "experiment" and (CONF / group / f"{option}.yaml").is_file():
            merge(expected, expected_values(CONF / group / f"{option}.yaml", group))
    merge(expected, expected_values(path, ""))  # the experiment comes after the groups
    composed = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    assert not mismatches(composed, expected), mismatches(composed, expected)
    declared = yaml.safe_load(path.read_text())
    for entry in declared.get("defaults", []):  # every override the file declares took effect
        ((key, option),) = entry.items()
        group = key.removeprefix("override /")
        if key.startswith("override /") and "/" not in group:
            assert cfg.hydra.runtime.choices[group] == option, (group, option)
    if "task" in declared:
        assert cfg.task == declared["task"]


@pytest.mark.parametrize("loss", ["kd", "mmd"])
def test_bert4l_experiment_keeps_the_loss_given_beside_it(loss, compose_cfg):
    """experiment=bert4l sets the student and its learning rate; the loss stays the user's
    (loss=mmd brings its uniform mapping), so both sides of the comparison differ only there."""
    cfg = compose_cfg(["experiment=bert4l", f"loss={loss}"])
    assert cfg.student.hidden_size == 312 and cfg.student.num_layers == 4
    assert cfg.trainer.optimizer.lr == 3e-4
    assert cfg.trainer.max_steps == 1000
    assert bool(cfg.loss.intermediate) == (loss == "mmd")
    assert cfg.mapping._target_.endswith("uniform_mapping" if loss == "mmd" else "none_mapping")
