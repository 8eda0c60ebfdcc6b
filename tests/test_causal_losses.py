"""Token-level causal-LM divergences, top-k targets and vocabulary alignment against closed
forms (the chunked loss: tests/test_causal_chunked.py)."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from distillkit.causal.divergences import (
    ForwardKL,
    GeneralizedJSD,
    ReverseKL,
    SkewKL,
    SkewReverseKL,
    TotalVariation,
)
from distillkit.causal.topk import TopKTargets, topk_targets
from distillkit.causal.vocab import align_vocab
from distillkit.errors import ConfigError, ModelError


def kl(a: list[float], b: list[float]) -> float:
    """KL(a || b) of two explicit distributions, in plain Python."""
    return sum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)


def mix(w: float, a: list[float], b: list[float]) -> list[float]:
    return [w * x + (1 - w) * y for x, y in zip(a, b, strict=True)]


# teacher p = (0.75, 0.25), student q = (0.5, 0.5), given as logits
P, Q = [0.75, 0.25], [0.5, 0.5]
ZT = torch.tensor([[math.log(0.75), math.log(0.25)]])
ZS = torch.zeros(1, 2)


def value(div, zs=ZS, zt=ZT, t=1.0) -> float:
    return div(zs, zt, t).item()


def test_forward_and_reverse_kl_closed_form():
    assert value(ForwardKL()) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5),
                                               rel=1e-5)
    assert value(ReverseKL()) == pytest.approx(0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0),
                                               rel=1e-5)


def test_temperature_softens_both_sides():
    # at T = 2 the teacher is p_i^(1/2) renormalised; the uniform student stays uniform
    root = [math.sqrt(0.75), math.sqrt(0.25)]
    p2 = [r / sum(root) for r in root]
    assert value(ForwardKL(), t=2.0) == pytest.approx(kl(p2, Q), rel=1e-5)


def test_total_variation_closed_form():
    assert value(TotalVariation()) == pytest.approx(0.25, rel=1e-6)  # |p1 - q1|
    assert TotalVariation().scale(3.0) == 3.0 and ForwardKL().scale(3.0) == 9.0


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_generalized_jsd_closed_form(beta):
    m = mix(beta, P, Q)  # m = beta * teacher + (1 - beta) * student, as TRL mixes
    expected = beta * kl(P, m) + (1 - beta) * kl(Q, m)
    assert value(GeneralizedJSD(beta)) == pytest.approx(expected, rel=1e-5)


def test_generalized_jsd_beta_limits_and_direction():
    forward, reverse = kl(P, Q), kl(Q, P)
    assert value(GeneralizedJSD(0.0)) == pytest.approx(forward, rel=1e-5)  # TRL: beta=0 -> KL(p||q)
    assert value(GeneralizedJSD(1.0)) == pytest.approx(reverse, rel=1e-5)  # beta=1 -> KL(q||p)
    # the formula's own limits: JSD_b / b -> KL(p||q) as b -> 0, JSD_b / (1-b) -> KL(q||p) as b -> 1
    eps = 1e-3
    assert value(GeneralizedJSD(eps)) / eps == pytest.approx(forward, rel=2e-2)
    assert value(GeneralizedJSD(1 - eps)) / eps == pytest.approx(reverse, rel=2e-2)


def test_skew_kl_closed_form_and_limits():
    assert value(SkewKL(0.1)) == pytest.approx(kl(P, mix(0.1, P, Q)), rel=1e-5)
    assert value(SkewKL(0.0)) == pytest.approx(kl(P, Q), rel=1e-5)
    assert value(SkewKL(1.0)) == pytest.approx(0.0, abs=1e-7)
    assert SkewKL().skew == 0.1


def test_skew_reverse_kl_closed_form_and_limits():
    assert value(SkewReverseKL(0.1)) == pytest.approx(kl(Q, mix(0.9, P, Q)), rel=1e-5)
    assert value(SkewReverseKL(0.0)) == pytest.approx(kl(Q, P), rel=1e-5)
    assert value(SkewReverseKL(1.0)) == pytest.approx(0.0, abs=1e-7)


ALL = [ForwardKL(), ReverseKL(), GeneralizedJSD(0.5), GeneralizedJSD(0.2), TotalVariation(),
       SkewKL(0.1), SkewReverseKL(0.1)]
IDS = ["fkl", "rkl", "jsd.5", "jsd.2", "tvd", "skl", "srkl"]


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 9, 11, generator=g) * 2, torch.randn(6, 9, 11, generator=g) * 2


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_zero_when_equal_and_non_negative(div, logits):
    zs, zt = logits
    for t in (1.0, 3.0):
        assert div(zs, zs.clone(), t).abs().max().item() < 1e-6
        values = div(zs, zt, t)
        assert values.shape == zs.shape[:-1]
        assert values.min().item() > 1e-4  # different distributions: strictly positive


def test_swapped_arguments(logits):
    zs, zt = logits
    torch.testing.assert_close(ReverseKL()(zs, zt, 2.0), ForwardKL()(zt, zs, 2.0))
    torch.testing.assert_close(SkewReverseKL(0.3)(zs, zt), SkewKL(0.3)(zt, zs))
    torch.testing.assert_close(GeneralizedJSD(0.2)(zs, zt), GeneralizedJSD(0.8)(zt, zs))
    torch.testing.assert_close(TotalVariation()(zs, zt), TotalVariation()(zt, zs))


def plain(name: str, zs: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
    """Each divergence written out in plain float64 torch, out of place."""
    lp, lq = torch.log_softmax(zt.double(), -1), torch.log_softmax(zs.double(), -1)
    p, q = lp.exp(), lq.exp()

    def kl_(a, la, lb):
        return (a * (la - lb)).sum(-1)

    def log_m(w):  # log(w p + (1 - w) q)
        return (w * p + (1 - w) * q).log()

    return {
        "fkl": lambda: kl_(p, lp, lq), "rkl": lambda: kl_(q, lq, lp),
        "jsd.5": lambda: 0.5 * kl_(p, lp, log_m(0.5)) + 0.5 * kl_(q, lq, log_m(0.5)),
        "jsd.2": lambda: 0.2 * kl_(p, lp, log_m(0.2)) + 0.8 * kl_(q, lq, log_m(0.2)),
        "tvd": lambda: 0.5 * (p - q).abs().sum(-1),
        "skl": lambda: kl_(p, lp, log_m(0.1)), "srkl": lambda: kl_(q, lq, log_m(0.9)),
        "zero": lambda: (q * 0).sum(-1),
    }[name]()


# the end points of the parameters, against the plain formula each should equal
EDGES = [(GeneralizedJSD(0.0), "fkl"), (GeneralizedJSD(1.0), "rkl"), (SkewKL(0.0), "fkl"),
         (SkewKL(1.0), "zero"), (SkewReverseKL(0.0), "rkl"), (SkewReverseKL(1.0), "zero")]
EDGE_IDS = ["jsd0", "jsd1", "skl0", "skl1", "srkl0", "srkl1"]


@pytest.mark.parametrize("div, name", list(zip(ALL, IDS, strict=True)) + EDGES,
                         ids=IDS + EDGE_IDS)
def test_values_and_gradients_match_plain_formulas(div, name, logits):
    zs, zt = logits
    a = zs.double().requires_grad_(True)
    b = zs.clone().requires_grad_(True)
    want = plain(name, a, zt)
    got = div(b, zt)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
    weights = torch.rand(want.shape, generator=torch.Generator().manual_seed(2)) + 0.5
    (want * weights.double()).sum().backward()
    (got * weights).sum().backward()
    torch.testing.assert_close(b.grad.double(), a.grad, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_gradient_size_does_not_change_with_temperature(div, logits):
    # scale(T) is T**2 (T for TVD): the gradient of scale(T) * D no longer shrinks with T
    zs0, zt = logits
    norms = []
    for t in (8.0, 32.0):
        zs = zs0.clone().requires_grad_(True)
        (div.scale(t) * div(zs, zt, t).mean()).backward()
        norms.append(zs.grad.norm().item())
    assert norms[1] == pytest.approx(norms[0], rel=0.1)


# -- sparse (top-k) targets -------------------------------------------------------------------
def test_topk_targets_hold_the_top_tokens_and_the_rest():
    z = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05)]])
    t = topk_targets(z, 2)
    assert t.indices.tolist() == [[0, 1]]
    torch.testing.assert_close(t.log_probs.exp(), torch.tensor([[0.5, 0.3]]))
    torch.testing.assert_close(t.rest_log_prob.exp(), torch.tensor([0.2]))
    assert topk_targets(z, 4).rest_log_prob.item() == float("-inf")


@pytest.mark.parametrize("div", ALL, ids=IDS)
@pytest.mark.parametrize("t", [1.0, 2.5])
def test_sparse_with_k_equal_vocab_is_dense(div, t, logits):
    zs, zt = logits
    a = zs.clone().requires_grad_(True)
    b = zs.clone().requires_grad_(True)
    dense = div(a, zt, t)
    sparse = div(b, topk_targets(zt, zt.shape[-1]), t)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
    dense.sum().backward()
    sparse.sum().backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)


def test_sparse_student_buckets_hand_computed():
    # teacher names token 0 (p = 0.5, rest 0.5); student q = (0.2, 0.3, 0.5): buckets (0.2, 0.8)
    zs = torch.tensor([[math.log(0.2), math.log(0.3), math.log(0.5)]])
    target = TopKTargets(torch.tensor([[math.log(0.5)]]), torch.tensor([[0]]),
                         torch.tensor([math.log(0.5)]))
    assert ForwardKL()(zs, target).item() == pytest.approx(kl([0.5, 0.5], [0.2, 0.8]), rel=1e-5)
    # T = 2: the teacher buckets are p_i^(1/2) renormalised (equal here), the student is tempered
    root = [math.sqrt(x) for x in (0.2, 0.3, 0.5)]
    q2 = [r / sum(root) for r in root]
    assert ForwardKL()(zs, target, 2.0).item() == pytest.approx(
        kl([0.5, 0.5], [q2[0], q2[1] + q2[2]]), rel=1e-5)


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_sparse_approaches_dense_as_k_grows(div):
    vocab = 512
    g = torch.Generator().manual_seed(1)
    rank = torch.arange(1, vocab + 1, dtype=torch.float32)
    # peaked (Zipf-like) teacher and a perturbed student, tokens shuffled per row
    zt = torch.stack([(-2.5 * rank.log())[torch.randperm(vocab, generator=g)] for _ in range(8)])
    zs = zt + torch.randn(8, vocab, generator=g)
    dense = div(zs, zt).mean().item()
    errors = [abs(div(zs, topk_targets(zt, k)).mean().item() - dense) for k in (1, 4, 16, 64)]
    assert all(later <= earlier + 1e-6 for earlier, later in zip(errors, errors[1:], strict=False))
    assert errors[-1] < 0.05 * dense < errors[0]


# -- bad settings -------------------------------------------------------------------------------
@pytest.mark.parametrize("make, phrase", [
    (lambda: GeneralizedJSD(1.5), "loss.beta must be in [0, 1], got 1.5"),
    (lambda: SkewKL(-0.1), "loss.skew must be in [0, 1], got -0.1"),
    (lambda: SkewReverseKL(2.0), "loss.skew must be in [0, 1], got 2.0"),
    (lambda: topk_targets(torch.zeros(2, 5), 0), "top-k size must be in [1, 5]"),
    (lambda: topk_targets(torch.zeros(2, 5), 6), "top-k size must be in [1, 5]"),
])
def test_bad_divergence_settings(make, phrase):
    with pytest.raises(ConfigError) as err:
        make()
    assert phrase in str(err.value) and "\n" not in str(err.value)


# -- vocabulary alignment -----------------------------------------------------------------------
VOCAB = {f"tok{i}": i for i in range(8)}


@pytest.mark.parametrize("student_rows, teacher_rows", [(8, 8), (8, 9), (16, 8), (9, 16)])
def test_align_vocab_padding_rows(student_rows, teacher_rows, caplog):
    with caplog.at_level(logging.WARNING, logger="distillkit.causal.vocab"):
        size = align_vocab(student_rows, teacher_rows, dict(VOCAB), dict(VOCAB))
    assert size == min(student_rows, teacher_rows)
    warnings = [r.getMessage() for r in caplog.records]
    if student_rows == teacher_rows:
        assert warnings == []
    else:
        assert len(warnings) == 1 and f"first {size}" in warnings[0]
        assert "\n" not in warnings[0]


def test_align_vocab_smollm2_sizes_by_length():
    assert align_vocab(49216, 49152, 49152, 49152) == 49152
    assert align_vocab(49153, 49216, 49152, 49152) == 49153


@pytest.mark.parametrize("student_vocab, phrases", [
    (9, ["tokenizers differ", "teacher vocab 8 rows / 8 tokens", "student 16 rows / 9 tokens",
         "student=smollm2_copy"]),
    ({**VOCAB, "tok1": 2, "tok2": 1}, ["tokenizers differ", "'tok1' is id 1 for the teacher, 2"]),
])
def test_align_vocab_refuses_other_tokenizers(student_vocab, phrases):
    with pytest.raises(ModelError) as err:
        align_vocab(16, 8, student_vocab, dict(VOCAB))
    message = str(err.value)
    assert "\n" not in message
    assert all(p in message for p in phrases), message


def test_align_vocab_refuses_a_head_smaller_than_the_tokenizer():
    with pytest.raises(ModelError, match="smaller than the tokenizer"):
        align_vocab(7, 8, 8, 8)
