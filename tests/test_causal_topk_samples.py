"""Top-k teacher targets with a sampled tail (``trainer.teacher_topk_samples``): the rest mass
replaced by draws from the teacher's other tokens, an unbiased estimate of the dense
distribution and of the forward-KL gradient; cached per example, independent of batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distillkit.causal.divergences import ForwardKL
from distillkit.causal.tiny import tiny_llama
from distillkit.causal.topk import LOG_FLOOR, topk_targets
from distillkit.errors import ConfigError
from tests.test_causal_topk_cache import cached, split, texts

P = torch.tensor([0.4, 0.2, 0.12, 0.1, 0.08, 0.05, 0.03, 0.02])  # the teacher, by hand


@pytest.fixture(scope="module")
def teacher():
    return tiny_llama(num_layers=2, hidden_size=32, seed=0)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _spread(targets, vocab: int) -> torch.Tensor:
    """The teacher weights of sparse targets placed on the vocabulary (the rest bucket, 0 here,
    left out)."""
    return torch.zeros(*targets.indices.shape[:-1], vocab).scatter_add_(
        -1, targets.indices, targets.log_probs.exp())


def test_head_is_exact_tail_slots_are_distinct_and_the_weights_add_up_to_one():
    z = P.log().expand(5, -1)
    t = topk_targets(z, 3, 4, torch.Generator().manual_seed(0))
    assert t.indices.shape == (5, 7) and t.log_probs.shape == (5, 7)
    assert t.indices[:, :3].tolist() == [[0, 1, 2]] * 5
    torch.testing.assert_close(t.log_probs[:, :3].exp(), P[:3].expand(5, -1))
    assert all(len(set(row)) == 7 for row in t.indices.tolist())  # never a head token again
    assert torch.all(t.rest_log_prob == LOG_FLOOR)
    torch.testing.assert_close(t.log_probs.exp().sum(-1), torch.ones(5))
    # each tail weight is the rest mass 0.28 times a multiple of 1/4 (its share of the draws)
    tail = t.log_probs[:, 3:].exp() / 0.28 * 4
    torch.testing.assert_close(tail, tail.round(), atol=1e-4, rtol=0)


def test_sampled_weights_average_to_the_teacher_distribution():
    draws = 40_000
    t = topk_targets(P.log().expand(draws, -1), 2, 2, torch.Generator().manual_seed(1))
    mean = _spread(t, len(P)).mean(0)
    # each tail weight is 0.38 * (count / 2): its standard error over the draws
    sigma = 0.38 * torch.sqrt(P / 0.38 * (1 - P / 0.38) / 2 / draws)
    assert torch.all((mean - P).abs()[2:] < 5 * sigma[2:])
    torch.testing.assert_close(mean[:2], P[:2])


def test_forward_kl_gradient_is_unbiased_where_the_plain_top_k_is_not():
    """d/dz sum_i p_i log(p_i / q_i) = q - p (z: the student's logits). Averaged over draws the
    sampled-tail gradient is q - p; the plain top-k one is not (it moves the tail as one)."""
    draws = 20_000
    zs = torch.tensor([0.3, -0.2, 0.1, 0.5, -0.4, 0.0, 0.2, -0.1])
    want = F.softmax(zs, -1) - P
    targets = topk_targets(P.log().expand(draws, -1), 2, 3, torch.Generator().manual_seed(2))
    z = zs.expand(draws, -1).clone().requires_grad_(True)
    ForwardKL()(z, targets).sum().backward()
    got = z.grad.mean(0)
    assert (got - want).abs().max() < 4e-3
    z_plain = zs.clone().unsqueeze(0).requires_grad_(True)
    ForwardKL()(z_plain, topk_targets(P.log().unsqueeze(0), 2)).sum().backward()
    assert (z_plain.grad[0] - want).abs().max() > 2e-2


def test_bad_sample_counts_are_refused():
    with pytest.raises(ConfigError, match="plus 7 tail samples must be at most the vocabulary"):
        topk_targets(P.log().unsqueeze(0), 2, 7)


def test_the_cached_entry_is_the_same_for_any_batching_and_keyed_apart(teacher, cache):
    lines = texts(7)
    a = cached(teacher, {"train": split(teacher, lines, batch_size=3)}, k=4, samples=3)
    assert a.source == "computed" and a.samples == 3 and a.record()["samples"] == 3
    per_token = 7 * (2 + 2) + 4  # fp16 log-weights and uint16 ids of 4 + 3 slots, the rest
    arrays = a.tokens * per_token + 16 * len(lines)  # + the row index
    assert arrays <= a.bytes <= arrays + 4 * 128  # + four .npy headers
    rows = [a.stores["train"].example(i) for i in range(len(lines))]
    for r in rows:
        assert r.indices.shape[-1] == 7
        np.testing.assert_allclose(r.log_probs.double().exp().sum(-1), 1.0, atol=4e-3)
    plain = cached(teacher, {"train": split(teacher, lines)}, k=4)
    assert plain.splits["train"]["key"] != a.splits["train"]["key"]
    # the same entry computed from other batches (a new cache): every draw is the same
    (cache / "teacher_topk").rename(cache / "first")
    b = cached(teacher, {"train": split(teacher, lines, batch_size=5)}, k=4, samples=3)
    assert b.source == "computed" and b.splits["train"]["key"] == a.splits["train"]["key"]
    for i, r in enumerate(rows):
        again = b.stores["train"].example(i)
        assert torch.equal(again.indices, r.indices) and torch.equal(again.log_probs,
                                                                      r.log_probs)
    with pytest.raises(ConfigError, match="teacher_topk_samples must be >= 0"):
        cached(teacher, {"train": split(teacher, lines)}, k=4, samples=-1)


def test_the_head_of_a_sampled_entry_is_the_plain_top_k():
    z = torch.randn(6, 50, generator=torch.Generator().manual_seed(3))
    sampled = topk_targets(z, 5, 8, torch.Generator().manual_seed(4))
    plain = topk_targets(z, 5)
    head = sampled.head(5)
    assert torch.equal(head.indices, plain.indices)
    torch.testing.assert_close(head.log_probs, plain.log_probs)
    torch.testing.assert_close(head.rest_log_prob, plain.rest_log_prob)


@pytest.mark.parametrize(("divergence", "temperature", "reads"), [
    ("fkl", 1.0, True), ("fkl", 2.0, False), ("rkl", 1.0, False), ("jsd", 1.0, False),
    ("tvd", 1.0, False), ("skl", 1.0, False)])
def test_only_forward_kl_at_t1_reads_the_samples(divergence, temperature, reads):
    from distillkit.causal.losses import causal_kd

    assert causal_kd(divergence, temperature=temperature).reads_sampled_tail is reads
