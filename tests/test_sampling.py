"""Length-grouped and length-sorted batching: coverage, grouping, determinism, order restore."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from distillkit.data import TextClassificationData, synthetic_nli
from distillkit.data.sampling import (
    LengthGroupedBatchSampler,
    SortedBatchSampler,
    restore_order,
)
from distillkit.models.tokenizers import tiny_tokenizer

LENGTHS = np.random.default_rng(0).integers(5, 60, size=1000)


def _padding(batches):
    """Padded token slots / real token slots over all batches."""
    padded = sum(LENGTHS[b].max() * len(b) for b in batches)
    return padded / LENGTHS.sum()


def test_grouped_batches_cover_every_example_once_and_cut_padding():
    gen = torch.Generator().manual_seed(1)
    batches = list(LengthGroupedBatchSampler(LENGTHS, 32, gen, megabatch_factor=10))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(LENGTHS)))
    assert len(batches) == len(LengthGroupedBatchSampler(LENGTHS, 32, gen)) == 32
    rng = np.random.default_rng(0).permutation(len(LENGTHS))
    random_batches = [rng[i:i + 32] for i in range(0, len(rng), 32)]
    assert _padding(batches) < 1.15 < 1.5 < _padding(random_batches)


def test_grouped_batches_are_seeded_and_reshuffled_each_epoch():
    def epochs(seed):
        sampler = LengthGroupedBatchSampler(LENGTHS, 16, torch.Generator().manual_seed(seed))
        return [list(sampler), list(sampler)]
    first, second = epochs(3)
    assert epochs(3) == [first, second]
    assert first != second and epochs(4)[0] != first


def test_sorted_batches_and_restore_order():
    sampler = SortedBatchSampler(LENGTHS, 100)
    batches = list(sampler)
    flat = np.concatenate(batches)
    assert (np.diff(LENGTHS[flat]) <= 0).all() and len(batches) == len(sampler) == 10
    rows = np.stack([flat, flat * 2], axis=1)  # per-example outputs in sampler order
    restored = restore_order(sampler, rows)
    assert (restored[:, 0] == np.arange(len(LENGTHS))).all()
    assert restore_order(None, rows) is rows


def test_loader_length_sorted_keeps_every_example():
    data = TextClassificationData(partial(synthetic_nli, n_train=50, n_validation=20, n_test=0),
                                  text_column="premise", text_pair_column="hypothesis")
    data.tokenize(tiny_tokenizer())
    for shuffle in (False, True):
        loader = data.loader("train", 8, shuffle=shuffle, seed=0)
        assert sum(len(b["labels"]) for b in loader) == 50
    plain = data.loader("train", 8, by_length=False)
    assert plain.batch_sampler.__class__.__name__ == "BatchSampler"


def test_iterating_loaders_leaves_the_global_rng_alone():
    """Dropout draws from the global RNG: a run must not depend on which loaders ran before."""
    data = TextClassificationData(partial(synthetic_nli, n_train=30, n_validation=10, n_test=0),
                                  text_column="premise", text_pair_column="hypothesis")
    data.tokenize(tiny_tokenizer())
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for shuffle in (False, True):
        for by_length in (False, True):
            list(data.loader("train", 8, shuffle=shuffle, by_length=by_length))
    assert torch.equal(torch.rand(3), expected)
