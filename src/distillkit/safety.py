"""Shared YAML is safe to run: what a config may make Python import and call.

Hydra's ``instantiate`` imports and calls whatever a ``_target_`` names, so an experiment file
from someone else is code. Before anything is built, fetched or written, every ``_target_`` of
the composed config (the ``hydra`` section included: callbacks, launcher, sweeper) is checked
against an allow-list of package prefixes, and so are the ``class`` / ``()`` factories of the
logging configs, which Python's ``logging.config`` calls the same way. A model's own code from
the hub (``trust_remote_code: true``) runs only when asked for on the command line.

Opting in is for the person running the command, never for a config file (a shared file could
opt itself in): ``allow_targets=[mypkg.]`` or ``<key>.trust_remote_code=true`` on the command
line, or ``DISTILLKIT_ALLOW_TARGETS=mypkg.,other.`` in the environment. An ``allow_targets`` set
inside a config file is ignored.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from omegaconf import DictConfig, ListConfig

from distillkit.errors import UnsafeConfigError

ALLOWED = ("distillkit.", "transformers.", "torch.", "datasets.")
# Hydra's own plugins in the hydra section (launcher, sweeper, its sampler, callbacks).
HYDRA_ALLOWED = ("hydra._internal.core_plugins.", "hydra.experimental.callbacks.",
                 "hydra_plugins.", "optuna.samplers.")
# Factories of hydra.job_logging / hydra.hydra_logging (handlers, formatters, filters).
LOGGING_ALLOWED = ("logging.StreamHandler", "logging.FileHandler", "logging.NullHandler",
                   "logging.Formatter", "logging.Filter", "logging.handlers.", "colorlog.")
LOGGING_KEYS = ("job_logging", "hydra_logging")
# Inside the allowed packages: entry points that load and run code or pickles.
DENIED = ("torch.hub", "torch.load", "torch.jit.load", "torch.package", "torch.ops",
          "torch.utils.cpp_extension", "transformers.dynamic_module_utils")
ENV_ALLOW = "DISTILLKIT_ALLOW_TARGETS"
OPT_IN_KEY = "allow_targets"
REMOTE_CODE_KEY = "trust_remote_code"
_OFF = ("none", "false", "0", "no", "")


@dataclass(frozen=True)
class OptIns:
    """What the person running the command allowed beyond the defaults.

    Attributes:
        targets: extra ``_target_`` prefixes (``mypkg.``) or exact names.
        remote_code: config keys (``teacher.trust_remote_code``) set on the command line.
    """

    targets: tuple[str, ...] = ()
    remote_code: frozenset[str] = frozenset()


def _split(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, Iterable):
        return [str(v).strip() for v in value if str(v).strip()]
    raise UnsafeConfigError(f"{OPT_IN_KEY} must be a list of prefixes, e.g. "
                            f"{OPT_IN_KEY}=[mypkg.], got {value!r}")


def opt_ins(overrides: Sequence[str], environ: dict[str, str] | None = None) -> OptIns:
    """The opt-ins of a command line (Hydra overrides) and the environment.

    Args:
        overrides: the command line's overrides (``key=value``).
        environ: the environment (default ``os.environ``).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    environ = os.environ if environ is None else environ
    targets = _split(environ.get(ENV_ALLOW))
    remote: set[str] = set()
    parser = OverridesParser.create()
    for text in overrides:
        if "=" not in text or text.startswith("-"):
            continue  # a flag (--config-dir ...), not an override
        try:
            override = parser.parse_override(text)
        except Exception:  # Hydra reports the bad override itself when it composes
            continue
        key = override.key_or_group
        if key == OPT_IN_KEY and not override.is_delete():
            targets += _split(override.value())
        elif key.split(".")[-1] == REMOTE_CODE_KEY and not override.is_delete():
            remote.add(key)
    return OptIns(tuple(targets), frozenset(remote))


def _walk(node: DictConfig | ListConfig, path: str) -> Iterator[tuple[str, str, object]]:
    """Yields ``(path, key, value)`` for every leaf, resolving interpolations where possible
    (a resolver such as ``oc.create`` can build a whole ``_target_`` node)."""
    if node._is_none() or node._is_missing():
        return
    for key in (node.keys() if isinstance(node, DictConfig) else range(len(node))):
        child = node._get_node(key)
        where = f"{path}.{key}" if path else str(key)
        value: object = child
        if child._is_interpolation():
            try:
                value = node[key]
            except Exception:  # ${hydra:...} and the like resolve only inside the run
                value = child._value()
        if isinstance(value, DictConfig | ListConfig):
            yield from _walk(value, where)
        else:
            yield where, str(key), getattr(value, "_value", lambda v=value: v)()


def _denied(target: str) -> bool:
    return any(target == d or target.startswith(d + ".") for d in DENIED)


def _allowed(target: str, prefixes: Sequence[str]) -> bool:
    if _denied(target):
        return target in prefixes  # only an opt-in of the exact name allows these
    return any(target == p or (p.endswith(".") and target.startswith(p)) for p in prefixes)


def check_config(cfg: DictConfig, opted: OptIns = OptIns()) -> None:
    """Refuses a config that would import or run code outside the allow-list.

    Args:
        cfg: the composed config (with or without its ``hydra`` section).
        opted: the command line's and environment's opt-ins (see :func:`opt_ins`).

    Raises:
        UnsafeConfigError: naming the key, its value and how to opt in.
    """
    for path, key, value in _walk(cfg, ""):
        in_hydra = path.startswith("hydra.")
        logging_factory = (in_hydra and key in ("class", "()")
                           and path.split(".")[1] in LOGGING_KEYS)
        if key == "_target_" or logging_factory:
            target = str(value)
            prefixes = [*ALLOWED, *opted.targets]
            if logging_factory:
                prefixes += LOGGING_ALLOWED
            elif in_hydra:
                prefixes += HYDRA_ALLOWED
            if not _allowed(target, prefixes):
                why = ("it loads code or pickles, which is refused even inside the allowed "
                       "packages" if _denied(target) else
                       f"a config may only name code under {', '.join(ALLOWED)}")
                allow = target if _denied(target) else target.split(".")[0] + "."
                raise UnsafeConfigError(
                    f"{path}={target} is not allowed: {why}; refused before anything ran. If "
                    f"you trust it, opt in on the command line ({OPT_IN_KEY}=[{allow}]) or "
                    f"with {ENV_ALLOW}={allow} (an {OPT_IN_KEY} set in a config file does not "
                    "count)")
        elif key == REMOTE_CODE_KEY and str(value).lower() not in _OFF:
            if path not in opted.remote_code:
                raise UnsafeConfigError(
                    f"{path}={value} comes from a config file: a model's own code from the hub "
                    f"runs only when you ask for it on the command line ({path}=true); "
                    "otherwise set it to false")
