"""Exceptions that end a run with one clear, user-facing message.

Every error a user can fix (bad config value, missing file, vocab mismatch, ...) is raised as a
:class:`DistillkitError` subclass whose message names the culprit and the fix. The CLI turns them
into a single ``error:`` line and a non-zero exit code instead of a traceback.
"""

import dataclasses


class DistillkitError(RuntimeError):
    """Base class for errors the user can fix. ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class ConfigError(DistillkitError):
    """A configuration value is invalid (wrong range, unknown choice, inconsistent keys)."""


class DataError(DistillkitError):
    """The data cannot be read or does not match the config (missing file/column, bad label)."""


class ModelError(DistillkitError):
    """Teacher and student cannot work together (vocab/tokenizer or label-count mismatch)."""


class TrainingError(DistillkitError):
    """Training cannot go on (non-finite loss, ...)."""


class OutputError(DistillkitError):
    """Run output cannot be written (no space left on the device, quota exceeded)."""


class UnsafeConfigError(ConfigError):
    """The config would run code that is not allowed (``_target_`` outside the allow-list,
    remote model code) without the user opting in on the command line."""


def known_keys(schema: type, values: dict | None, section: str) -> dict:
    """``values`` as a dict, once every key is a field of the dataclass ``schema``.

    Raises:
        ConfigError: naming the unknown keys, the config ``section`` and the valid keys.
    """
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(schema)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {section}; valid keys: "
                          f"{', '.join(sorted(known))}")
    return values
