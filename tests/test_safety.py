"""Shared YAML is safe: targets judged by the object they name, command-line-only opt-ins.

A malicious experiment file is refused before any side effect: the command exits 2 with one
``error:`` line, its payload never runs and no run directory is created. Every payload here
uses a prefix the old string allow-list accepted (``distillkit.``, ``torch.``, ``logging.``),
so it would really run if the check let it through (the controls show it does).
What a config *file* may not set: tests/test_safety_files.py; the issue's attack table:
tests/test_safety_rows.py; writes and subprocesses: tests/test_safety_writes.py.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from distillkit.errors import UnsafeConfigError
from distillkit.security.safety import OptIns, check_config, opt_ins
from tests.conftest import CONF, TINY_RUN, one_error_line, run_cli

SRC = Path(__file__).resolve().parents[1] / "src" / "distillkit"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
OPTIONS += [("hydra/launcher", "slurm"), ("hydra/launcher", "joblib"),
            ("hydra/launcher", "submitit_local")]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_built_in_option_passes_the_allow_list(compose_cfg, group, option):
    check_config(compose_cfg([f"{group}={option}"], return_hydra_config=True))


REFUSED = [
    # not on the allow-list at all (and never imported: see the next test)
    ({"a": {"_target_": "os.system", "command": "x"}}, r"a._target_=os.system is not allowed"),
    ({"l": [1, {"_target_": "builtins.eval"}]}, r"l.1._target_=builtins.eval"),
    # defined in distillkit, but a file writer, not a factory
    ({"a": {"_target_": "distillkit.runtime.io.write_json"}},
     r"distillkit.runtime.io.write_json is not allowed: it is not on the allow-list"),
    # code loaders inside allowed packages, by any name
    ({"m": {"_target_": "torch.hub.load"}}, r"torch.hub.load is not allowed: it loads code"),
    ({"m": {"_target_": "torch.serialization.load"}}, r"torch.serialization.load is not all"),
    ({"m": {"_target_": "torch.load"}}, r"m._target_=torch.load is not allowed: it loads"),
    # walks through a module attribute that is not a submodule
    ({"m": {"_target_": "torch.os.system"}}, r"torch.os is the module os, not a submodule"),
    ({"m": {"_target_": "distillkit.runtime.io.os.system"}}, r"distillkit.runtime.io.os is the module os"),
    ({"m": {"_target_": "transformers.modeling_utils.torch.load"}},
     r"transformers.modeling_utils.torch is the module torch"),
    ({"m": {"_target_": "distillkit.models.bundle.torch.load"}}, r"is the module torch"),
    ({"m": {"_target_": "distillkit.models.tiny_teacher.__globals__"}}, r"dunder"),
    # written as, or built by, an interpolation
    ({"x": "${oc.create:{_target_: subprocess.run}}"},
     r"x._target_=subprocess.run is not allowed: a _target_ must be written out"),
    ({"m": {"_target_": "torch.${oc.env:DK_TEST_X}"}},
     r"m._target_=torch.optim.AdamW is not allowed: a _target_ must be written out"),
    ({"m": {"_target_": "torch.${oc.env:DK_TEST_UNSET}"}}, r"oc.env:DK_TEST_UNSET\} is not"),
    ({"n": "torch.optim.AdamW", "m": {"_target_": "${n}"}}, r"must be written out"),
    # the hydra section: callbacks, launcher, logging factories
    ({"hydra": {"callbacks": {"c": {"_target_": "hydra.utils.call"}}}},
     r"hydra.callbacks.c._target_=hydra.utils.call"),
    ({"hydra": {"callbacks": {"c": {"_target_": "distillkit.runtime.io.write_json"}}}},
     r"distillkit's own callbacks"),
    ({"hydra": {"launcher": {"_target_": "torch.optim.AdamW"}}}, r"launchers, sweepers"),
    ({"hydra": {"sweeper": {"custom_search_space": "distillkit.runtime.io.write_json"}}},
     r"hydra.sweeper.custom_search_space=distillkit.runtime.io.write_json is not allowed"),
    ({"hydra": {"job_logging": {"handlers": {"h": {"class": "subprocess.Popen"}}}}},
     r"hydra.job_logging.handlers.h.class=subprocess.Popen"),
    ({"hydra": {"hydra_logging": {"formatters": {"f": {"()": "os.system"}}}}},
     r"hydra.hydra_logging.formatters.f.\(\)=os.system"),
    ({"hydra": {"job_logging": {"formatters": {"f": {"()": "logging.handlers.os.system"}}}}},
     r"logging.handlers.os is the module os"),
    # model code from the hub, and shell lines in a launcher's strings
    ({"teacher": {"trust_remote_code": True}},
     r"teacher.trust_remote_code=True comes from a config file.*teacher.trust_remote_code=true"),
    ({"hydra": {"launcher": {"partition": "gpu\ntouch x #"}}}, r"holds a line break"),
    ({"hydra": {"sweep": {"dir": "out\rtouch x"}}}, r"hydra.sweep.dir=.*holds a line break"),
]


@pytest.mark.parametrize(("node", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_refused_targets_name_key_value_and_reason(node, message, monkeypatch):
    monkeypatch.setenv("DK_TEST_X", "optim.AdamW")  # resolves now: refused all the same
    with pytest.raises(UnsafeConfigError, match=message):
        check_config(OmegaConf.create(node))


@pytest.mark.parametrize("target", ["torch.optim.AdamW", "torch.optim.adamw.AdamW",
                                    "distillkit.losses.SoftTargetCrossEntropy",
                                    "distillkit.losses.logits.SoftTargetCrossEntropy",
                                    "transformers.get_linear_schedule_with_warmup",
                                    "torch.nn.modules.linear.Linear"])
def test_an_allowed_object_passes_under_any_of_its_names(target):
    check_config(OmegaConf.create({"trainer": {"x": {"_target_": target}}}))


def test_a_refused_target_is_never_imported(tmp_path, monkeypatch):
    """Deciding about an unknown module does not import it (an import runs its code)."""
    marker = tmp_path / "imported"
    (tmp_path / "dk_evil_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\nf = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnsafeConfigError, match="dk_evil_mod.f is not allowed"):
        check_config(OmegaConf.create({"a": {"_target_": "dk_evil_mod.f"}}))
    assert not marker.exists() and "dk_evil_mod" not in sys.modules


def test_opt_ins_come_from_the_command_line_and_environment_only(tmp_path, monkeypatch):
    opted = opt_ins(["allow_targets=[dk_mypkg.,dk_other.f]", "+student.trust_remote_code=true",
                     "--config-dir", "x", "-m", "loss.alpha=0.1,0.2", "broken=[["],
                    environ={"DISTILLKIT_ALLOW_TARGETS": "envpkg."})
    assert opted.targets == ("envpkg.", "dk_mypkg.", "dk_other.f")
    assert opted.remote_code == frozenset({"student.trust_remote_code"})
    assert {"allow_targets", "student.trust_remote_code", "loss.alpha"} <= opted.keys
    (tmp_path / "dk_mypkg").mkdir()
    (tmp_path / "dk_mypkg" / "__init__.py").write_text("def f():\n    pass\n")
    (tmp_path / "dk_mypkg" / "sub.py").write_text("import os\n\ndef f():\n    pass\n")
    (tmp_path / "dk_other.py").write_text("def f():\n    pass\n\ndef g():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = OmegaConf.create({"a": {"_target_": "dk_mypkg.sub.f"}, "b": {"_target_": "dk_other.f"},
                            "student": {"trust_remote_code": True}})
    check_config(cfg, opted)
    with pytest.raises(UnsafeConfigError, match="dk_other.g"):  # an exact name, not a prefix
        check_config(OmegaConf.create({"b": {"_target_": "dk_other.g"}}), opted)
    with pytest.raises(UnsafeConfigError, match="dk_mypkg.sub.os is the module os"):
        check_config(OmegaConf.create({"b": {"_target_": "dk_mypkg.sub.os.system"}}), opted)
    # allow_targets inside the config itself does not count
    with pytest.raises(UnsafeConfigError, match=r"dk_mypkg.f is not allowed.*\[dk_mypkg.f\]"):
        check_config(OmegaConf.create({"allow_targets": ["dk_mypkg."],
                                       "a": {"_target_": "dk_mypkg.f"}}))


def test_a_prefix_opt_in_does_not_cover_code_loaders():
    torch_opted = OptIns(targets=("torch.",))
    check_config(OmegaConf.create({"a": {"_target_": "torch.nn.Identity"}}), torch_opted)
    with pytest.raises(UnsafeConfigError, match=r"loads code.*allow_targets=\[torch.load\]"):
        check_config(OmegaConf.create({"a": {"_target_": "torch.load"}}), torch_opted)
    check_config(OmegaConf.create({"a": {"_target_": "torch.load"}}),
                 OptIns(targets=("torch.load",)))  # the exact name is the user's choice
    with pytest.raises(UnsafeConfigError, match="walks through"):  # never, even exactly
        check_config(OmegaConf.create({"a": {"_target_": "torch.os.system"}}),
                     OptIns(targets=("torch.os.system",)))


def test_no_pickles_and_no_remote_code_by_default():
    loads = re.findall(r"torch\.load\(([^)]*)\)", "".join(
        p.read_text() for p in SRC.rglob("*.py")))
    assert loads and all("weights_only=True" in args for args in loads), loads
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert "trust_remote_code=True" not in text and "allow_pickle=True" not in text, path
    for name in ("teacher/hub.yaml", "student/hub.yaml", "teacher/causal_hub.yaml"):
        assert OmegaConf.load(CONF / name).trust_remote_code is False


# -- malicious experiment files through the real CLI ---------------------------------------
# torch.save writes any object to any path (the old prefix list allowed every torch. name)
WRITE = "_target_: torch.save\n{indent}obj: pwned\n{indent}f: {marker}\n"
PAYLOADS = {
    # runs at instantiate(cfg.loss): the KD term is built by calling its _target_
    "task": ("loss:\n  kd:\n    " + WRITE.replace("{indent}", "    "),
             ["loss.kd._target_=torch.save is not allowed", "allow_targets=[torch.save]",
              "DISTILLKIT_ALLOW_TARGETS"]),
    # Hydra instantiates callbacks before the task function runs
    "callback": ("hydra:\n  callbacks:\n    evil:\n      " + WRITE.replace("{indent}", "      "),
                 ["hydra.callbacks.evil", "is set by experiment/evil.yaml",
                  "only distillkit's own callbacks"]),
    # logging.config builds every handler it is given: a FileHandler creates its file
    "logging": ("hydra:\n  job_logging:\n    handlers:\n      evil:\n        class: "
                "logging.FileHandler\n        filename: {marker}\n",
                ["hydra.job_logging.handlers.evil", "a config file may not set it",
                 "give it on the command line"]),
    # opting itself in does not count
    "self_opt_in": ("allow_targets: [torch.]\nloss:\n  kd:\n    "
                    + WRITE.replace("{indent}", "    "),
                    ["allow_targets.0 is set by experiment/evil.yaml",
                     "only the command line opts code in"]),
}


def _experiment(tmp_path: Path, body: str) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    folder = tmp_path / "shared" / "experiment"
    folder.mkdir(parents=True)
    (folder / "evil.yaml").write_text("# @package _global_\n" + body.format(marker=marker))
    return tmp_path / "shared", marker


@pytest.mark.parametrize(("kind", "node"), [("task", "loss.kd"),
                                            ("callback", "hydra.callbacks.evil")])
def test_the_payloads_are_real_without_the_guard(tmp_path, compose_cfg, kind, node):
    """Control: composed without the CLI's guard, the same file runs its payload."""
    conf, marker = _experiment(tmp_path, PAYLOADS[kind][0])
    cfg = compose_cfg([f"hydra.searchpath=[file://{conf}]", "experiment=evil"],
                      return_hydra_config=True)
    instantiate(OmegaConf.select(cfg, node))
    assert marker.stat().st_size > 0


def test_the_logging_payload_is_real_without_the_guard(tmp_path):
    """Control: a handler's class, resolved and called as logging.config does, creates the
    file."""
    import logging.config

    marker = tmp_path / "pwned"
    factory = logging.config.BaseConfigurator({}).resolve("logging.FileHandler")
    factory(filename=str(marker)).close()
    assert marker.exists()


def _assert_refused(proc, marker: Path, phrases: list[str]) -> str:
    line = one_error_line(proc.returncode, proc.stdout + proc.stderr, phrases)
    assert not marker.exists(), "the payload ran"
    return line


@pytest.mark.e2e
@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_malicious_experiment_is_refused_before_any_side_effect(tmp_path, kind):
    conf, marker = _experiment(tmp_path, PAYLOADS[kind][0])
    run_dir = tmp_path / "run"
    proc = run_cli(["--config-dir", str(conf), "experiment=evil", *TINY_RUN,
                    f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    _assert_refused(proc, marker, PAYLOADS[kind][1])
    assert not run_dir.exists(), "refused before Hydra created the run directory"


@pytest.mark.e2e
def test_malicious_sweep_job_is_refused(tmp_path):
    conf, marker = _experiment(tmp_path, PAYLOADS["task"][0])
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "--config-dir", str(conf), "experiment=evil,tiny_kd", *TINY_RUN,
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    _assert_refused(proc, marker, ["loss.kd._target_=torch.save is not allowed"])
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
    paths = [str(tmp_path), os.environ.get("PYTHONPATH", ""),
             str(Path(sys.modules["distillkit"].__file__).parents[1])]
    env = {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}
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
