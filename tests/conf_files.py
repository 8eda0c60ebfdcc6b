"""What an option file of conf/ sets, read with a YAML parser (not Hydra), for composition tests.

:func:`expected_values` walks the file's own ``defaults`` list (the options it pulls in or
overrides that have files under conf/; structured-config schemas have none) and merges their
bodies and then the file's own body, each at its package, into one plain nested dict rooted at
the global config. An ``override`` picks the group's one option: what an earlier entry set at
that package is dropped first. :func:`mismatches` lists where a composed config differs from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.conftest import CONF


def _body(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    data.pop("defaults", None)
    return data


def _join(package: str, sub: str) -> str:
    return ".".join(p for p in (package, sub) if p)


def _at(package: str, value: dict[str, Any]) -> dict[str, Any]:
    for key in reversed(package.split(".") if package else []):
        value = {key: value}
    return value


def merge(into: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Merges ``new`` into ``into`` (nested dicts key by key, anything else replaced)."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def _entries(path: Path, package: str) -> list[tuple[Path, str, bool] | None]:
    """The file's defaults as ``(option file, package, is an override)`` in order; None marks
    ``_self_``."""
    defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults") or []
    out: list[tuple[Path, str, bool] | None] = []
    for entry in defaults:
        if entry == "_self_":
            out.append(None)
        elif isinstance(entry, str):  # a config of the same group (or a schema: no file)
            out.append((path.parent / f"{entry}.yaml", package, False))
        else:
            ((key, option),) = entry.items()
            group, _, sub = key.removeprefix("override ").strip().lstrip("/").partition("@")
            if option is None:
                continue
            if sub.startswith("_global_"):
                full = sub.removeprefix("_global_").lstrip(".")
            else:
                full = _join(package, sub or group.replace("/", "."))
            out.append((CONF / group / f"{option}.yaml", full, key.startswith("override ")))
    if None not in out:
        out.append(None)  # no _self_: the file's body comes after its defaults
    return out


def expected_values(path: Path, package: str) -> dict[str, Any]:
    """The values the option file at ``path`` (composed at ``package``; "" for global) sets,
    as a nested dict from the global root."""
    expected: dict[str, Any] = {}
    for entry in _entries(path, package):
        if entry is None:
            merge(expected, _at(package, _body(path)))
        elif entry[0].is_file():
            option, at, override = entry
            if override and at:  # the group's earlier option no longer applies
                *parents, last = at.split(".")
                node = expected
                for key in parents:
                    node = node.get(key) if isinstance(node, dict) else None
                if isinstance(node, dict):
                    node.pop(last, None)
            merge(expected, expected_values(option, at))
    return expected


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(actual, bool) or isinstance(expected, bool):
        return actual is expected
    if isinstance(expected, str) and isinstance(actual, int | float):
        try:  # YAML 1.1 reads 3e-4 as text, OmegaConf as a number
            return float(expected) == actual
        except ValueError:
            return False
    return type(actual) is type(expected) and actual == expected or (
        isinstance(actual, int | float) and isinstance(expected, int | float)
        and actual == expected)


def mismatches(actual: Any, expected: Any, where: str = "") -> list[str]:
    """Where ``actual`` (a plain container) lacks or differs from ``expected``'s values."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: {actual!r} is not a mapping"]
        return [m for key, value in expected.items()
                for m in (mismatches(actual[key], value, _join(where, str(key)))
                          if key in actual else [f"{_join(where, str(key))}: missing"])]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{where}: {actual!r} != {expected!r}"]
        return [m for i, (a, e) in enumerate(zip(actual, expected, strict=True))
                for m in mismatches(a, e, f"{where}[{i}]")]
    return [] if _same(actual, expected) else [f"{where}: {actual!r} != {expected!r}"]
