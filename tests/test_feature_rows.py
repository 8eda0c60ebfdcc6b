"""Batches built from cached teacher features (distillkit.data.feature_rows.FeatureCollator)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from distillkit.data.feature_rows import HIDDEN, ROW, FeatureCollator
from distillkit.teachers.feature_store import FeatureSpec, FeatureStore, FeatureWriter

WIDTH = 3


def _store(path, lengths, seed, attentions=()):
    """A published entry of hidden layers (0, 2) (and attention layers ``attentions``) with
    random values; returns the store and the written values per example."""
    rng = np.random.default_rng(seed)
    spec = FeatureSpec((0, 2), tuple(attentions), "fp32", WIDTH, 2)
    writer = FeatureWriter(path, spec, lengths)
    hidden, attn = [], []
    for i, n in enumerate(lengths):
        h = torch.from_numpy(rng.standard_normal((n, 2, WIDTH)).astype(np.float32))
        a = (torch.softmax(torch.from_numpy(rng.standard_normal(
            (len(attentions), 2, n, n)).astype(np.float32)), -1) if attentions else None)
        writer.write(i, h, a)
        hidden.append(h)
        attn.append(a)
    writer.publish({})
    return FeatureStore(path), hidden, attn


def _mask(rows):
    """A padded mask from ``(length, left_padding, row_length)`` per example."""
    width = max(total for _, _, total in rows)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (n, left, _) in enumerate(rows):
        mask[b, left:left + n] = 1
    return mask


def test_two_splits_left_and_right_padding_land_on_the_real_tokens(tmp_path):
    first, h1, _ = _store(tmp_path / "a", [2, 4, 1], seed=0)
    second, h2, _ = _store(tmp_path / "b", [3, 5], seed=1)
    collator = FeatureCollator(None, [first, second])
    # batch order mixes the splits (global rows: split a = 0..2, split b = 3..4)
    picks = [(1, 4, h2[1]), (0, 1, h1[1]), (1, 3, h2[0]), (0, 0, h1[0])]
    lefts = [0, 2, 1, 0]  # example 1 left-padded, example 2 padded on both sides
    mask = _mask([(len(h), left, 6) for (_, _, h), left in zip(picks, lefts, strict=True)])
    batch = {"attention_mask": mask, ROW: torch.tensor([row for _, row, _ in picks])}
    out = collator.add_features(batch)
    assert ROW not in out and set(out[HIDDEN]) == {0, 2}
    for i, index in enumerate((0, 2)):
        got = out[HIDDEN][index]
        assert got.dtype == torch.float32 and got.shape == (4, 6, WIDTH)
        want = torch.zeros_like(got)
        for b, ((_, _, h), left) in enumerate(zip(picks, lefts, strict=True)):
            want[b, left:left + len(h)] = h[:, i]
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_attention_maps_are_padded_beside_the_hidden_states(tmp_path):
    store, hidden, attn = _store(tmp_path / "a", [2, 3], seed=2, attentions=(0,))
    collator = FeatureCollator(None, [store])
    mask = _mask([(3, 0, 4), (2, 1, 4)])
    out = collator.add_features({"attention_mask": mask, ROW: torch.tensor([1, 0])})
    maps = out["teacher_attentions"][0]
    assert maps.dtype == torch.float32 and maps.shape == (2, 2, 4, 4)
    torch.testing.assert_close(maps[0, :, :3, :3], attn[1][0], rtol=0, atol=0)
    torch.testing.assert_close(maps[1, :, 1:3, 1:3], attn[0][0], rtol=0, atol=0)
    assert maps[0, :, 3:].abs().sum() == 0 and maps[1, :, 0].abs().sum() == 0
    torch.testing.assert_close(out[HIDDEN][2][1, 1:3], hidden[0][:, 1], rtol=0, atol=0)


@pytest.mark.parametrize("mask_row", [[1, 1, 1, 0], [1, 0, 1, 0]],
                         ids=["other length", "not contiguous"])
def test_a_mask_that_does_not_fit_the_cache_is_refused(tmp_path, mask_row):
    store, _, _ = _store(tmp_path / "a", [2, 2], seed=3)
    collator = FeatureCollator(None, [store])
    mask = torch.tensor([[1, 1, 0, 0], mask_row])
    with pytest.raises(ValueError, match="the cache does not match the data"):
        collator.add_features({"attention_mask": mask, ROW: torch.tensor([0, 1])})


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc/self/fd")
def test_read_ahead_hints_cover_exactly_the_batch_examples_bytes(tmp_path, monkeypatch):
    import distillkit.teachers.feature_store as store_module

    store, hidden, attn = _store(tmp_path / "a", [2, 4, 1, 3], seed=4, attentions=(0,))
    hints = []
    monkeypatch.setattr(store_module.os, "posix_fadvise",
                        lambda fd, offset, length, advice: hints.append(
                            (os.readlink(f"/proc/self/fd/{fd}"), offset, length, advice)),
                        raising=False)
    store.will_need([3, 1])
    read = {}
    for path, offset, length, advice in hints:
        assert advice == os.POSIX_FADV_WILLNEED
        with open(path, "rb") as fh:
            fh.seek(offset)
            read.setdefault(os.path.basename(path), []).append(
                np.frombuffer(fh.read(length), dtype=np.float32))
    assert sorted(read) == ["attention.npy", "hidden.npy"]
    for got, i in zip(read["hidden.npy"], (3, 1), strict=True):
        np.testing.assert_array_equal(got, hidden[i].numpy().ravel())
    for got, i in zip(read["attention.npy"], (3, 1), strict=True):
        np.testing.assert_array_equal(got, attn[i].numpy().ravel())
