"""What produced a run: code version, library versions, seed and command line.

Every run writes ``<run>/provenance.json`` next to Hydra's ``.hydra/`` files and
``resolved_config.yaml``, so a saved run says which commit (and whether the checkout had
uncommitted changes), which library versions and which seed produced its metrics.
``distillkit reproduce`` compares it with the current environment before re-running.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# Distributions whose versions decide a run's numbers.
LIBRARIES = ("distillkit", "torch", "transformers", "datasets", "tokenizers", "hydra-core",
             "omegaconf", "numpy")
UNKNOWN = "unknown"


# git runs with these settings only: no hooks, no fsmonitor (a command git would run), no
# system or global config, and none of the caller's GIT_* variables (GIT_CONFIG_COUNT/KEY/VALUE
# can set any config, GIT_DIR another repository, GIT_EXTERNAL_DIFF a command, ...).
GIT_CONFIG = ("-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null",
              "-c", "core.untrackedCache=false")


def git_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The minimal environment of a provenance ``git`` call: PATH from ``environ`` (default
    ``os.environ``), a C locale, no system or global config, no terminal prompts, no
    optional locks, and no other variable (no ``GIT_*`` of the caller)."""
    environ = os.environ if environ is None else environ
    return {"PATH": environ.get("PATH", os.defpath), "LC_ALL": "C", "LANG": "C",
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"}


def _git(args: list[str], cwd: Path) -> str | None:
    """``git <args>`` in ``cwd`` with :data:`GIT_CONFIG` and :func:`git_environment`; its
    output, or None when git is missing or fails. ``args`` are fixed by the callers here, never
    taken from a config."""
    try:
        out = subprocess.run(["git", *GIT_CONFIG, *args], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=False, env=git_environment(),
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(path: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding ``path`` (distillkit's source).

    Returns ``{"commit": "unknown", "dirty": None}`` outside a git checkout (an installed
    wheel) or without git.
    """
    path = path or Path(__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], path)
    if commit is None:
        return {"commit": UNKNOWN, "dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], path)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def library_versions() -> dict[str, str]:
    """Installed versions of :data:`LIBRARIES` (``unknown`` for one that is missing)."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = UNKNOWN
    return versions


def collect(seed: int, launch: dict[str, Any] | None = None) -> dict[str, Any]:
    """The provenance record of a run.

    Args:
        seed: the run's seed (``trainer.seed``).
        launch: how the run was launched: ``overrides`` (Hydra task overrides), ``mode``
            (RUN or MULTIRUN), ``choices`` (config-group options). Stored as given.
    """
    return {
        "git": git_state(),
        "versions": library_versions(),
        "seed": int(seed),
        "argv": list(sys.argv),
        "launch": launch or {},
        "platform": {"system": platform.platform(), "machine": platform.machine(),
                     "torch_threads": torch.get_num_threads(),
                     "cuda": torch.version.cuda if torch.cuda.is_available() else None},
    }


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences in code and library versions between two records."""
    diffs = []
    old_git, new_git = saved.get("git", {}), current.get("git", {})
    if old_git.get("commit") != new_git.get("commit"):
        diffs.append(f"git commit {old_git.get('commit')} -> {new_git.get('commit')}")
    if old_git.get("dirty") or new_git.get("dirty"):
        diffs.append("uncommitted changes in the checkout (saved run: "
                     f"{old_git.get('dirty')}, now: {new_git.get('dirty')})")
    old_v, new_v = saved.get("versions", {}), current.get("versions", {})
    for name in sorted(set(old_v) | set(new_v)):
        if old_v.get(name) != new_v.get(name):
            diffs.append(f"{name} {old_v.get(name)} -> {new_v.get(name)}")
    return diffs
