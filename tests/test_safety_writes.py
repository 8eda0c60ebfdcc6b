"""Writes stay where intended and subprocesses are clean (issue 19, points 3 and 4).

* ``mode=export_logits`` never replaces an existing file unless ``export.overwrite=true``,
  and a replaced file keeps its permissions (io.write_file for every run output);
* provenance's ``git`` calls ignore the caller's ``GIT_*`` variables (a shared file cannot set
  them; a user's own ``hydra.job.env_set`` on the command line can, and git still runs no
  command from them).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from distillkit.errors import ConfigError
from distillkit.reporting import provenance
from distillkit.runtime.io import write_dir, write_file
from distillkit.teachers.export import ExportRequest
from tests.conftest import TINY_RUN, run_cli

QUICK = [*TINY_RUN, "teacher.finetune=false"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_replaced_file_keeps_its_permissions_and_a_new_one_gets_the_umasks(tmp_path):
    old = tmp_path / "kept.txt"
    old.write_text("old")
    old.chmod(0o640)
    write_file(old, lambda fh: fh.write(b"new"))
    assert old.read_text() == "new" and _mode(old) == 0o640
    new = tmp_path / "new.txt"
    write_file(new, lambda fh: fh.write(b"x"))
    assert _mode(new) == 0o666 & ~_umask()
    folder = tmp_path / "dir"
    write_dir(folder, lambda tmp: (tmp / "f").write_text("1"))
    assert _mode(folder) == 0o777 & ~_umask()
    folder.chmod(0o750)
    write_dir(folder, lambda tmp: (tmp / "f").write_text("2"))
    assert (folder / "f").read_text() == "2" and _mode(folder) == 0o750
    assert not list(tmp_path.glob(".*.tmp"))


def test_write_file_can_refuse_to_replace(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("precious")
    with pytest.raises(FileExistsError):
        write_file(path, lambda fh: fh.write(b"new"), replace=False)
    assert path.read_text() == "precious" and not list(tmp_path.glob(".*.tmp"))
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        write_file(dangling, lambda fh: fh.write(b"new"), replace=False)
    write_file(tmp_path / "fresh.tsv", lambda fh: fh.write(b"ok"), replace=False)
    assert (tmp_path / "fresh.tsv").read_text() == "ok"


def test_export_request_refuses_an_existing_path_unless_overwrite(tmp_path, compose_cfg):
    path = tmp_path / "logits.tsv"
    path.write_text("precious")
    args = ["mode=export_logits", f"export.path={path}"]
    with pytest.raises(ConfigError, match=r"exists.*export.overwrite=true"):
        ExportRequest.from_config(compose_cfg(args))
    assert ExportRequest.from_config(compose_cfg([*args, "export.overwrite=true"])).overwrite


@pytest.mark.e2e
def test_export_to_an_existing_file(tmp_path):
    path = tmp_path / "logits.tsv"
    path.write_text("precious\n")
    path.chmod(0o640)
    args = [*QUICK, "mode=export_logits", f"export.path={path}"]
    proc = run_cli([*args, f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"export.path={path} exists" in errors[0], errors
    assert "export.overwrite=true" in errors[0] and "Traceback" not in output
    assert "stage: build" not in output, "refused before any teacher work"
    assert path.read_text() == "precious\n" and _mode(path) == 0o640
    proc = run_cli([*args, "export.overwrite=true", f"hydra.run.dir={tmp_path / 'b'}"],
                   cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert path.read_text().startswith("id\tlogits\n") and _mode(path) == 0o640


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        if args[0] == "add":
            (repo / "a.txt").write_text("a\n")
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)
    return repo


def _fsmonitor_env(marker: Path) -> dict[str, str]:
    return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.fsmonitor",
            "GIT_CONFIG_VALUE_0": f"touch {marker}"}


def test_provenance_git_ignores_the_callers_git_variables(tmp_path, monkeypatch):
    repo, marker = _repo(tmp_path), tmp_path / "pwned"
    # control: git itself runs the command these variables name
    subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                   env={**os.environ, **_fsmonitor_env(marker)}, check=False)
    assert marker.exists()
    marker.unlink()
    for key, value in {**_fsmonitor_env(marker), "GIT_DIR": str(tmp_path / "nope")}.items():
        monkeypatch.setenv(key, value)
    state = provenance.git_state(repo)
    assert not marker.exists(), "git ran the command of GIT_CONFIG_*"
    assert len(state["commit"]) == 40 and state["dirty"] is False  # GIT_DIR ignored as well
    # nor a command the repository's own config names
    subprocess.run(["git", "config", "core.fsmonitor", f"touch {marker}"], cwd=repo, check=True,
                   env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert provenance.git_state(repo)["dirty"] is False and not marker.exists()
    env = provenance.git_environment()
    assert not [k for k in env if k.startswith("GIT_") and k not in (
        "GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_GLOBAL", "GIT_TERMINAL_PROMPT", "GIT_OPTIONAL_LOCKS")]
    assert "core.fsmonitor=false" in provenance.GIT_CONFIG
    assert "core.hooksPath=/dev/null" in provenance.GIT_CONFIG


@pytest.mark.e2e
def test_env_set_on_the_command_line_reaches_no_git_command(tmp_path):
    """The user's own env_set is applied, and provenance's git still runs no command."""
    marker = tmp_path / "pwned"
    env_set = [f"+hydra.job.env_set.{k}='{v}'" for k, v in _fsmonitor_env(marker).items()]
    run_dir = tmp_path / "run"
    proc = run_cli([*QUICK, "trainer.max_steps=1", "export_student=false", *env_set,
                    f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert not marker.exists(), "git ran the command of GIT_CONFIG_*"
    commit = json.loads((run_dir / "provenance.json").read_text())["git"]["commit"]
    assert commit == "unknown" or len(commit) == 40
