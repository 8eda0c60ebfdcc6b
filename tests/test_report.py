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


def test_grid_gets_a_heatmap_with_the_mean_per_cell(grid_sweep, monkeypatch):
    sweep, accs = grid_sweep
    drawn = {}

    def fake_heatmap(ax, fig, jobs, x_key, y_key):
        drawn["heatmap"] = (x_key, y_key, len(jobs))

    monkeypatch.setattr(report_plot, "_heatmap", fake_heatmap)
    write_report(sweep)
    assert drawn == {"heatmap": ("loss.temperature", "loss.alpha", 9)}


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


@pytest.mark.parametrize("overrides", [
    [{"loss": "kd"}, {"loss": "kl"}],                         # one categorical key: bars
    [{"trainer.seed": 1}, {"trainer.seed": 2}],               # one numeric key: a line
    [{"loss": "kd"}],                                          # nothing swept: a bar per job
])
def test_other_sweeps_get_a_plot(tmp_path, overrides):
    sweep = tmp_path / "s"
    for i, o in enumerate(overrides):
        _job(sweep, o, _metrics(0.6 + 0.1 * i, 1.0))
    write_report(sweep)
    assert (sweep / "summary.png").read_bytes()[:8] == PNG_MAGIC


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
    write_report(sweep)


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
