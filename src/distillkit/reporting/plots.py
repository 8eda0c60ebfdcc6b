"""``summary.png``: student accuracy over a sweep's swept keys.

* temperature and alpha both swept (or any two keys on a grid): a heatmap, one cell per value
  pair (the mean over any other swept key, named in the title), failed cells marked;
* two keys with many distinct values (an Optuna search): a scatter plot coloured by accuracy;
* one swept key: accuracy against its values (a line for numbers, bars for names);
* nothing swept: one bar per job.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from distillkit.reporting.jobs import number, sort_key_values, split_keys
from distillkit.runtime.io import write_file

log = logging.getLogger(__name__)

PREFERRED_AXES = ("loss.temperature", "loss.alpha")
MAX_GRID = 12  # at most this many values per heatmap axis (else a scatter plot)


def _axes_keys(swept: list[str]) -> list[str]:
    if all(k in swept for k in PREFERRED_AXES):
        return list(PREFERRED_AXES)
    return swept[:2]


def _accuracy(job: Any) -> float | None:
    """The job's student headline metric (accuracy for classification)."""
    value = job.values.get(f"student_{job.metric}")
    return value if isinstance(value, int | float) and math.isfinite(value) else None


def _heatmap(ax: Any, fig: Any, jobs: list, x_key: str, y_key: str) -> None:

    xs = sort_key_values([j.overrides.get(x_key, "") for j in jobs])
    ys = sort_key_values([j.overrides.get(y_key, "") for j in jobs])
    cells: dict[tuple[int, int], list[float]] = {}
    failed: set[tuple[int, int]] = set()
    for job in jobs:
        cell = (ys.index(job.overrides.get(y_key, "")), xs.index(job.overrides.get(x_key, "")))
        acc = _accuracy(job)
        if acc is not None:
            cells.setdefault(cell, []).append(acc)
        elif job.status == "failed":
            failed.add(cell)
    grid = [[math.nan] * len(xs) for _ in ys]
    for (r, c), values in cells.items():
        grid[r][c] = sum(values) / len(values)
    image = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
    fig.colorbar(image, ax=ax, label="student accuracy")
    ax.set_xticks(range(len(xs)), xs)
    ax.set_yticks(range(len(ys)), ys)
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    for r in range(len(ys)):
        for c in range(len(xs)):
            if not math.isnan(grid[r][c]):
                dark = image.norm(grid[r][c]) < 0.5  # viridis is dark at the low end
                ax.text(c, r, f"{grid[r][c]:.3f}", ha="center", va="center", fontsize=9,
                        color="white" if dark else "black")
            elif (r, c) in failed:
                ax.text(c, r, "failed", ha="center", va="center", color="red", fontsize=9)


def _scatter(ax: Any, fig: Any, jobs: list, x_key: str, y_key: str) -> None:

    def coord(job, key):
        value = number(job.overrides.get(key, ""))
        return math.nan if value is None else value

    done = [j for j in jobs if _accuracy(j) is not None]
    points = ax.scatter([coord(j, x_key) for j in done], [coord(j, y_key) for j in done],
                        c=[_accuracy(j) for j in done], cmap="viridis", s=60)
    if done:
        fig.colorbar(points, ax=ax, label="student accuracy")
    bad = [j for j in jobs if j.status == "failed"]
    if bad:
        ax.scatter([coord(j, x_key) for j in bad], [coord(j, y_key) for j in bad], marker="x",
                   color="red", label="failed")
        ax.legend()
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)


def _one_key(ax: Any, jobs: list, key: str) -> None:

    values = sort_key_values([j.overrides.get(key, "") for j in jobs])
    means = []
    for value in values:
        accs = [a for j in jobs if j.overrides.get(key, "") == value
                and (a := _accuracy(j)) is not None]
        means.append(sum(accs) / len(accs) if accs else math.nan)
    if all(number(v) is not None for v in values):
        ax.plot([number(v) for v in values], means, marker="o")
    else:
        ax.bar(range(len(values)), means)
        ax.set_xticks(range(len(values)), values, rotation=30, ha="right")
    ax.set_xlabel(key)
    ax.set_ylabel("student accuracy")


def _per_job(ax: Any, jobs: list) -> None:
    accs = [_accuracy(j) for j in jobs]
    ax.bar(range(len(jobs)), [math.nan if a is None else a for a in accs])
    ax.set_xticks(range(len(jobs)), [j.name[:30] for j in jobs], rotation=30, ha="right")
    ax.set_ylabel("student accuracy")


def plot_summary(jobs: list, path: Path, title: str = "") -> None:
    """Draws the sweep's student accuracy over its swept keys into ``path`` (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt


    swept, _ = split_keys(jobs)
    fig, ax = plt.subplots(figsize=(7, 5))
    try:
        axes = _axes_keys(swept)
        note = ""
        if len(axes) == 2:
            x_key, y_key = axes
            distinct = [len({j.overrides.get(k) for j in jobs}) for k in axes]
            pairs = len({(j.overrides.get(x_key), j.overrides.get(y_key)) for j in jobs})
            numeric = all(number(j.overrides.get(k, "")) is not None for j in jobs for k in axes)
            # a grid sweep fills its grid; a random search (Optuna) leaves it mostly empty
            if not numeric or (max(distinct) <= MAX_GRID
                               and pairs >= 0.5 * distinct[0] * distinct[1]):
                _heatmap(ax, fig, jobs, x_key, y_key)
                others = [k for k in swept if k not in axes]
                note = f" (mean over {', '.join(others)})" if others else ""
            else:
                _scatter(ax, fig, jobs, x_key, y_key)
        elif len(axes) == 1:
            _one_key(ax, jobs, axes[0])
        else:
            _per_job(ax, jobs)
        ax.set_title(f"student accuracy{note}\n{title}", fontsize=10)
        fig.tight_layout()
        write_file(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    finally:
        plt.close(fig)
