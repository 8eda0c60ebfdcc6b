"""Every option of every group composes; typos and bad values fail at compose time."""

from __future__ import annotations

import pytest
from hydra._internal.utils import _locate
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from tests.conf_files import expected_values, mismatches
from tests.conftest import CONF

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
# groups that are typed settings sections (distillkit.general.GeneralSettings): an option may
# name no code at all (general=none); the _target_s it has (loss, mapping) are checked below
SETTINGS_GROUPS = {"general"}


def test_groups_found_by_walking_conf():
    assert {"teacher", "student", "loss", "mapping", "data", "trainer"} <= set(GROUPS)
    assert len(OPTIONS) >= 15


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(compose_cfg, group, option):
    """Each option composes and the composed config holds every value its file (and the files
    its defaults list pulls in) sets, read from the YAML files themselves."""
    cfg = compose_cfg([f"{group}={option}"], return_hydra_config=True)
    path = CONF / group / f"{option}.yaml"
    is_global = path.read_text().startswith("# @package _global_")
    expected = expected_values(path, "" if is_global else group)
    assert expected, f"{group}/{option}.yaml sets nothing"
    composed = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    assert not mismatches(composed, expected), mismatches(composed, expected)
    if is_global:  # experiments and searches set keys of several groups
        return
    container = OmegaConf.to_container(cfg[group], resolve=True, throw_on_missing=False)
    targets = list(_targets(container))
    assert targets or group in SETTINGS_GROUPS, f"{group}/{option}.yaml names no _target_"
    for target in targets:  # every _target_ names a real class or function
        assert callable(_locate(target)), target


def _targets(node):
    if isinstance(node, dict):
        if "_target_" in node:
            yield node["_target_"]
        for value in node.values():
            yield from _targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value)


def test_defaults_and_loss_schema_keys(compose_cfg):
    cfg = compose_cfg()
    assert cfg.loss.temperature == 4.0 and cfg.loss.alpha == 0.5
    cfg = compose_cfg(["loss.temperature=8", "loss.alpha=0.2"])
    assert (cfg.loss.temperature, cfg.loss.alpha) == (8.0, 0.2)


def test_typo_in_override_fails_with_key_name(compose_cfg):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(["loss.temprature=3"])
    assert "temprature" in str(err.value)


def test_wrong_type_fails_at_compose_time(compose_cfg):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(["loss.alpha=high"])
    assert isinstance(err.value.__cause__, ValidationError)
    assert "alpha" in str(err.value.__cause__)


def test_trainer_typo_fails(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="batchsize"):
        compose_cfg(["trainer.batchsize=8"])


def test_unknown_option_lists_available(compose_cfg):
    with pytest.raises(MissingConfigException) as err:
        compose_cfg(["loss=mmdd"])
    assert "kd" in str(err.value) and "mmdd" in str(err.value)


def test_experiment_overrides_groups(compose_cfg):
    cfg = compose_cfg(["experiment=tiny_kd"])
    assert cfg.loss.temperature == 2.0 and cfg.loss.alpha == 0.7
    assert cfg.trainer.epochs == 10 and cfg.trainer.optimizer.lr == 3e-3


def test_hydra_output_layout(compose_cfg):
    cfg = compose_cfg(return_hydra_config=True)
    assert cfg.hydra.job.name == "distillkit"
    assert cfg.hydra.run.dir.startswith("outputs/")
    assert cfg.hydra.sweep.dir.startswith("outputs/multirun/")
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.override_dirname}"


@pytest.mark.parametrize("loss", ["mmd", "tinybert", "hidden", "causal_hidden"])
def test_intermediate_presets_pick_uniform_mapping_unless_overridden(compose_cfg, loss):
    assert compose_cfg([f"loss={loss}"]).mapping._target_.endswith("uniform_mapping")
    assert compose_cfg([f"loss={loss}", "mapping=last"]).mapping._target_.endswith(
        "last_mapping")
    assert compose_cfg(["loss=kd"]).mapping._target_.endswith("none_mapping")


def test_intermediate_keys_are_typed(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="intermediate_phase"):
        compose_cfg(["loss=tinybert", "loss.intermediate_phase=half"])


# every option of the groups a task checks, with the task its _target_ belongs to
TASK_GROUPS = ("teacher", "student", "data", "loss")
CAUSAL = [(g, o) for g, o in OPTIONS if g in TASK_GROUPS and any(
    mark in (CONF / g / f"{o}.yaml").read_text()
    for mark in ("distillkit.causal.", "causal_data_schema", "causal_loss_schema", "- causal_kd"))]


def test_the_causal_options_are_found():
    assert {("teacher", "smollm2"), ("teacher", "causal_hub"), ("student", "smollm2_copy"),
            ("student", "smollm2_small"), ("data", "causal_chat"), ("data", "snli_pairs"),
            ("loss", "causal_kd"), ("loss", "causal_ce"), ("loss", "causal_hidden")} <= set(CAUSAL)


@pytest.mark.parametrize(("group", "option"), CAUSAL, ids=[f"{g}={o}" for g, o in CAUSAL])
def test_every_causal_option_composes_under_task_causal_lm_and_belongs_to_it(compose_cfg, group,
                                                                             option):
    """Each causal option composes with task=causal_lm, and task=causal_lm owns it (its
    _target_ carries the task's option prefix)."""
    from hydra.utils import instantiate

    from distillkit.tasks.base import option_owner
    from distillkit.tasks.causal_lm import CausalLMTask

    cfg = compose_cfg(["experiment=tiny_causal_lm", f"{group}={option}"])
    assert cfg.task.name == "causal_lm"
    assert option_owner(str(cfg[group]._target_)) is CausalLMTask
    assert isinstance(instantiate(cfg.task, _convert_="all"), CausalLMTask)


@pytest.mark.parametrize(("option", "divergence", "extra"), [
    ("causal_kd", "fkl", {}), ("causal_rkl", "rkl", {}), ("causal_jsd", "jsd", {"beta": 0.5}),
    ("causal_tvd", "tvd", {}), ("causal_skew_kl", "skl", {"skew": 0.1}),
    ("causal_ce", "fkl", {"alpha": 0.0})])
def test_causal_loss_shortcuts_and_typed_keys(compose_cfg, option, divergence, extra):
    cfg = compose_cfg([f"loss={option}"])
    assert cfg.loss.divergence == divergence and cfg.loss.temperature == 1.0
    assert all(cfg.loss[k] == v for k, v in extra.items())
    with pytest.raises(ConfigCompositionException, match="temprature"):
        compose_cfg([f"loss={option}", "loss.temprature=2"])
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg([f"loss={option}", "loss.beta=wide"])
    assert isinstance(err.value.__cause__, ValidationError)


def test_causal_data_keys_are_typed(compose_cfg):
    cfg = compose_cfg(["data=snli_pairs", "data.max_train_examples=50"])
    assert cfg.data.max_train_examples == 50 and cfg.data.format == "pairs"
    with pytest.raises(ConfigCompositionException, match="max_train_example"):
        compose_cfg(["data=snli_pairs", "data.max_train_example=50"])
