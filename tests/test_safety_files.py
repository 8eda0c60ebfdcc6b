"""What a config *file* may not set (distillkit.security.shared_files), composed through the CLI's guard.

A file from a ``hydra.searchpath`` entry (as from ``--config-dir``) is not distillkit's own; the
same keys given on the command line are the user's own choice and compose.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from distillkit.errors import UnsafeConfigError
from distillkit.security.compose_guard import guarded
from distillkit.security.safety import OptIns, opt_ins
from distillkit.security.shared_files import check_overrides
from tests.conftest import CONF

EXP = "experiment/evil.yaml"


def _shared(tmp_path: Path, files: dict[str, str]) -> str:
    """Writes the files under ``<tmp>/shared``; returns the searchpath override."""
    (tmp_path / "shared").mkdir(exist_ok=True)
    for name, body in files.items():
        path = tmp_path / "shared" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        header = "# @package _global_\n" if name.startswith("experiment/") else ""
        path.write_text(header + body)
    return f"hydra.searchpath=[file://{tmp_path / 'shared'}]"


def _compose(compose_cfg, overrides: list[str]):
    with guarded(overrides, str(CONF)):
        return compose_cfg(overrides, return_hydra_config=True)


def _refusal(compose_cfg, caplog, overrides: list[str]) -> str:
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="distillkit"), \
            pytest.raises(SystemExit) as exited:
        _compose(compose_cfg, overrides)
    assert exited.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.getMessage().startswith("error:")]
    assert len(errors) == 1, errors
    return errors[0]


REFUSED = {
    "env_set": ({EXP: "hydra:\n  job:\n    env_set:\n      GIT_CONFIG_COUNT: '1'\n"}, [],
                ["hydra.job.env_set.GIT_CONFIG_COUNT is set by experiment/evil.yaml",
                 "it sets environment variables",
                 "give it on the command line (hydra.job.env_set.GIT_CONFIG_COUNT=...)"]),
    "env_set_other_key_on_cli": (
        {EXP: "hydra:\n  job:\n    env_set:\n      GIT_DIR: /tmp\n"},
        ["+hydra.job.env_set.MINE=1"], ["hydra.job.env_set.GIT_DIR is set by"]),
    "env_copy": ({EXP: "hydra:\n  job:\n    env_copy: [HOME]\n"}, [], ["hydra.job.env_copy"]),
    "job_logging_option": (
        {EXP: "defaults:\n  - override /hydra/job_logging: evil\n",
         "hydra/job_logging/evil.yaml": "version: 1\nhandlers:\n  f:\n    class: "
                                        "logging.FileHandler\n    filename: /tmp/x\n"}, [],
        ["hydra.job_logging.", "is set by hydra/job_logging/evil.yaml",
         "logging configs build handlers"]),
    "hydra_logging": ({EXP: "hydra:\n  hydra_logging:\n    root:\n      level: DEBUG\n"}, [],
                      ["hydra.hydra_logging.root.level is set by"]),
    "recorded_overrides": (
        {EXP: "hydra:\n  overrides:\n    task: [teacher.trust_remote_code=true]\n"}, [],
        ["hydra.overrides.task.0 is set by", "Hydra's record of the command line"]),
    "launcher_setup": ({EXP: "hydra:\n  launcher:\n    setup: ['touch /tmp/x']\n"},
                       ["hydra/launcher=slurm"],
                       ["hydra.launcher.setup.0 is set by", "runs these shell lines"]),
    "launcher_sbatch_options": (
        {EXP: "hydra:\n  launcher:\n    additional_parameters:\n      wrap: x\n"},
        ["hydra/launcher=slurm"], ["hydra.launcher.additional_parameters.wrap", "sbatch"]),
    "launcher_line_break": ({EXP: "hydra:\n  launcher:\n    partition: \"gpu\\ntouch x #\"\n"},
                            ["hydra/launcher=slurm"], ["hydra.launcher.partition=",
                                                       "holds a line break"]),
    "optuna_storage": ({EXP: "hydra:\n  sweeper:\n    storage: sqlite:////tmp/x.db\n"},
                       ["hparams_search=optuna"], ["hydra.sweeper.storage is set by"]),
    "sweep_params_env": (
        {EXP: "hydra:\n  sweeper:\n    params:\n      hydra.job.env_set.X: 1,2\n"}, [],
        ["a sweep would set hydra.job.env_set.X in every job"]),
    "sweep_params_remote_code": (
        {EXP: "hydra:\n  sweeper:\n    params:\n      +teacher.trust_remote_code: 'true'\n"},
        [], ["a sweep would set teacher.trust_remote_code"]),
    "foreign_callback": (
        {EXP: "hydra:\n  callbacks:\n    log:\n      _target_: "
              "hydra.experimental.callbacks.LogJobReturnCallback\n"}, [],
        ["hydra.callbacks.log._target_ is set by", "only distillkit's own callbacks"]),
    "args_of_a_factory": (
        {EXP: "teacher:\n  _args_: [/tmp/model, null, true]\n"},
        ["teacher=hub", "teacher.name_or_path=x"],
        ["teacher._args_.0 is set by", "distillkit's factories take keyword arguments"]),
    "allow_targets": ({EXP: "allow_targets: [torch.]\n"}, [],
                      ["allow_targets.0 is set by", "only the command line opts code in"]),
    "export_overwrite": ({EXP: "mode: export_logits\nexport:\n  path: /tmp/x.tsv\n"
                                "  overwrite: true\n"}, [],
                         ["export.overwrite is set by", "could name any file as export.path",
                          "give it on the command line (export.overwrite=...)"]),
    "job_name_path": ({EXP: "hydra:\n  job:\n    name: ../../.bashrc\n"}, [],
                      ["hydra.job.name is set by", "outside the run directory"]),
    "output_subdir_path": ({EXP: "hydra:\n  output_subdir: /tmp/elsewhere\n"}, [],
                           ["hydra.output_subdir is set by"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_file_may_not_set_it(tmp_path, compose_cfg, caplog, case):
    files, extra, phrases = REFUSED[case]
    line = _refusal(compose_cfg, caplog,
                    [_shared(tmp_path, files), "experiment=evil", *extra])
    missing = [p for p in phrases if p not in line]
    assert not missing, f"{missing} not in: {line}"
    assert "refused before" in line


ALLOWED = {
    # the command line's own
    "env_set_on_cli": ({}, ["+hydra.job.env_set.GIT_CONFIG_COUNT=1"]),
    "env_set_key_also_on_cli": ({EXP: "hydra:\n  job:\n    env_set:\n      X: '2'\n"},
                                ["experiment=evil", "hydra.job.env_set.X=1"]),
    "own_logging_option_chosen_on_cli": (
        {"hydra/job_logging/mine.yaml": "version: 1\nroot:\n  level: INFO\n"},
        ["hydra/job_logging=mine"]),
    "logging_key_on_cli": ({}, ["hydra.job_logging.root.level=DEBUG"]),
    "setup_on_cli": ({}, ["hydra/launcher=slurm", "hydra.launcher.setup=[module load x]"]),
    "args_on_cli": ({}, ["teacher=hub", "teacher.name_or_path=x", "+teacher._args_=[x]"]),
    "allow_targets_on_cli": ({EXP: "allow_targets: [torch.]\n"},
                             ["experiment=evil", "allow_targets=[torch.]"]),
    # what a file may set
    "own_callback": ({EXP: "hydra:\n  callbacks:\n    again:\n      _target_: "
                           "distillkit.reporting.sweep.SweepSummary\n"}, ["experiment=evil"]),
    "args_of_torch": ({EXP: "loss:\n  projection:\n    _args_: [4, 4]\n"},
                      ["experiment=evil", "loss=mmd"]),
    "empty_allow_targets": ({EXP: "allow_targets: []\n"}, ["experiment=evil"]),
    "export_overwrite_false": ({EXP: "export:\n  overwrite: false\n"}, ["experiment=evil"]),
    "export_overwrite_on_cli": ({EXP: "export:\n  path: /tmp/x.tsv\n"},
                                ["experiment=evil", "export.overwrite=true"]),
    "plain_job_name": ({EXP: "hydra:\n  job:\n    name: mine\n  output_subdir: .meta\n"},
                       ["experiment=evil"]),
    "sweep_values": ({EXP: "hydra:\n  sweeper:\n    params:\n      loss.alpha: 0.1,0.2\n"},
                     ["experiment=evil"]),
    "launcher_partition": ({EXP: "hydra:\n  launcher:\n    partition: gpu\n"},
                           ["experiment=evil", "hydra/launcher=slurm"]),
    "run_dir": ({EXP: "hydra:\n  run:\n    dir: /tmp/somewhere\n"}, ["experiment=evil"]),
}


@pytest.mark.parametrize("case", sorted(ALLOWED))
def test_allowed_from_a_file_or_the_command_line(tmp_path, compose_cfg, case):
    files, overrides = ALLOWED[case]
    _compose(compose_cfg, [_shared(tmp_path, files), *overrides])


def test_the_sweepers_job_overrides_are_checked_against_the_command_line():
    argv = opt_ins(["loss.alpha=0.1,0.2", "hydra.job.env_set.MINE=1"])
    check_overrides(["loss.alpha=0.1", "hydra.job.env_set.MINE=1", "loss.temperature=2"], argv)
    for override in ("hydra.job.env_set.GIT_DIR=/tmp", "+teacher.trust_remote_code=true",
                     "teacher._args_=[x]", "allow_targets=[torch.]",
                     "hydra.job_logging.root.level=DEBUG"):
        with pytest.raises(UnsafeConfigError, match="not from the command line"):
            check_overrides([override], argv)
    check_overrides(["allow_targets=[torch.]"], OptIns(keys=frozenset({"allow_targets"})))


def test_a_sweep_job_composed_in_another_process_is_checked(tmp_path):
    """What a joblib worker or a SLURM task does: compose a job from the master config
    without the CLI's guard (importing distillkit.app.cli installed the sweep guard)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from distillkit.app.schemas import register_schemas

    register_schemas()
    search = _shared(tmp_path, {
        "extra/evil.yaml": "# @package _global_\nhydra:\n  job:\n    env_set:\n      X: '1'\n",
        "extra/fine.yaml": "# @package _global_\nloss:\n  alpha: 0.25\n"})
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            master = compose("config", overrides=[search], return_hydra_config=True)
            loader = GlobalHydra.instance().config_loader()
            assert loader.load_sweep_config(master, ["+extra=fine"]).loss.alpha == 0.25
            with pytest.raises(UnsafeConfigError, match="hydra.job.env_set.X is set by extra"):
                loader.load_sweep_config(master, ["+extra=evil"])
            with pytest.raises(UnsafeConfigError, match="not from the command line"):
                loader.load_sweep_config(master, ["+hydra.job.env_set.X=1"])
    finally:
        GlobalHydra.instance().clear()
