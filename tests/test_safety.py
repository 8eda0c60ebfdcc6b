"""Shared YAML is safe: ``_target_`` allow-list, command-line-only opt-ins, safe loading.

A malicious experiment file is refused before any side effect: the command exits 2 with one
``error:`` line, its payload never runs and no run directory is created.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from distillkit.errors import UnsafeConfigError
from distillkit.safety import OptIns, check_config, opt_ins
from tests.conftest import CONF, TINY_RUN, run_cli

SRC = Path(__file__).resolve().parents[1] / "src" / "distillkit"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_built_in_option_passes_the_allow_list(compose_cfg, group, option):
    check_config(compose_cfg([f"{group}={option}"], return_hydra_config=True))


@pytest.mark.parametrize(("node", "message"), [
    ({"a": {"_target_": "os.system", "command": "x"}}, r"a._target_=os.system is not allowed"),
    ({"l": [1, {"_target_": "builtins.eval"}]}, r"l.1._target_=builtins.eval"),
    ({"x": "${oc.create:{_target_: subprocess.run}}"}, r"x._target_=subprocess.run"),
    ({"m": {"_target_": "torch.hub.load"}}, r"torch.hub.load is not allowed: it loads code"),
    ({"hydra": {"callbacks": {"c": {"_target_": "hydra.utils.call"}}}},
     r"hydra.callbacks.c._target_=hydra.utils.call"),
    ({"hydra": {"job_logging": {"handlers": {"h": {"class": "subprocess.Popen"}}}}},
     r"hydra.job_logging.handlers.h.class=subprocess.Popen"),
    ({"hydra": {"hydra_logging": {"formatters": {"f": {"()": "os.system"}}}}},
     r"hydra.hydra_logging.formatters.f.\(\)=os.system"),
    ({"teacher": {"trust_remote_code": True}},
     r"teacher.trust_remote_code=True comes from a config file.*teacher.trust_remote_code=true"),
])
def test_refused_nodes_name_key_target_and_opt_in(node, message):
    with pytest.raises(UnsafeConfigError, match=message):
        check_config(OmegaConf.create(node))


def test_opt_ins_come_from_the_command_line_and_environment_only():
    opted = opt_ins(["allow_targets=[mypkg.,other.f]", "+student.trust_remote_code=true",
                     "--config-dir", "x", "-m", "loss.alpha=0.1,0.2", "broken=[["],
                    environ={"DISTILLKIT_ALLOW_TARGETS": "envpkg."})
    assert opted == OptIns(("envpkg.", "mypkg.", "other.f"),
                           frozenset({"student.trust_remote_code"}))
    cfg = OmegaConf.create({"a": {"_target_": "mypkg.sub.f"}, "b": {"_target_": "other.f"},
                            "student": {"trust_remote_code": True}})
    check_config(cfg, opted)
    with pytest.raises(UnsafeConfigError, match="other.g"):  # an exact name, not a prefix
        check_config(OmegaConf.create({"b": {"_target_": "other.g"}}), opted)
    # allow_targets inside the config itself does not count
    with pytest.raises(UnsafeConfigError, match=r"mypkg.f is not allowed.*\[mypkg.\]"):
        check_config(OmegaConf.create({"allow_targets": ["mypkg."],
                                       "a": {"_target_": "mypkg.f"}}))


def test_no_pickles_and_no_remote_code_by_default():
    loads = re.findall(r"torch\.load\(([^)]*)\)", "".join(
        p.read_text() for p in SRC.rglob("*.py")))
    assert loads and all("weights_only=True" in args for args in loads), loads
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert "trust_remote_code=True" not in text and "allow_pickle=True" not in text, path
    for name in ("teacher/hub.yaml", "student/hub.yaml"):
        assert OmegaConf.load(CONF / name).trust_remote_code is False


# -- malicious experiment files through the real CLI ---------------------------------------
# shutil.copyfile passes Hydra's own blocklist of code-running targets, yet can overwrite any
# file (a shell profile, a module on sys.path) with content the attacker chose.
COPY = "_target_: shutil.copyfile\n{indent}src: {src}\n{indent}dst: {marker}\n"
PAYLOADS = {
    # runs at instantiate(cfg.loss): the KD term is built by calling its _target_
    "task": "loss:\n  kd:\n    " + COPY.replace("{indent}", "    "),
    # Hydra instantiates callbacks before the task function runs
    "callback": "hydra:\n  callbacks:\n    evil:\n      " + COPY.replace("{indent}", "      "),
    # logging.config calls a handler's class with the other keys
    "logging": "hydra:\n  job_logging:\n    handlers:\n      evil:\n        class: "
               "shutil.copyfile\n        src: {src}\n        dst: {marker}\n",
    # opting itself in does not count
    "self_opt_in": "allow_targets: [shutil.]\nloss:\n  kd:\n    "
                   + COPY.replace("{indent}", "    "),
}


def _experiment(tmp_path: Path, body: str) -> tuple[Path, Path]:
    marker, src = tmp_path / "pwned", tmp_path / "payload.txt"
    src.write_text("attacker's content\n")
    folder = tmp_path / "shared" / "experiment"
    folder.mkdir(parents=True)
    (folder / "evil.yaml").write_text("# @package _global_\n"
                                      + body.format(marker=marker, src=src))
    return tmp_path / "shared", marker


@pytest.mark.parametrize(("kind", "node"), [("task", "loss.kd"),
                                            ("callback", "hydra.callbacks.evil")])
def test_the_payloads_are_real_without_the_guard(tmp_path, compose_cfg, kind, node):
    """Control: composed without the CLI's guard, the same file runs its payload."""
    conf, marker = _experiment(tmp_path, PAYLOADS[kind])
    cfg = compose_cfg([f"hydra.searchpath=[file://{conf}]", "experiment=evil"],
                      return_hydra_config=True)
    instantiate(OmegaConf.select(cfg, node))
    assert marker.read_text() == "attacker's content\n"


@pytest.mark.e2e
@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_malicious_experiment_is_refused_before_any_side_effect(tmp_path, kind):
    conf, marker = _experiment(tmp_path, PAYLOADS[kind])
    run_dir = tmp_path / "run"
    proc = run_cli(["--config-dir", str(conf), "experiment=evil", *TINY_RUN,
                    f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1, errors
    assert re.search(r"\S+=shutil\.copyfile is not allowed", errors[0]), errors[0]
    assert "allow_targets=[shutil.]" in errors[0] and "DISTILLKIT_ALLOW_TARGETS" in errors[0]
    assert "Traceback" not in output
    assert not marker.exists(), "the payload ran"
    assert not run_dir.exists(), "refused before Hydra created the run directory"


@pytest.mark.e2e
def test_malicious_sweep_job_is_refused(tmp_path):
    conf, marker = _experiment(tmp_path, PAYLOADS["task"])
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "--config-dir", str(conf), "experiment=evil,tiny_kd", *TINY_RUN,
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert "loss.kd._target_=shutil.copyfile is not allowed" in proc.stdout + proc.stderr
    assert not marker.exists()
    assert not list(sweep.glob("*/metrics.json")) and not list(sweep.glob("*/.hydra"))


@pytest.mark.e2e
def test_opt_in_on_the_command_line_or_environment(tmp_path):
    """A trusted package of one's own runs once allowed on the command line."""
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from distillkit.data import synthetic_nli\n\n\n"
        "def source(**kwargs):\n    return synthetic_nli(**kwargs)\n")
    args = [*TINY_RUN, "data.source._target_=mypkg.source", "trainer.max_steps=2",
            "teacher.finetune=false", "export_student=false"]
    env = {"PYTHONPATH": f"{tmp_path}:{Path(sys.modules['distillkit'].__file__).parents[1]}"}
    proc = run_cli([*args, f"hydra.run.dir={tmp_path / 'no'}"], cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "data.source._target_=mypkg.source is not allowed" in (
        proc.stdout + proc.stderr)
    proc = run_cli([*args, "allow_targets=[mypkg.]", f"hydra.run.dir={tmp_path / 'yes'}"],
                   cwd=tmp_path, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert (tmp_path / "yes" / "metrics.json").is_file()
    proc = run_cli([*args, "--cfg", "job"], cwd=tmp_path,
                   env={**env, "DISTILLKIT_ALLOW_TARGETS": "mypkg."})
    assert proc.returncode == 0 and "mypkg.source" in proc.stdout
