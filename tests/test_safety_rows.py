"""The attack table of issue 19, row by row, through the real CLI.

Each payload uses a prefix the old string allow-list accepted and would create a marker file
if it got through (each control shows it does, without distillkit's checks). Each attack must
end with exit code 2, exactly one ``error:`` line, no traceback, and no marker. These tests
run the same against the lowest hydra-core pyproject.toml allows (``.ci/run``), where Hydra
has no blocklist of its own: distillkit's checks stop every row.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from hydra._internal.utils import _locate

from distillkit.models import pretrained_classifier, tiny_teacher
from tests.conftest import TINY_RUN, one_error_line, run_cli

QUICK = [*TINY_RUN, "teacher.finetune=false", "trainer.max_steps=1", "export_student=false"]


class _Payload:
    """Unpickling it creates ``marker`` (builtins.open: a pickle runs what it names)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle(tmp_path: Path) -> tuple[Path, Path]:
    marker, path = tmp_path / "pwned", tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    return path, marker


def _remote_code_model(tmp_path: Path) -> tuple[Path, Path]:
    """A saved tiny model whose config names its own code (auto_map); importing that code
    creates the marker."""
    marker, model = tmp_path / "pwned", tmp_path / "model"
    bundle = tiny_teacher(labels=["a", "b", "c"])
    bundle.model.save_pretrained(model)
    bundle.tokenizer.save_pretrained(model)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig"}
    (model / "config.json").write_text(json.dumps(config))
    (model / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import BertConfig\n\n\n"
        "class EvilConfig(BertConfig):\n    pass\n")
    return model, marker


def _shared(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, body in files.items():
        path = tmp_path / "shared" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    return tmp_path / "shared"


def _refused(proc, marker: Path, phrases: list[str]) -> None:
    one_error_line(proc.returncode, proc.stdout + proc.stderr, phrases)
    assert not marker.exists(), "the payload ran"


def _experiment(tmp_path: Path, body: str, env: dict | None = None, extra=None,
                groups: tuple[str, ...] = ()):
    """Runs ``experiment=evil`` (the file picks the options of ``groups`` itself)."""
    conf = _shared(tmp_path, {"experiment/evil.yaml": "# @package _global_\n" + body,
                              **(extra or {})})
    args = [a for a in QUICK if a.split("=")[0] not in groups]
    return run_cli(["--config-dir", str(conf), "experiment=evil", *args,
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env)


# -- controls: without distillkit's checks, each payload runs --------------------------------
@pytest.mark.parametrize("target", ["torch.serialization.load",
                                    "transformers.modeling_utils.torch.load"])
def test_control_row1_an_alias_of_torch_load_runs_the_pickle(tmp_path, target):
    path, marker = _pickle(tmp_path)
    try:
        _locate(target)(f=str(path), weights_only=False)
    except Exception:  # noqa: BLE001 - the payload ran first; what follows does not matter
        pass
    assert marker.exists()


def test_control_row3_positional_trust_remote_code_runs_the_models_code(tmp_path):
    model, marker = _remote_code_model(tmp_path)
    code = ("import sys; from transformers import AutoConfig; "
            "AutoConfig.from_pretrained(sys.argv[1], trust_remote_code=True)")
    subprocess.run([sys.executable, "-c", code, str(model)], check=True, capture_output=True,
                   env={**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert marker.exists()


@pytest.mark.parametrize("target", ["torch.os.system", "distillkit.runtime.io.os.system"])
def test_control_row6_a_walk_through_a_module_attribute_reaches_os_system(tmp_path, target):
    marker = tmp_path / "pwned"
    _locate(target)(command=f"touch {marker}")
    assert marker.exists()


def test_control_row6_logging_resolves_a_factory_through_a_module_attribute(tmp_path):
    import logging.config

    marker = tmp_path / "pwned"
    logging.config.BaseConfigurator({}).resolve("logging.handlers.os.system")(
        command=f"touch {marker}")
    assert marker.exists()


def test_row3_trust_remote_code_cannot_be_given_by_position(tmp_path):
    model, marker = _remote_code_model(tmp_path)
    with pytest.raises(TypeError, match="positional"):
        pretrained_classifier(str(model), None, True, labels=["a", "b", "c"])
    assert not marker.exists()


# -- the rows through the CLI --------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("target", ["torch.serialization.load",
                                    "transformers.modeling_utils.torch.load"])
def test_row1_an_alias_of_torch_load(tmp_path, target):
    path, marker = _pickle(tmp_path)
    proc = _experiment(tmp_path, f"loss:\n  kd:\n    _target_: {target}\n    f: {path}\n"
                                 "    weights_only: false\n")
    _refused(proc, marker, [f"loss.kd._target_={target} is not allowed"])


@pytest.mark.e2e
def test_row2_env_set_from_a_file(tmp_path):
    marker = tmp_path / "pwned"
    proc = _experiment(tmp_path, "hydra:\n  job:\n    env_set:\n      GIT_CONFIG_COUNT: '1'\n"
                                 "      GIT_CONFIG_KEY_0: core.fsmonitor\n"
                                 f"      GIT_CONFIG_VALUE_0: touch {marker}\n")
    _refused(proc, marker, ["hydra.job.env_set.", "a config file may not set it"])


@pytest.mark.e2e
def test_row3_positional_args_of_a_teacher(tmp_path):
    model, marker = _remote_code_model(tmp_path)
    teacher = ("_target_: distillkit.models.pretrained_classifier\n_partial_: true\n"
               f"_args_: [{model}, null, true]\nfinetune: false\n")
    proc = _experiment(tmp_path, "defaults:\n  - override /teacher: evil\n",
                       extra={"teacher/evil.yaml": teacher}, groups=("teacher",),
                       env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    _refused(proc, marker, ["teacher._args_.0 is set by teacher/evil.yaml",
                            "distillkit's factories take keyword arguments"])


@pytest.mark.e2e
@pytest.mark.parametrize("section", ["job_logging", "hydra_logging"])
def test_row4_a_logging_file_handler(tmp_path, section):
    marker = tmp_path / "pwned"
    proc = _experiment(tmp_path, f"hydra:\n  {section}:\n    formatters:\n      sh:\n"
                                 "        format: 'touch /tmp/x; %(message)s'\n"
                                 "    handlers:\n      evil:\n        class: "
                                 f"logging.FileHandler\n        filename: {marker}\n"
                                 "        formatter: sh\n")
    _refused(proc, marker, [f"hydra.{section}.", "logging configs build handlers"])


@pytest.mark.e2e
@pytest.mark.parametrize("target", ["torch.os.system", "distillkit.runtime.io.os.system"])
def test_row6_a_walk_through_a_module_attribute(tmp_path, target):
    marker = tmp_path / "pwned"
    proc = _experiment(tmp_path, f"loss:\n  kd:\n    _target_: {target}\n"
                                 f"    command: touch {marker}\n")
    _refused(proc, marker, [f"loss.kd._target_={target} is not allowed",
                            "not a submodule"])


@pytest.mark.e2e
def test_row6_a_logging_factory_through_a_module_attribute(tmp_path):
    marker = tmp_path / "pwned"
    body = ("hydra:\n  job_logging:\n    formatters:\n      evil:\n"
            f"        (): logging.handlers.os.system\n        command: touch {marker}\n")
    _refused(_experiment(tmp_path, body), marker, ["hydra.job_logging.formatters.evil"])
    # given on the command line, the factory itself is still refused by what it is
    proc = run_cli([*QUICK, "+hydra.job_logging.handlers.evil.class=logging.handlers.os.system",
                    f"+hydra.job_logging.handlers.evil.command='touch {marker}'",
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    _refused(proc, marker, ["hydra.job_logging.handlers.evil.class=logging.handlers.os.system",
                            "logging.handlers.os is the module os"])


@pytest.mark.e2e
def test_row6_an_interpolated_target(tmp_path):
    marker = tmp_path / "pwned"
    body = ("loss:\n  kd:\n    _target_: torch.${oc.env:DK_X}\n"
            f"    command: touch {marker}\n")
    proc = _experiment(tmp_path, body + "hydra:\n  job:\n    env_set:\n      DK_X: os.system\n")
    _refused(proc, marker, ["hydra.job.env_set.DK_X is set by"])
    # the variable set outside the run: the check resolves it, and refuses it all the same
    proc = _experiment(tmp_path, body, env={"DK_X": "os.system"})
    _refused(proc, marker, ["loss.kd._target_=torch.os.system is not allowed",
                            "must be written out"])


@pytest.mark.e2e
def test_a_pickle_given_as_resume_is_refused_unread(tmp_path):
    path, marker = _pickle(tmp_path)
    proc = run_cli([*QUICK, f"resume={path}", f"hydra.run.dir={tmp_path / 'run'}"],
                   cwd=tmp_path)
    _refused(proc, marker, [f"cannot read checkpoint {path}", "refused unread",
                            "resume=null"])


@pytest.mark.e2e
def test_hydras_pickled_rerun_is_refused(tmp_path):
    path, marker = _pickle(tmp_path)
    proc = run_cli(["--experimental-rerun", str(path)], cwd=tmp_path)
    _refused(proc, marker, ["--experimental-rerun loads a pickle", "distillkit reproduce"])


@pytest.mark.e2e
def test_a_file_cannot_reach_logging_through_a_sweep_in_worker_processes(tmp_path):
    """The file picks the joblib launcher and a sweep whose job adds a logging handler."""
    marker = tmp_path / "pwned"
    extra = {"extra/evil.yaml": "# @package _global_\nhydra:\n  job_logging:\n    handlers:\n"
                                f"      evil:\n        class: logging.FileHandler\n"
                                f"        filename: {marker}\n"}
    body = ("defaults:\n  - override /hydra/launcher: joblib\nhydra:\n  mode: MULTIRUN\n"
            "  sweeper:\n    params:\n      +extra: evil\n")
    conf = _shared(tmp_path, {"experiment/evil.yaml": "# @package _global_\n" + body, **extra})
    proc = run_cli(["--config-dir", str(conf), "experiment=evil", *QUICK,
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    _refused(proc, marker, ["hydra.job_logging.handlers.evil", "is set by extra/evil.yaml"])
    assert not list((tmp_path / "sweep").glob("*/metrics.json"))
