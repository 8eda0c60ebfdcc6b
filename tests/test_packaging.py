"""distillkit works from a normal (non-editable) wheel install: configs ship in the wheel."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import TINY_RUN, run_cli

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]


def test_wheel_install_runs_without_the_repo(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("distillkit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "distillkit/conf/config.yaml" in names and "distillkit/conf/loss/kd.yaml" in names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    env = {"PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import distillkit.app.cli as c; "
                            "print(c.__file__); print(c.config_dir())"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout.split()
    assert all(p.startswith(str(site)) for p in where), where
    run_dir = tmp_path / "run"
    proc = run_cli([*TINY_RUN, "trainer.max_steps=2", f"hydra.run.dir={run_dir}"],
                   cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["train"]["steps"] == 2
