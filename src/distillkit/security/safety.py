"""Shared YAML is safe to run: what a composed config may make Python import and call.

Hydra's ``instantiate`` imports and calls whatever a ``_target_`` names, so an experiment file
from someone else is code. Before anything is built, fetched or written, every ``_target_`` of
the composed config (the ``hydra`` section included: callbacks, launcher, sweeper, sampler,
the Optuna sweeper's ``custom_search_space``) and every ``class`` / ``()`` factory of its
logging configs is resolved to the object it names and allowed only when that object is on
the allow-list of :mod:`distillkit.security.targets` (or opted in). A ``_target_`` written as, or
reached through, an interpolation (``${...}``) is refused: its object could change after the
check. A model's own code from the hub (``trust_remote_code: true``) runs only when asked for
on the command line, and the launcher's strings (which a SLURM launcher writes into a shell
script) may not hold line breaks.

Opting in is for the person running the command, never for a config file (a shared file could
opt itself in): ``allow_targets=[mypkg.]`` or ``<key>.trust_remote_code=true`` on the command
line, or ``DISTILLKIT_ALLOW_TARGETS=mypkg.,other.f`` in the environment. What a config *file*
may not set at all (``hydra.job.env_set``, logging, foreign callbacks, ``_args_``,
``allow_targets``) is checked by :mod:`distillkit.security.shared_files`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from omegaconf import DictConfig, ListConfig

from distillkit.errors import UnsafeConfigError
from distillkit.security import targets

ENV_ALLOW = "DISTILLKIT_ALLOW_TARGETS"
OPT_IN_KEY = "allow_targets"
REMOTE_CODE_KEY = "trust_remote_code"
LOGGING_KEYS = ("job_logging", "hydra_logging")
# Strings that end up in a launcher's shell script (submitit writes #SBATCH lines) or in paths.
NO_LINE_BREAKS = ("hydra.launcher.", "hydra.run.", "hydra.sweep.", "hydra.job.name",
                  "hydra.output_subdir")
_OFF = ("none", "false", "0", "no", "")


@dataclass(frozen=True)
class OptIns:
    """What the person running the command allowed beyond the defaults.

    Attributes:
        targets: extra ``_target_`` prefixes (``mypkg.``) or exact names.
        remote_code: config keys (``teacher.trust_remote_code``) set on the command line.
        keys: every config path the command line sets or selects a group option for
            (``loss.alpha``, ``hydra.job_logging`` for ``hydra/job_logging=...``).
    """

    targets: tuple[str, ...] = ()
    remote_code: frozenset[str] = frozenset()
    keys: frozenset[str] = frozenset()


def _split(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.strip("[]").split(",") if v.strip()]
    if isinstance(value, Iterable):
        return [str(v).strip() for v in value if str(v).strip()]
    raise UnsafeConfigError(f"{OPT_IN_KEY} must be a list of prefixes, e.g. "
                            f"{OPT_IN_KEY}=[mypkg.], got {value!r}")


def override_path(override: object) -> str:
    """The config path a parsed Hydra override sets (a group's package for a group option)."""
    package = override.package  # type: ignore[attr-defined]
    return package if package else override.key_or_group.replace("/", ".")  # type: ignore


def opt_ins(overrides: Sequence[str], environ: dict[str, str] | None = None) -> OptIns:
    """The opt-ins of a command line (Hydra overrides) and the environment.

    Args:
        overrides: the command line's overrides (``key=value``); flags are skipped.
        environ: the environment (default ``os.environ``).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    environ = os.environ if environ is None else environ
    found = _split(environ.get(ENV_ALLOW))
    remote: set[str] = set()
    keys: set[str] = set()
    parser = OverridesParser.create()
    for text in overrides:
        if "=" not in text or text.startswith("-"):
            continue  # a flag (--config-dir ...), not an override
        try:
            override = parser.parse_override(text)
        except Exception:  # Hydra reports the bad override itself when it composes
            continue
        key = override.key_or_group
        keys.add(override_path(override))
        if key == OPT_IN_KEY and not override.is_delete():
            found += _split(override.value())
        elif key.split(".")[-1] == REMOTE_CODE_KEY and not override.is_delete():
            remote.add(key)
    return OptIns(tuple(found), frozenset(remote), frozenset(keys))


def walk(node: DictConfig | ListConfig, path: str = "", resolve: bool = True,
         interpolated: bool = False) -> Iterator[tuple[str, str, object, bool]]:
    """Yields ``(path, key, value, interpolated)`` for every leaf.

    With ``resolve``, interpolations are resolved where possible (a resolver such as
    ``oc.create`` can build a whole ``_target_`` node); ``interpolated`` says whether the leaf
    is, or lies under, an interpolation.
    """
    if node._is_none() or node._is_missing():
        return
    for key in (node.keys() if isinstance(node, DictConfig) else range(len(node))):
        child = node._get_node(key)
        where = f"{path}.{key}" if path else str(key)
        value: object = child
        through = interpolated or child._is_interpolation()
        if child._is_interpolation() and resolve:
            try:
                value = node[key]
            except Exception:  # ${hydra:...} and the like resolve only inside the run
                value = child._value()
        if isinstance(value, DictConfig | ListConfig):
            yield from walk(value, where, resolve, through)
        else:
            raw = value._value() if hasattr(value, "_value") else value
            yield where, str(key), raw, through


def _context(path: str, key: str) -> str | None:
    """Which allow-list a leaf is checked against (None: not a target)."""
    parts = path.split(".")
    if parts[0] == "hydra" and len(parts) > 1 and parts[1] in LOGGING_KEYS:
        return "logging" if key in ("class", "()") else None
    if key != "_target_" and path != "hydra.sweeper.custom_search_space":
        return None
    if path.startswith("hydra.callbacks."):
        return "callback"
    return "hydra" if parts[0] == "hydra" else "task"


def _opted(target: str, opted: OptIns) -> str | None:
    """The opt-in that covers ``target`` (an exact name or a prefix ending in ``.``)."""
    for allow in opted.targets:
        if target == allow or (allow.endswith(".") and target.startswith(allow)):
            return allow
    return None


def check_target(path: str, value: object, context: str, opted: OptIns = OptIns(),
                 interpolated: bool = False) -> object:
    """Resolves one target and refuses it unless its object is allowed; returns the object.

    Raises:
        UnsafeConfigError: naming the key, its value, why, and the opt-in where one exists.
    """
    target = str(value)
    head = f"{path}={target} is not allowed"
    if interpolated or "${" in target:
        raise UnsafeConfigError(
            f"{head}: a {path.rsplit('.', 1)[-1]} must be written out, not built by an "
            "interpolation (${...}), whose value can change after this check; write the "
            "name itself")
    if not isinstance(value, str):
        raise UnsafeConfigError(f"{head}: it must be a dotted name (a string)")
    allow = _opted(target, opted)
    names = targets.CONTEXTS[context]
    try:
        obj = targets.locate(target, targets.roots([*names, *([target] if allow else [])]))
    except targets.Refusal as why:
        obj, reason = None, str(why)
    else:
        if allow is not None and (allow == target or not targets.denied(obj)):
            return obj
        if targets.listed(obj, context):
            return obj
        reason = ("it loads code, reads or writes pickles, or runs commands"
                  if targets.denied(obj) else "it is not on the allow-list")
    if "walks through" in reason or "dunder" in reason:
        raise UnsafeConfigError(f"{head}: {reason}; refused before anything ran")
    where = {"task": "distillkit's factories and a short list of torch/transformers objects",
             "hydra": "Hydra's launchers, sweepers and samplers",
             "callback": "distillkit's own callbacks",
             "logging": "the standard logging handlers and formatters"}[context]
    raise UnsafeConfigError(
        f"{head}: {reason} ({where}; distillkit.security.targets has the list); refused before "
        f"anything ran. If you trust it, opt in on the command line "
        f"({OPT_IN_KEY}=[{target}]) or with {ENV_ALLOW}={target} (an {OPT_IN_KEY} set in a "
        "config file does not count)")


def check_config(cfg: DictConfig, opted: OptIns = OptIns()) -> None:
    """Refuses a config that would import or run code outside the allow-list.

    Args:
        cfg: the composed config (with or without its ``hydra`` section).
        opted: the command line's and environment's opt-ins (see :func:`opt_ins`).

    Raises:
        UnsafeConfigError: naming the key, its value and how to opt in.
    """
    for path, key, value, interpolated in walk(cfg):
        context = _context(path, key)
        if context is not None and value is not None:
            check_target(path, value, context, opted, interpolated)
        elif key == REMOTE_CODE_KEY and str(value).lower() not in _OFF:
            if path not in opted.remote_code:
                raise UnsafeConfigError(
                    f"{path}={value} comes from a config file: a model's own code from the hub "
                    f"runs only when you ask for it on the command line ({path}=true); "
                    "otherwise set it to false")
        elif (isinstance(value, str) and path.startswith(NO_LINE_BREAKS)
              and any(c in value for c in "\n\r\0")):
            raise UnsafeConfigError(
                f"{path}={value!r} holds a line break: the launcher writes it into a shell "
                "script, where a line break starts a command; refused before anything ran. "
                "Write it on one line")
