"""The teacher-feature cache of layer-wise losses (distillkit.teachers.features)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distillkit.engine.outputs import cached_teacher_outputs, plain_outputs
from distillkit.run import build, engine_settings
from distillkit.teachers.feature_store import FeatureSpec, FeatureStore, FeatureWriter
from tests.conftest import TINY_RUN, one_error_line, run_cli

TINY = ["teacher=tiny", "student=tiny", "data=tiny", "trainer.progress=false"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("DISTILLKIT_CACHE", str(path))
    return path


def _built(compose_cfg, overrides):
    cfg = compose_cfg([*TINY, *overrides])
    settings = engine_settings(cfg.trainer)
    return cfg, build(cfg, settings)


def _losses(built, batch):
    """The loss of one batch with the teacher's outputs from the batch (cache) and live."""
    loss, student, teacher = built["loss"], built["student"].model, built["teacher"].model
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    flags = {"output_hidden_states": True, "output_attentions": True}
    student.eval()
    teacher.eval()
    with torch.no_grad():
        s_out = plain_outputs(student(**inputs, **flags))
        live = plain_outputs(teacher(**inputs, **flags))
        cached = cached_teacher_outputs(batch, torch.device("cpu"))
        return loss(s_out, cached, batch), loss(s_out, live, batch)


# measured on these tiny models: fp32 exact; fp16 <= 4e-5, bf16 <= 1.3e-4, int8 <= 6.6e-4
# relative on the intermediate terms (attention maps lose most); the tolerances allow ~3-5x
@pytest.mark.parametrize(("dtype", "rel"), [("fp32", 1e-6), ("fp16", 2e-4), ("bf16", 1e-3),
                                            ("int8", 3e-3)])
def test_cached_features_give_the_live_loss(compose_cfg, cache, dtype, rel):
    cfg, built = _built(compose_cfg, ["loss=tinybert", f"trainer.feature_cache_dtype={dtype}"])
    assert built["cached_logits"], "a layer-wise loss must read its teacher from the cache"
    batch = next(iter(built["data"].loader("distil", 16, by_length=False)))
    assert set(batch["teacher_hidden_states"]) == {0, 1, 2}  # uniform mapping, 2-layer teacher
    assert set(batch["teacher_attentions"]) == {0, 1}
    cached, live = _losses(built, batch)
    assert set(cached.terms) == set(live.terms) == {"kd", "hidden_mse", "attention_mse"}
    for name in live.terms:
        assert cached.terms[name].item() == pytest.approx(live.terms[name].item(), rel=rel,
                                                          abs=1e-6), name


def test_padding_of_cached_features_matches_the_live_teacher(compose_cfg, cache):
    _, built = _built(compose_cfg, ["loss=tinybert", "trainer.feature_cache_dtype=fp32"])
    batch = next(iter(built["data"].loader("distil", 16, by_length=False)))
    teacher = built["teacher"].model.eval()
    with torch.no_grad():
        live = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"], output_hidden_states=True,
                       output_attentions=True)
    mask = batch["attention_mask"].bool()
    assert not mask.all(), "the batch must hold padding for this test to check it"
    for i, hidden in batch["teacher_hidden_states"].items():
        torch.testing.assert_close(hidden[mask], live.hidden_states[i][mask], atol=1e-5, rtol=0)
        assert hidden[~mask].abs().sum() == 0
    pairs = mask[:, None, :, None] & mask[:, None, None, :]
    for i, attn in batch["teacher_attentions"].items():
        expected = live.attentions[i].masked_fill(~pairs, 0)
        torch.testing.assert_close(attn, expected, atol=1e-6, rtol=0)


def test_store_round_trip_per_dtype(tmp_path):
    rng = np.random.default_rng(0)
    lengths = [3, 5, 1]
    hidden = [torch.from_numpy(rng.standard_normal((n, 2, 4)).astype(np.float32)) * 7
              for n in lengths]
    attn = [torch.softmax(torch.from_numpy(rng.standard_normal((1, 2, n, n))), -1).float()
            for n in lengths]
    # worst-case error of each storage format for these values: exact, half precision's 11-bit
    # and bfloat16's 8-bit significands (relative), int8 absmax/127/2 per row (absolute)
    bounds = {"fp32": (0.0, 0.0), "fp16": (2 ** -11, 0.0), "bf16": (2 ** -8, 0.0),
              "int8": (0.0, 1 / 254)}
    for dtype, (rel, row_abs) in bounds.items():
        spec = FeatureSpec((0, 3), (1,), dtype, 4, 2)
        writer = FeatureWriter(tmp_path / dtype, spec, lengths)
        for i in (2, 0, 1):  # any order, as the length-sorted pass writes them
            writer.write(i, hidden[i], attn[i])
        writer.publish({})
        store = FeatureStore(tmp_path / dtype)
        assert store.layers() == ((0, 3), (1,))
        for i in range(3):
            h, a = store.example(i)
            for got, want in ((h.float(), hidden[i].transpose(0, 1)), (a.float(), attn[i])):
                scale = want.abs().amax(-1, keepdim=True)
                err = (got - want).abs()
                assert (err <= rel * want.abs() + row_abs * scale + 1e-7).all(), dtype
        assert json.loads((tmp_path / dtype / "features.json").read_text())["dtype"] == dtype


def test_interrupted_pass_leaves_no_entry(tmp_path):
    spec = FeatureSpec((0,), (), "fp16", 4, 2)
    writer = FeatureWriter(tmp_path / "entry", spec, [2, 2])
    writer.write(0, torch.ones(2, 1, 4), None)
    writer.discard()
    assert not (tmp_path / "entry").exists() and not (tmp_path / "entry.tmp").exists()


def _entries(cache):
    return sorted(p.name for p in (cache / "teacher_features").iterdir()
                  if p.is_dir() and not p.name.endswith(".tmp"))


def test_key_changes_with_mapping_and_teacher_not_with_weights(compose_cfg, cache, caplog):
    _built(compose_cfg, ["loss=mmd"])
    first = _entries(cache)
    assert len(first) == 1
    # a sweep over temperature, alpha or term weights reads the same entry
    _, again = _built(compose_cfg, ["loss=mmd", "loss.alpha=0.9", "loss.temperature=2",
                                    "loss.intermediate.mmd.weight=3"])
    assert _entries(cache) == first
    assert again["logits_sources"] == {"train": "cache"}
    _built(compose_cfg, ["loss=mmd", "mapping=last"])
    assert len(_entries(cache)) == 2, "another layer mapping stores other layers"
    _built(compose_cfg, ["loss=mmd", "teacher.finetune_settings.seed=7"])
    assert len(_entries(cache)) == 3, "another teacher gives other features"
    _built(compose_cfg, ["loss=mmd", "trainer.feature_cache_dtype=int8"])
    assert len(_entries(cache)) == 4, "another storage dtype is another entry"


def test_over_budget_runs_the_teacher_live(compose_cfg, cache):
    _, built = _built(compose_cfg, ["loss=mmd", "trainer.feature_cache_max_gb=1e-6"])
    assert not built["cached_logits"] and built["logits_sources"] == "skipped"
    assert not (cache / "teacher_features").exists()
    batch = next(iter(built["data"].loader("distil", 8)))
    assert "teacher_hidden_states" not in batch and "teacher_logits" not in batch


def test_teacher_dropout_bypasses_the_cache(compose_cfg, cache):
    _, built = _built(compose_cfg, ["loss=tinybert", "trainer.teacher_dropout=true"])
    assert not built["cached_logits"] and built["logits_sources"] == "skipped"
    assert not (cache / "teacher_features").exists()


@pytest.mark.e2e
def test_cli_records_the_cache_and_a_second_run_reads_it(tmp_path):
    runs = []
    for name, alpha in (("one", 0.5), ("two", 0.8)):
        proc = run_cli([*TINY_RUN, "loss=mmd", f"loss.alpha={alpha}",
                        f"hydra.run.dir={tmp_path / name}"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append((json.loads((tmp_path / name / "metrics.json").read_text()),
                     proc.stdout + proc.stderr))
    (first, log1), (second, log2) = runs
    assert first["teacher_features"]["source"] == "computed"
    assert second["teacher_features"]["source"] == "cache"
    assert "teacher features computed in one teacher pass" in log1
    assert "teacher features read from the cache" in log2
    assert first["teacher_features"]["bytes_per_token"] > 0
    assert second["stages"]["teacher_targets"] == {"train": "cache"}


@pytest.mark.e2e
def test_cli_over_budget_says_so_in_one_line(tmp_path):
    proc = run_cli([*TINY_RUN, "loss=mmd", "trainer.feature_cache_max_gb=1e-6",
                    f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines()
             if "teacher features not cached" in ln]
    assert len(lines) == 1 and "trainer.feature_cache_max_gb=1e-06" in lines[0], lines
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["teacher_features"]["source"] == "live"


@pytest.mark.e2e
@pytest.mark.parametrize(("override", "phrases"), [
    ("trainer.feature_cache_dtype=fp8", ["trainer.feature_cache_dtype='fp8'", "int8"]),
    ("trainer.feature_cache_max_gb=-1", ["trainer.feature_cache_max_gb", ">= 0"]),
])
def test_bad_settings_are_one_error_line(tmp_path, override, phrases):
    proc = run_cli([*TINY_RUN, "loss=mmd", override, f"hydra.run.dir={tmp_path / 'run'}"],
                   tmp_path)
    one_error_line(proc.returncode, proc.stdout + proc.stderr, phrases)
    assert not (tmp_path / "dk-cache" / "teachers").exists(), "refused before the teacher stage"


@pytest.mark.e2e
def test_speed_bench_times_the_cached_case(tmp_path):
    """bench/speed.py's (g), (h) and (i) on tiny models: the feature-cache cases build and
    report their ratios, (i)'s as information only (the numbers themselves are the benchmark's
    business, not a test's)."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "speed.json"
    proc = subprocess.run(
        [sys.executable, str(root / "bench" / "speed.py"), "--cases", "g,h,i", "--steps", "1",
         "--warmup", "0", "--json", str(out)], cwd=tmp_path, capture_output=True, text=True,
        timeout=600, env={**os.environ, "DISTILLKIT_CACHE": str(tmp_path / "c")},
        check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [c["case"] for c in result["cases"]] == ["g", "h", "i"]
    assert result["ratios"]["g_over_h_step_time"]["value"] > 0
    for key in ("i_over_h_step_time", "g_over_i_step_time"):
        assert result["ratios"][key]["value"] > 0
        assert result["ratios"][key]["met"] is None, "information, not a target"
    assert "(g)/(i) step time: " in proc.stdout and "information, no target" in proc.stdout
    assert result["builds"][0]["teacher_features"]["source"] == "computed"


@pytest.mark.e2e
def test_parallel_sweep_over_weights_makes_one_teacher_pass(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY_RUN,
                    "trainer.max_steps=2", "export_student=false", "loss=mmd",
                    "loss.alpha=0.2,0.8", f"hydra.sweep.dir={sweep}"], tmp_path, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    records = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert sorted(r["teacher_features"]["source"] for r in records) == ["cache", "computed"]
    assert len(_entries(tmp_path / "dk-cache")) == 1
