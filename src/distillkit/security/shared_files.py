"""What a config *file* may not set: the parts of Hydra that run code or touch the environment.

distillkit's own ``conf/``, Hydra's defaults and the plugins' (ConfigStore) configs are
trusted. Every other file Hydra composes (an experiment in a ``--config-dir``, a
``hydra.searchpath`` entry, a saved run's config given with ``--config-path``) may set the
run's values, but not:

* ``hydra.job.env_set`` / ``env_copy`` (environment variables reach every subprocess: git,
  pip, the launcher's jobs), ``hydra.job_logging`` / ``hydra.hydra_logging`` (logging builds
  handlers that write files), ``hydra.overrides`` / ``hydra.runtime`` (Hydra's record of the
  command line, which a sweep re-applies);
* the launcher's shell lines and sbatch options (``setup``, ``teardown``,
  ``additional_parameters``, ``srun_args``, ``submitit_folder``), the Optuna sweeper's
  ``storage`` and ``custom_search_space``;
* a callback other than distillkit's own; ``_args_`` of a distillkit factory (positional
  arguments; the security-relevant parameters are keyword-only as well); a non-empty
  ``allow_targets``; ``export.overwrite=true`` (the file also names ``export.path``);
  ``hydra.job.name`` or ``hydra.output_subdir`` that leave the run directory; sweeper
  ``params`` over any of these keys (a sweep applies them as overrides).

The same keys given on the command line are the user's own choice and stay allowed; each
refusal says how to give the key there.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePath

from omegaconf import DictConfig, OmegaConf

from distillkit.errors import UnsafeConfigError
from distillkit.security import targets
from distillkit.security.safety import OPT_IN_KEY, REMOTE_CODE_KEY, OptIns, walk

# config path -> what it does (why a file may not set it)
SENSITIVE = {
    "hydra.job.env_set": "it sets environment variables, which reach every subprocess",
    "hydra.job.env_copy": "it copies environment variables into the jobs",
    "hydra.job_logging": "logging configs build handlers that write files",
    "hydra.hydra_logging": "logging configs build handlers that write files",
    "hydra.overrides": "it is Hydra's record of the command line, which a sweep re-applies",
    "hydra.runtime": "Hydra fills it in",
    "hydra.launcher.setup": "the SLURM launcher runs these shell lines",
    "hydra.launcher.teardown": "the SLURM launcher runs these shell lines",
    "hydra.launcher.additional_parameters": "they become sbatch options",
    "hydra.launcher.srun_args": "they become srun arguments",
    "hydra.launcher.submitit_folder": "submitit writes its job files there",
    "hydra.sweeper.storage": "the Optuna study is written to that database",
    "hydra.sweeper.custom_search_space": "the Optuna sweeper imports and calls it",
    OPT_IN_KEY: "only the command line opts code in",
}
# config path -> why a file may not set it *true* (false is the default, and what saved runs hold)
SENSITIVE_IF_TRUE = {
    "export.overwrite": "a shared file could name any file as export.path and replace it",
}
SWEEP_PARAMS = ("hydra.sweeper.params.", "hydra.sweeper.search_space.")
_PLAIN_NAME = re.compile(r"[\w.-]+\Z")


def sensitive(path: str) -> tuple[str, str] | None:
    """``(root, why)`` when a file may not set ``path`` at all, else None."""
    for root, why in SENSITIVE.items():
        if path == root or path.startswith(root + "."):
            return root, why
    if path in SENSITIVE_IF_TRUE:
        return path, SENSITIVE_IF_TRUE[path]
    return None


def covered(path: str, root: str, keys: frozenset[str]) -> bool:
    """Whether the command line sets ``path`` itself or a node above it inside ``root``
    (``hydra/job_logging=mine`` covers every key of that logging config)."""
    return any((a == root or a.startswith(root + ".")) and (path == a or path.startswith(a + "."))
               for a in keys)


def _refuse(path: str, source: str, why: str, fix: str) -> UnsafeConfigError:
    return UnsafeConfigError(f"{path} is set by {source}: a config file may not set it ({why}); "
                             f"refused before anything ran. If you mean it, {fix}")


def _target_of(cfg: DictConfig, node: str, context: str) -> object | None:
    """The object of ``<node>._target_`` in the composed config, resolved only within the
    packages of ``context``'s allow-list (None when it does not resolve there)."""
    target = OmegaConf.select(cfg, f"{node}._target_", default=None,
                              throw_on_resolution_failure=False)
    if not isinstance(target, str):
        return None
    try:
        return targets.locate(target, targets.roots(targets.CONTEXTS[context]))
    except targets.Refusal:
        return None


def _check_leaf(path: str, source: str, cfg: DictConfig, opted: OptIns) -> None:
    parts = path.split(".")
    rule = sensitive(path)
    if path in SENSITIVE_IF_TRUE and not OmegaConf.select(
            cfg, path, default=False, throw_on_resolution_failure=False):
        rule = None  # set to false: what it is anyway
    if rule is not None:
        root, why = rule
        if not covered(path, root, opted.keys):
            raise _refuse(path, source, why, f"give it on the command line ({path}=...)")
    elif path.startswith(SWEEP_PARAMS):
        key = path.split(".", 3)[3].lstrip("+~")
        bad = (sensitive(key) or "_args_" in key.split(".")
               or key.split(".")[-1] == REMOTE_CODE_KEY
               or key.startswith("hydra.callbacks"))
        if bad and path not in opted.keys:
            raise _refuse(path, source, f"a sweep would set {key} in every job",
                          f"give {key}=... on the command line")
    elif parts[0] == "hydra" and len(parts) > 2 and parts[1] == "callbacks":
        node = ".".join(parts[:3])
        target = _target_of(cfg, node, "callback")
        if not (targets.listed(target, "callback") or covered(f"{node}._target_", node,
                                                                opted.keys)):
            raise _refuse(path, source, "only distillkit's own callbacks may be added by a "
                          "file", f"add it on the command line (+{node}._target_=... and "
                          f"{OPT_IN_KEY}=[...])")
    elif "_args_" in parts:
        node = ".".join(parts[: parts.index("_args_")])
        target = OmegaConf.select(cfg, f"{node}._target_", default=None,
                                  throw_on_resolution_failure=False)
        own = (str(target).startswith("distillkit.")
               or targets.distillkit_object(_target_of(cfg, node, "task")))
        if own and not covered(path, f"{node}._args_", opted.keys):
            raise _refuse(path, source, "distillkit's factories take keyword arguments; "
                          "positional ones could reach a parameter by position",
                          f"name the parameters as keys of {node}, or give {node}._args_=[...] "
                          "on the command line")
    elif path in ("hydra.job.name", "hydra.output_subdir") and path not in opted.keys:
        value = OmegaConf.select(cfg, path, default=None, throw_on_resolution_failure=False)
        inside = value is None or (
            _PLAIN_NAME.match(str(value)) is not None and ".." not in PurePath(str(value)).parts)
        if not inside:
            raise _refuse(path, source, f"{value!r} would write outside the run directory",
                          f"give {path}=... on the command line")


def check_files(files: Sequence[tuple[str, DictConfig]], cfg: DictConfig,
                opted: OptIns) -> None:
    """Refuses a config file that sets what only the command line may set.

    Args:
        files: ``(description, content at its package)`` of every composed file that is not
            distillkit's, Hydra's or a plugin's own.
        cfg: the composed config.
        opted: the command line's opt-ins (its keys say what it sets).

    Raises:
        UnsafeConfigError: naming the key, the file, why, and how to give it on the command
            line.
    """
    for source, content in files:
        for path, _key, _value, _through in walk(content, resolve=False):
            _check_leaf(path, source, cfg, opted)


def check_overrides(overrides: Sequence[str], opted: OptIns) -> None:
    """Refuses the overrides a sweeper adds to a job (not from the command line) that set a
    key only the command line may set (a file's ``hydra.sweeper.params``).

    Raises:
        UnsafeConfigError: naming the override.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from distillkit.security.safety import override_path

    parser = OverridesParser.create()
    for text in overrides:
        try:
            path = override_path(parser.parse_override(text))
        except Exception:  # Hydra reports the bad override itself when it composes
            continue
        if path in opted.keys:
            continue
        if (sensitive(path) or "_args_" in path.split(".")
                or path.split(".")[-1] == REMOTE_CODE_KEY or path.startswith("hydra.callbacks")):
            raise UnsafeConfigError(
                f"the sweeper sets {text} in a job, but not from the command line (a config "
                f"file's hydra.sweeper.params?): only the command line may set {path}; "
                f"refused before the job ran. If you mean it, give {path}=... on the command "
                "line")
