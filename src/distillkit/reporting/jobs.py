"""A sweep job as found on disk, and the override values a report sorts and splits by.

Shared by :mod:`distillkit.reporting.report` and :mod:`distillkit.reporting.plots`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Job:
    """One job of a sweep as found on disk.

    Attributes:
        name: the job's directory name (its overrides).
        status: ``ok`` (metrics.json), ``failed`` (error.json) or ``unfinished`` (neither:
            still running, or killed).
        overrides: ``{key: value}`` from ``.hydra/overrides.yaml`` (values as typed).
        values: the metric columns of :data:`METRICS` (finished jobs).
        error: the failed job's error line.
        stages: where the job's teacher and teacher targets came from.
        metric: the job's headline metric (``metrics.json`` ``metric``).
    """

    name: str
    status: str
    overrides: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    stages: dict[str, Any] = field(default_factory=dict)
    metric: str = "accuracy"


def number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def sort_key_values(values: list[str]) -> list[str]:
    """Distinct override values, numerically sorted when all are numbers."""
    distinct = list(dict.fromkeys(values))
    if all(number(v) is not None for v in distinct):
        return sorted(distinct, key=number)
    return sorted(distinct)


def split_keys(jobs: list[Job]) -> tuple[list[str], dict[str, str]]:
    """Keys whose value varies across jobs (in first-seen order) and the fixed ones."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    swept, fixed = [], {}
    for key in keys:
        values = {j.overrides.get(key) for j in jobs}
        if len(values) > 1:
            swept.append(key)
        else:
            fixed[key] = next(iter(values))
    return swept, fixed
