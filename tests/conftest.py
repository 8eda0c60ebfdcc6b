"""Shared fixtures: config composition and the CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from distillkit.app.cli import config_dir
from distillkit.app.schemas import register_schemas

CONF = Path(config_dir())


@pytest.fixture
def compose_cfg():
    """Composes the run config with overrides through Hydra's compose API."""
    register_schemas()

    def _compose(overrides: list[str] | None = None, return_hydra_config: bool = False):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=overrides or [],
                           return_hydra_config=return_hydra_config)

    yield _compose
    GlobalHydra.instance().clear()


def run_cli(args: list[str], cwd: Path, timeout: int = 300, env: dict | None = None):
    """Runs ``python -m distillkit ARGS`` in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1",
                "DISTILLKIT_CACHE": str(cwd / "dk-cache"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "distillkit", *args], cwd=cwd, env=full_env,
        capture_output=True, text=True, timeout=timeout, check=False,
    )


TINY_RUN = ["teacher=tiny", "student=tiny", "data=tiny", "trainer=debug",
            "trainer.eval_batch_size=32"]


def one_error_line(returncode: int, output: str, phrases: list[str]) -> str:
    """Asserts a refused run's contract: exit code 2, exactly one ``error:`` line holding every
    phrase, no traceback. Returns that line."""
    assert returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1, errors or output[-3000:]
    missing = [p for p in phrases if p not in errors[0]]
    assert not missing, f"{missing} not in: {errors[0]}"
    assert "Traceback" not in output
    return errors[0]
