"""What happens between Hydra composing a config and anything using it.

Hydra instantiates ``hydra.callbacks`` and the launcher, and creates the run directory, before
the task function runs. So the allow-list of :mod:`distillkit.safety` is checked where Hydra
composes: while :func:`guarded` is active, every config Hydra composes in this process (the
run's and each sweep job's) passes :func:`~distillkit.safety.check_config` first, with the
opt-ins of the command line. A refused config, or one that does not compose (unknown option,
typo'd key, wrong type, bad override syntax), ends the command with one ``error:`` line that
names the culprit and a fix, and exit code 2, before anything is created or written.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.errors import HydraException, MissingConfigException
from omegaconf.errors import OmegaConfBaseException, ValidationError

from distillkit.errors import DistillkitError
from distillkit.safety import check_config, opt_ins

log = logging.getLogger("distillkit")
EXIT_CODE = 2
SHOW_KEYS = "python -m distillkit --cfg job lists every key"


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


@contextmanager
def guarded(argv: Sequence[str]) -> Iterator[None]:
    """Checks every config Hydra composes while active (see the module docstring).

    Args:
        argv: the command line: its overrides are the only place a config opt-in counts.
    """
    try:
        opted = opt_ins(argv)
    except DistillkitError as exc:
        _fail(exc)
    original = ConfigLoaderImpl.load_configuration

    def load_configuration(self: ConfigLoaderImpl, *args: Any, **kwargs: Any) -> Any:
        try:
            cfg = original(self, *args, **kwargs)
            check_config(cfg, opted)
        except (HydraException, OmegaConfBaseException, DistillkitError) as exc:
            _fail(exc)
        return cfg

    ConfigLoaderImpl.load_configuration = load_configuration
    try:
        yield
    finally:
        ConfigLoaderImpl.load_configuration = original
