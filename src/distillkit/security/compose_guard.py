"""What happens between Hydra composing a config and anything using it.

Hydra instantiates ``hydra.callbacks`` and the launcher, configures logging, applies
``hydra.job.env_set`` and creates the run directory before the task function runs. So the
checks are made where Hydra composes: while :func:`guarded` is active, every config Hydra
composes in this process (the run's, the sweep's and each sweep job's) passes
:func:`check_composed` first: what its untrusted files set (:mod:`distillkit.security.shared_files`;
the files are recorded as Hydra loads them, with their source), what a sweeper added that the
command line did not, and what its targets are (:mod:`distillkit.security.safety`), with the opt-ins of
the command line. :func:`install_sweep_guard` does the same for sweep jobs composed in other
processes (joblib workers, SLURM tasks). A refused config, or one that does not compose
(unknown option, typo'd key, wrong type, bad override syntax), ends the command with one
``error:`` line that names the culprit and a fix, and exit code 2, before anything is created
or written.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from distillkit.errors import DistillkitError
from distillkit.security.safety import OptIns, check_config, opt_ins
from distillkit.security.shared_files import check_files, check_overrides

log = logging.getLogger("distillkit")
EXIT_CODE = 2
SHOW_KEYS = "python -m distillkit --cfg job lists every key"
# distillkit's own conf/ (trusted) and the command line's opt-ins of this process
_STATE: dict[str, Any] = {}


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0].rstrip(".")


def _unknown_key(head: str, cause: OmegaConfBaseException) -> str:
    key, full_key = str(cause.key), str(cause.full_key)
    parent = cause.parent_node
    keys = [str(k) for k in parent.keys()] if parent is not None else []
    where = full_key.rsplit(".", 1)[0] if "." in full_key else "the config"
    close = difflib.get_close_matches(key, keys, n=1)
    if close:
        fix = f"did you mean {full_key[: -len(key)]}{close[0]}? ({SHOW_KEYS})"
    else:
        fix = f"{where} has: {', '.join(keys[:15])}{', ...' if len(keys) > 15 else ''}"
        if cause.object_type_str in (None, "dict"):  # a plain node: a new key can be added
            fix += f"; to add a new key, write +{full_key}=..."
    return f"{head}: key '{key}' is not in {where}; {fix}"


def describe(exc: BaseException) -> str:
    """One line for a config that did not compose or was refused: the culprit and a fix."""
    if isinstance(exc, DistillkitError):
        return str(exc)
    head = _first_line(str(exc))
    if isinstance(exc, MissingConfigException) and exc.options:
        group = str(exc.missing_cfg_file).rsplit("/", 1)[0]
        return (f"{head}; available options in '{group}': {', '.join(exc.options)}. Pick one, "
                f"or add {exc.missing_cfg_file}.yaml to a --config-dir")
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        if isinstance(cause, ValidationError):
            return (f"{head}: {_first_line(cause.msg)}; give {cause.full_key} a value of that "
                    f"type ({SHOW_KEYS} and their values)")
        if isinstance(cause, KeyError | AttributeError):
            return _unknown_key(head, cause)
        return f"{head}: {_first_line(cause.msg)}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines[:3])


def _fail(exc: BaseException) -> None:
    log.error("error: %s", describe(exc))
    raise SystemExit(EXIT_CODE) from None


def _trusted(provider: str, path: str) -> bool:
    """Whether a config source is distillkit's own conf/, Hydra's or a plugin's (installed
    code), as opposed to a --config-dir, a hydra.searchpath entry or a --config-path."""
    if provider == "main":
        return path.startswith("file://") and Path(path[7:]).resolve() == _STATE["conf"]
    return provider != "command-line" and not provider.startswith("hydra.searchpath")


@contextmanager
def _recording() -> Iterator[list[tuple[str, DictConfig]]]:
    """Records every untrusted file Hydra composes while active: (description, content)."""
    files: list[tuple[str, DictConfig]] = []
    original = ConfigLoaderImpl._load_single_config

    def load_single(self: ConfigLoaderImpl, default: Any, repo: Any) -> Any:
        result = original(self, default, repo)
        if not _trusted(str(result.provider), str(result.path)):
            files.append((f"{default.config_path}.yaml in {result.path}", result.config))
        return result

    ConfigLoaderImpl._load_single_config = load_single
    try:
        yield files
    finally:
        ConfigLoaderImpl._load_single_config = original


def check_composed(cfg: DictConfig, files: Sequence[tuple[str, DictConfig]],
                   opted: OptIns, overrides: Sequence[str] = ()) -> None:
    """Every check of a composed config: what its files set (:mod:`distillkit.security.shared_files`),
    what a sweeper added, and what its targets are (:func:`~distillkit.security.safety.check_config`).

    Raises:
        UnsafeConfigError: for the first refusal.
    """
    check_files(files, cfg, opted)
    check_overrides(overrides, opted)
    check_config(cfg, opted)


def current_opt_ins() -> OptIns:
    """The opt-ins of the command line being run (from the guard or the sweep's master)."""
    return _STATE.get("opted") or OptIns()


@contextmanager
def guarded(argv: Sequence[str], conf_dir: str) -> Iterator[None]:
    """Checks every config Hydra composes while active (see the module docstring).

    Args:
        argv: the command line: its overrides are the only place a config opt-in counts.
        conf_dir: distillkit's own config directory (the trusted one).
    """
    try:
        opted = opt_ins(argv)
    except DistillkitError as exc:
        _fail(exc)
    _STATE.update(conf=Path(conf_dir).resolve(), opted=opted)
    original = ConfigLoaderImpl.load_configuration

    def load_configuration(self: ConfigLoaderImpl, config_name: Any, overrides: list[str],
                           *args: Any, **kwargs: Any) -> Any:
        try:
            with _recording() as files:
                cfg = original(self, config_name, overrides, *args, **kwargs)
            check_composed(cfg, files, opted, overrides)
        except (HydraException, OmegaConfBaseException, DistillkitError) as exc:
            _fail(exc)
        return cfg

    ConfigLoaderImpl.load_configuration = load_configuration
    try:
        yield
    finally:
        ConfigLoaderImpl.load_configuration = original


def install_sweep_guard(conf_dir: str) -> None:
    """Checks every sweep job's config wherever it is composed (idempotent).

    A launcher composes a job's config with ``load_sweep_config``, in this process (basic
    launcher) or in a worker or SLURM task (joblib, submitit) that imports distillkit.app.cli
    when it unpickles the task function, before it composes. The command line's opt-ins come
    from the sweep's master config (``hydra.overrides``, which a file may not set) and the
    environment. A refused job raises :class:`~distillkit.errors.UnsafeConfigError`.
    """
    if getattr(ConfigLoaderImpl.load_sweep_config, "_distillkit", False):
        return
    _STATE.setdefault("conf", Path(conf_dir).resolve())
    original = ConfigLoaderImpl.load_sweep_config

    def load_sweep_config(self: ConfigLoaderImpl, master_config: DictConfig,
                          sweep_overrides: list[str]) -> DictConfig:
        recorded = master_config.hydra.overrides
        # as typed: an override's value may hold an interpolation Hydra resolves per job
        # (hydra.sweep.subdir=${hydra.job.num}), which must not be resolved here
        opted = opt_ins([*OmegaConf.to_container(recorded.hydra, resolve=False),
                         *OmegaConf.to_container(recorded.task, resolve=False)])
        _STATE.setdefault("opted", opted)
        with _recording() as files:
            cfg = original(self, master_config, sweep_overrides)
        check_composed(cfg, files, opted, sweep_overrides)
        return cfg

    load_sweep_config._distillkit = True  # type: ignore[attr-defined]
    ConfigLoaderImpl.load_sweep_config = load_sweep_config
