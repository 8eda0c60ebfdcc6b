"""Sweep summaries from job directories: csv/md/png written, values match the jobs."""

from __future__ import annotations

import csv
import json
import math

import matplotlib.image
import pytest

from distillkit.reporting import plots as report_plot
from distillkit.reporting import report
from distillkit.reporting.report import collect, main, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(acc: float, temperature: float) -> dict:
    return {
        "teacher": {"accuracy": 0.9, "loss": 0.3},
        "student": {"accuracy": acc, "loss": 1.0 - acc},
        "retention": acc / 0.9,
        "train": {"steps": 10, "seconds": 1.5, "last_losses": {"total": temperature / 10}},
        "objective": {"name": "final_accuracy", "value": acc},
        "stages": {"teacher": "cache", "teacher_logits": {"train": "cache"}},
    }


def _job(sweep, overrides: dict, metrics: dict | None = None, error: str | None = None):
    name = ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {k}={v}\n" for k, v in overrides.items()))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if error is not None:
        (job / "error.json").write_text(json.dumps({"error": error}))
    return job


@pytest.fixture
def grid_sweep(tmp_path):
    """A 3 x 3 temperature x alpha sweep: 7 finished, 1 failed, 1 still running."""
    sweep = tmp_path / "sweep"
    accs = {}
    for t in (1, 4, 8):
        for a in (0.2, 0.5, 0.8):
            overrides = {"teacher": "tiny", "loss.temperature": t, "loss.alpha": a}
            if (t, a) == (8, 0.8):
                _job(sweep, overrides, error="loss.alpha must be in [0, 1], got 1.5")
            elif (t, a) == (8, 0.5):
                _job(sweep, overrides)  # running: only .hydra/ so far
            else:
                accs[(t, a)] = round(0.5 + 0.01 * t + 0.1 * a, 4)
                _job(sweep, overrides, _metrics(accs[(t, a)], t))
    (sweep / "multirun.yaml").write_text("hydra: {}\n")  # files next to the jobs are ignored
    return sweep, accs


def test_summary_files_match_the_jobs(grid_sweep):
    sweep, accs = grid_sweep
    summary = write_report(sweep)
    assert summary["jobs"] == 9 and summary["ok"] == 7 and summary["unfinished"] == 1
    assert [j.error for j in summary["failed"]] == ["loss.alpha must be in [0, 1], got 1.5"]

    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert len(rows) == 9
    ok = [r for r in rows if r["status"] == "ok"]
    assert [r["status"] for r in rows[7:]] == ["unfinished", "failed"]  # after the finished
    by_key = {(float(r["loss.temperature"]), float(r["loss.alpha"])): r for r in ok}
    assert set(by_key) == set(accs)
    for key, acc in accs.items():
        row = by_key[key]
        assert float(row["student_accuracy"]) == acc
        assert float(row["retention"]) == pytest.approx(acc / 0.9)
        assert float(row["train_loss"]) == pytest.approx(key[0] / 10)
        assert row["teacher"] == "tiny" and row["teacher_source"] == "cache"
    objectives = [float(r["objective"]) for r in ok]
    assert objectives == sorted(objectives, reverse=True)  # best first
    assert rows[-1]["error"] == "loss.alpha must be in [0, 1], got 1.5"

    md = (sweep / "summary.md").read_text()
    assert "9 job(s): 7 finished, 1 failed, 1 unfinished" in md
    assert "Same in every job: `teacher=tiny`" in md
    assert "Teacher: reused from the cache in 7 job(s)" in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| # | loss.temperature | loss.alpha | student acc")
    best = max(accs, key=accs.get)
    assert table[1].startswith(f"| 1 | {best[0]} | {best[1]} | {accs[best]:.4f} |")
    assert "## Failed jobs" in md and "got 1.5" in md.split("## Failed jobs")[1]

    png = sweep / "summary.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    height, width, _ = matplotlib.image.imread(png).shape
    assert height > 200 and width > 200


@pytest.fixture
def drawn(monkeypatch):
    """The figures plot_summary draws, kept as they were when it closed them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    close = plt.close

    def keep(fig=None):
        figures.append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    return figures


def _cells(ax):
    """``{(x, y): text}`` of the texts drawn into the axes' cells."""
    return {tuple(round(v) for v in t.get_position()): t.get_text() for t in ax.texts}


def test_grid_gets_a_heatmap_with_the_mean_per_cell(tmp_path, drawn):
    """temperature x alpha x seed: each cell is the mean over its seeds (a failed seed left out,
    a cell whose jobs all failed marked), worked out by hand below."""
    sweep = tmp_path / "sweep"
    accs = {(1, 0.2, 1): 0.50, (1, 0.2, 2): 0.60, (1, 0.5, 1): 0.70, (1, 0.5, 2): 0.80,
            (4, 0.2, 1): 0.62, (4, 0.2, 2): 0.66, (4, 0.5, 1): 0.90,
            (8, 0.2, 1): 0.40, (8, 0.2, 2): 0.44}
    for t in (1, 4, 8):
        for a in (0.2, 0.5):
            for seed in (1, 2):
                overrides = {"loss.temperature": t, "loss.alpha": a, "trainer.seed": seed}
                if (t, a, seed) in accs:
                    _job(sweep, overrides, _metrics(accs[(t, a, seed)], t))
                else:
                    _job(sweep, overrides, error="loss.alpha must be in [0, 1], got 1.5")
    write_report(sweep)
    (fig,) = drawn
    ax = fig.axes[0]
    (image,) = ax.images
    grid = image.get_array()  # rows: alpha 0.2, 0.5; columns: temperature 1, 4, 8
    assert grid.shape == (2, 3)
    expected = [[0.55, 0.64, 0.42], [0.75, 0.90, math.nan]]
    for row, want_row in zip(grid.tolist(), expected, strict=True):
        for got, want in zip(row, want_row, strict=True):
            assert (math.isnan(want) and (got is None or math.isnan(got))) or \
                got == pytest.approx(want), (grid, expected)
    assert _cells(ax) == {(0, 0): "0.550", (1, 0): "0.640", (2, 0): "0.420",
                          (0, 1): "0.750", (1, 1): "0.900", (2, 1): "failed"}
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("loss.temperature", "loss.alpha")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "4", "8"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.2", "0.5"]
    assert ax.get_title().startswith("student accuracy (mean over trainer.seed)")


def test_random_search_gets_a_scatter_plot(tmp_path, monkeypatch):
    sweep = tmp_path / "optuna"
    for i in range(5):
        t, a = 1 + 1.7 * i, 0.1 + 0.13 * i
        _job(sweep, {"loss.temperature": t, "loss.alpha": a, "trainer.optimizer.lr": 1e-4 * i},
             _metrics(0.5 + 0.01 * i, t))
    calls = []
    monkeypatch.setattr(report_plot, "_scatter", lambda *args: calls.append(args[3:]))
    write_report(sweep)
    assert calls == [("loss.temperature", "loss.alpha")]
    assert "| 1 | 7.8 | 0.62 | 0.0004 |" in (sweep / "summary.md").read_text()


@pytest.mark.parametrize(("jobs", "kind", "xs", "heights", "xlabel"), [
    # one categorical key: a bar per value, sorted by name
    ([({"loss": "kl"}, 0.8), ({"loss": "kd"}, 0.65)], "bar", ["kd", "kl"], [0.65, 0.8], "loss"),
    # one numeric key: a line over the values sorted as numbers (2 before 10)
    ([({"trainer.seed": 10}, 0.8), ({"trainer.seed": 2}, 0.65)], "line", [2.0, 10.0],
     [0.65, 0.8], "trainer.seed"),
    # nothing swept: a bar per job, named by the job
    ([({"loss": "kd"}, 0.7)], "bar", ["loss=kd"], [0.7], ""),
], ids=["categorical", "numeric", "nothing-swept"])
def test_other_sweeps_get_a_plot(tmp_path, drawn, jobs, kind, xs, heights, xlabel):
    sweep = tmp_path / "s"
    for overrides, acc in jobs:
        _job(sweep, overrides, _metrics(acc, 1.0))
    write_report(sweep)
    assert (sweep / "summary.png").read_bytes()[:8] == PNG_MAGIC
    (fig,) = drawn
    ax = fig.axes[0]
    if kind == "bar":
        assert not ax.lines
        assert [p.get_height() for p in ax.patches] == pytest.approx(heights)
        assert [t.get_text() for t in ax.get_xticklabels()] == xs
    else:
        (line,) = ax.lines
        assert list(line.get_xdata()) == pytest.approx(xs)
        assert list(line.get_ydata()) == pytest.approx(heights)
    assert (ax.get_xlabel(), ax.get_ylabel()) == (xlabel, "student accuracy")


def test_report_command_rewrites_and_refuses_what_is_no_sweep(grid_sweep, tmp_path, capsys,
                                                               caplog):
    sweep, _ = grid_sweep
    assert main([str(sweep)]) == 0
    first = (sweep / "summary.csv").read_text()
    (sweep / "summary.csv").unlink()
    assert main([str(sweep)]) == 0
    assert (sweep / "summary.csv").read_text() == first
    assert "| # | loss.temperature" in capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "does not exist" in caplog.text and "no jobs in" in caplog.text


def test_unreadable_values_do_not_break_the_table(tmp_path):
    sweep = tmp_path / "s"
    metrics = _metrics(0.7, 1.0)
    metrics["objective"]["value"] = math.nan
    del metrics["train"]["last_losses"]["total"]
    _job(sweep, {"loss.alpha": 0.1}, metrics)
    _job(sweep, {"loss.alpha": 0.2}, _metrics(0.6, 1.0))
    jobs = report.ranked(collect(sweep))
    assert [j.overrides["loss.alpha"] for j in jobs] == ["0.2", "0.1"]  # NaN objective last
    summary = write_report(sweep)
    # both jobs kept in every file; a missing value is an empty cell, a NaN one reads "nan"
    table = [[c.strip() for c in line.strip().strip("|").split("|")]
             for line in summary["markdown"].splitlines() if line.startswith("| ")]
    header, rows = table[0], [dict(zip(table[0], r, strict=True)) for r in table[1:]]
    assert header == ["#", "loss.alpha", "student acc", "teacher acc", "retention",
                      "student loss", "train loss", "objective", "steps", "train s", "status"]
    assert [(r["#"], r["loss.alpha"], r["status"]) for r in rows] == [("1", "0.2", "ok"),
                                                                       ("2", "0.1", "ok")]
    assert (rows[0]["student acc"], rows[0]["train loss"], rows[0]["objective"]) == (
        "0.6000", "0.1000", "0.6000")
    assert (rows[1]["student acc"], rows[1]["train loss"], rows[1]["objective"]) == (
        "0.7000", "", "nan")
    assert rows[1]["steps"] == "10" and rows[1]["train s"] == "1.5000"
    assert (sweep / "summary.md").read_text() == summary["markdown"]
    csv_rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [(r["loss.alpha"], r["status"], r["train_loss"], r["objective"]) for r in csv_rows] \
        == [("0.2", "ok", "0.1", "0.6"), ("0.1", "ok", "", "nan")]
    assert (sweep / "summary.png").read_bytes()[:8] == PNG_MAGIC


def test_offline_teacher_jobs_summarise(tmp_path):
    """teacher=offline jobs have null teacher values and logits read from a file."""
    sweep = tmp_path / "s"
    for alpha in (0.2, 0.5):
        metrics = _metrics(0.6 + alpha / 10, 1.0)
        metrics["teacher"] = {"accuracy": None, "loss": None, "source": "offline logits file x"}
        metrics["retention"] = None
        metrics["stages"] = {"teacher": "offline", "teacher_logits": {"train": "file"}}
        _job(sweep, {"loss.alpha": alpha}, metrics)
    summary = write_report(sweep)
    assert ("Teacher: an offline logits file in 2 job(s). Teacher targets: read from a file in "
            "2 job(s).") in summary["markdown"]
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["teacher_accuracy"] for r in rows] == ["", ""]
