"""Intermediate-layer terms against analytic cases, projections, phases and feature requests."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn

from distillkit.errors import ConfigError
from distillkit.losses import (
    AttentionKL,
    AttentionMSE,
    DistillationLoss,
    GramMMD,
    HiddenCosine,
    HiddenMSE,
    IntermediateTerms,
    SoftTargetCrossEntropy,
)
from distillkit.losses.intermediate import _Gram
from distillkit.losses.mapping import LayerPair

ALL_TERMS = [HiddenMSE, HiddenCosine, GramMMD, AttentionMSE, AttentionKL]


def _features(term_cls, seed=0, heads=2):
    g = torch.Generator().manual_seed(seed)
    if term_cls.feature == "attention":
        return torch.rand(2, heads, 5, 5, generator=g).softmax(-1)
    return torch.randn(2, 5, 8, generator=g)


@pytest.mark.parametrize("term_cls", ALL_TERMS)
def test_identical_features_give_zero_and_different_give_positive(term_cls):
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    a, b = _features(term_cls, 0), _features(term_cls, 1)
    term = term_cls()
    assert term(a, a.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)
    assert term(a, b, mask).item() > 1e-3


@pytest.mark.parametrize("term_cls", ALL_TERMS)
def test_padding_never_counts(term_cls):
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    a, b = _features(term_cls, 0), _features(term_cls, 1)
    noisy = b.clone()
    if term_cls.feature == "attention":
        noisy[:, :, 3:, :] = 0.5  # padded query rows
        noisy[:, :, :, 3:] = 0.7  # padded keys
    else:
        noisy[:, 3:, :] = 1e3  # padded positions
    term = term_cls()
    assert term(a, noisy, mask).item() == pytest.approx(term(a, b, mask).item(), rel=1e-5)


def test_known_values():
    mask = torch.ones(1, 2)
    zeros, ones = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    assert HiddenMSE()(zeros, ones, mask).item() == pytest.approx(1.0)
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert HiddenCosine()(x, torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]]), mask).item() == \
        pytest.approx(1.0)  # orthogonal
    assert HiddenCosine()(x, -x, mask).item() == pytest.approx(2.0)  # opposite
    # gram of [[1],[0]] / 1 = [[1,0],[0,0]] vs zeros: MSE over 4 entries = 1/4
    s = torch.tensor([[[1.0], [0.0]]])
    assert GramMMD()(s, torch.zeros(1, 2, 4), mask).item() == pytest.approx(0.25)
    assert GramMMD()(s, torch.zeros(1, 2, 4), torch.tensor([[1, 0]])).item() == \
        pytest.approx(1.0)  # only the (0, 0) pair is real
    one_hot = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    uniform = torch.full((1, 1, 2, 2), 0.5)
    assert AttentionKL()(uniform, one_hot, mask).item() == pytest.approx(math.log(2), rel=1e-5)
    assert AttentionMSE()(uniform, one_hot, mask).item() == pytest.approx(0.25)


def test_attention_head_counts_may_differ():
    teacher = torch.rand(1, 4, 3, 3).softmax(-1)
    student = teacher.mean(1, keepdim=True).expand(1, 2, 3, 3)  # same head average
    mask = torch.ones(1, 3)
    assert AttentionMSE()(student, teacher, mask).item() == pytest.approx(0.0, abs=1e-7)
    assert AttentionKL()(student, teacher, mask).item() == pytest.approx(0.0, abs=1e-6)


def _outputs(width, layers=2, heads=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"logits": torch.randn(2, 3, generator=g),
            "hidden_states": tuple(torch.randn(2, 4, width, generator=g)
                                   for _ in range(layers + 1)),
            "attentions": tuple(torch.rand(2, heads, 4, 4, generator=g).softmax(-1)
                                for _ in range(layers))}


def test_projection_only_when_widths_differ_and_it_trains():
    pairs = [LayerPair(0, 0), LayerPair(2, 4)]
    same = IntermediateTerms({"hidden_mse": HiddenMSE(), "mmd": GramMMD()}, nn.Linear)
    same.bind(pairs, student_width=8, teacher_width=8)
    assert len(same.projections) == 0
    diff = IntermediateTerms({"hidden_mse": HiddenMSE(), "mmd": GramMMD()}, nn.Linear)
    diff.bind(pairs, student_width=8, teacher_width=16)
    assert sorted(diff.projections) == ["s0-t0", "s2-t4"]  # one per pair, none for mmd
    total, by_term = diff(_outputs(8), _outputs(16, layers=4), torch.ones(2, 4))
    total.backward()
    assert set(by_term) == {"hidden_mse", "mmd"}
    assert all(p.grad is not None for p in diff.projections.parameters())
    no_factory = IntermediateTerms({"hidden_mse": HiddenMSE()}, None)
    with pytest.raises(ConfigError, match=r"width 8 \(student\) and 16 \(teacher\).*projection"):
        no_factory.bind(pairs, student_width=8, teacher_width=16)


def test_pair_options_select_terms_and_weights():
    terms = {"hidden_mse": HiddenMSE(weight=2.0), "attention_kl": AttentionKL()}
    inter = IntermediateTerms(terms)
    inter.bind([LayerPair(0, 0), LayerPair(1, 1), LayerPair(2, 2, loss="hidden_mse", weight=3.0),
                LayerPair(1, 2, feature="attention")], 8, 8)
    assert [(n, p.label(), w) for n, p, w in inter.plan] == [
        ("hidden_mse", "s0-t0", 2.0),  # attention skips the embeddings pair
        ("hidden_mse", "s1-t1", 2.0), ("attention_kl", "s1-t1", 1.0),
        ("hidden_mse", "s2-t2", 6.0),
        ("attention_kl", "s1-t2", 1.0)]
    assert inter.features() == {"hidden_states", "attentions"}
    with pytest.raises(ConfigError, match=r"names loss 'mmd'.*hidden_mse, attention_kl"):
        IntermediateTerms(terms).bind([LayerPair(1, 1, loss="mmd")], 8, 8)
    with pytest.raises(ConfigError, match=r"attention_kl' works on attention features"):
        IntermediateTerms(terms).bind([LayerPair(0, 0, loss="attention_kl")], 8, 8)
    with pytest.raises(ConfigError, match=r"gives them no pairs.*mapping=uniform"):
        IntermediateTerms(terms).bind([], 8, 8)


def _hand_outputs():
    """Student and teacher outputs (1 example, 2 tokens, width 2, 3 labels) whose term values
    are worked out by hand:

    * pair (1, 1): student [[1, 0], [0, 1]], teacher [[0, 1], [0, 1]]. Hidden MSE: token 0
      (1 + 1) / 2 = 1, token 1: 0, mean 0.5. Gram matrices / width 2: student [[.5, 0], [0, .5]],
      teacher [[.5, .5], [.5, .5]]; squared differences 0 + .25 + .25 + 0 over 4 entries: 0.125.
    * pair (2, 2): student [[2, 0], [0, 0]], teacher zeros. Hidden MSE: token 0 4 / 2 = 2,
      token 1: 0, mean 1.0. Gram: student [[2, 0], [0, 0]] vs zeros: 4 / 4 = 1.0.
    * logits: the student's uniform, so cross-entropy against any target is ln 3; the
      teacher's [2 ln 3, 0, 0] softened by T = 2 give [0.6, 0.2, 0.2].
    """
    zeros = torch.zeros(1, 2, 2)
    student = {"logits": torch.zeros(1, 3),
               "hidden_states": (zeros, torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]),
                                 torch.tensor([[[2.0, 0.0], [0.0, 0.0]]]))}
    teacher = {"logits": torch.tensor([[2 * math.log(3), 0.0, 0.0]]),
               "hidden_states": (zeros, torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]), zeros)}
    batch = {"labels": torch.tensor([0]), "attention_mask": torch.ones(1, 2)}
    return student, teacher, batch


def test_weighted_sum_matches_terms():
    loss = DistillationLoss(kd=SoftTargetCrossEntropy(), temperature=2.0, alpha=0.3,
                            intermediate={"hidden_mse": HiddenMSE(weight=0.5),
                                          "mmd": GramMMD(weight=2.0)})
    loss.bind([LayerPair(1, 1), LayerPair(2, 2)], 2, 2)
    out = loss(*_hand_outputs())
    kd, hard = 4 * math.log(3), math.log(3)  # T^2 * CE(uniform vs [.6, .2, .2]) = 4 ln 3
    hidden, mmd = 0.5 * (0.5 + 1.0), 2.0 * (0.125 + 1.0)  # term weight * sum over the pairs
    assert out.terms["kd"].item() == pytest.approx(kd, rel=1e-6)
    assert out.terms["hard"].item() == pytest.approx(hard, rel=1e-6)
    assert out.terms["hidden_mse"].item() == pytest.approx(hidden, rel=1e-6)
    assert out.terms["mmd"].item() == pytest.approx(mmd, rel=1e-6)
    # alpha weighs kd against hard only; the intermediate terms are added as they are
    assert out.total.item() == pytest.approx(0.3 * kd + 0.7 * hard + 0.75 + 2.25, rel=1e-6)


def test_two_phases_switch_terms_and_features():
    loss = DistillationLoss(kd=SoftTargetCrossEntropy(), alpha=1.0, intermediate_phase=0.5,
                            intermediate={"hidden_mse": HiddenMSE()})
    loss.bind([LayerPair(1, 1)], 8, 8)
    batch = {"labels": torch.tensor([0, 1]), "attention_mask": torch.ones(2, 4)}
    loss.set_progress(4, 10)
    assert loss.required_features() == {"logits", "hidden_states"}
    assert set(loss(_outputs(8), _outputs(8, seed=1), batch).terms) == {"hidden_mse"}
    loss.set_progress(5, 10)
    assert loss.required_features() == {"logits"}
    assert set(loss(_outputs(8), _outputs(8, seed=1), batch).terms) == {"kd"}
    with pytest.raises(ConfigError, match="intermediate_phase"):
        DistillationLoss(alpha=0.0, intermediate_phase=1.0)
    no_terms = DistillationLoss(alpha=0.0, intermediate_phase=0.5)
    with pytest.raises(ConfigError, match="needs intermediate terms"):
        no_terms.bind([], 8, 8)


def test_linear_decay_scales_intermediate_terms_from_one_to_zero():
    loss = DistillationLoss(kd=SoftTargetCrossEntropy(), temperature=2.0, alpha=1.0,
                            intermediate_decay="linear",
                            intermediate={"hidden_mse": HiddenMSE(weight=2.0)})
    loss.bind([LayerPair(1, 1)], 2, 2)
    kd = 4 * math.log(3)  # see _hand_outputs; hidden MSE of pair (1, 1): 0.5, times weight 2
    for step, factor in ((0, 1.0), (5, 0.5), (9, 0.1)):  # 1 - step / 10
        loss.set_progress(step, 10)
        out = loss(*_hand_outputs())
        assert out.total.item() == pytest.approx(kd + factor * 2.0 * 0.5, rel=1e-6), step
    loss.set_progress(10, 10)
    assert loss.required_features() == {"logits"}
    assert set(loss(*_hand_outputs()).terms) == {"kd"}
    assert loss(*_hand_outputs()).total.item() == pytest.approx(kd, rel=1e-6)
    with pytest.raises(ConfigError, match="intermediate_decay"):
        DistillationLoss(alpha=0.0, intermediate_decay="cosine")
    with pytest.raises(ConfigError, match="needs intermediate terms"):
        DistillationLoss(alpha=0.0, intermediate_decay="linear").bind([], 8, 8)


def test_prediction_weight_zero_trains_intermediate_only():
    loss = DistillationLoss(alpha=0.0, prediction_weight=0.0,
                            intermediate={"hidden_mse": HiddenMSE()})
    loss.bind([LayerPair(1, 1)], 8, 8)
    out = loss(_outputs(8), _outputs(8, seed=1),
               {"labels": torch.tensor([0, 1]), "attention_mask": torch.ones(2, 4)})
    assert set(out.terms) == {"hidden_mse"} and loss.needs_teacher


class _Spy(nn.Module):
    """Records which optional outputs the engine asks a model for."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, **kwargs):
        self.calls.append({k: kwargs.get(k) for k in ("output_hidden_states",
                                                      "output_attentions")})
        return self.inner(**kwargs)


@pytest.mark.parametrize(("intermediate", "expected"), [
    (None, {"output_hidden_states": False, "output_attentions": False}),
    ({"mmd": GramMMD()}, {"output_hidden_states": True, "output_attentions": False}),
    ({"attention_mse": AttentionMSE()}, {"output_hidden_states": False,
                                         "output_attentions": True}),
])
def test_engine_requests_only_the_features_the_loss_reads(intermediate, expected):
    from distillkit.data import TextClassificationData, synthetic_nli
    from distillkit.engine import Distiller, EngineSettings
    from distillkit.models import bert_student, tiny_teacher

    labels = ["entailment", "neutral", "contradiction"]
    teacher = tiny_teacher(labels=labels)
    student = _Spy(bert_student(teacher=teacher, labels=labels, num_layers=2, hidden_size=32,
                                num_heads=2, intermediate_size=64).model)
    data = TextClassificationData(partial(synthetic_nli, n_train=16, n_validation=8, n_test=0),
                                  text_column="premise", text_pair_column="hypothesis")
    data.tokenize(teacher.tokenizer)
    loss = DistillationLoss(kd=SoftTargetCrossEntropy(), alpha=0.5, intermediate=intermediate)
    loss.bind([LayerPair(1, 1), LayerPair(2, 2)] if intermediate else [], 32, 32)
    teacher_spy = _Spy(teacher.model)
    d = Distiller(student, teacher_spy, loss, partial(torch.optim.AdamW, lr=1e-3),
                  lambda opt, num_training_steps: torch.optim.lr_scheduler.LambdaLR(
                      opt, lambda _: 1.0),
                  EngineSettings(max_steps=2, batch_size=8, progress=False, device="cpu"))
    d.fit(data.loader("train", 8, shuffle=True))
    assert student.calls and all(c == expected for c in student.calls)
    assert teacher_spy.calls and all(c == expected for c in teacher_spy.calls)


def test_gram_mmd_gradient_matches_the_written_out_formula():
    torch.manual_seed(0)
    s = torch.randn(3, 5, 4, requires_grad=True)
    t = torch.randn(3, 5, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0]])
    pairs = (mask[:, :, None] * mask[:, None, :]).double()
    # mean over real token pairs of (s_i . s_j / 4 - t_i . t_j / 6)^2, by explicit sums (float64)
    s64 = s.detach().double().requires_grad_()
    gram_s = torch.einsum("bid,bjd->bij", s64, s64) / 4
    gram_t = torch.einsum("bid,bjd->bij", t.double(), t.double()) / 6
    want = (((gram_s - gram_t) ** 2) * pairs).sum() / pairs.sum()
    (want_grad,) = torch.autograd.grad(want, s64)
    got = GramMMD()(s, t, mask)
    (got_grad,) = torch.autograd.grad(got, s)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-4, atol=1e-6)
    # the gram's own backward pass (one product for both sides) in float64
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_Gram.apply, (x,))


def test_gram_mmd_stays_float32_under_bf16_autocast():
    torch.manual_seed(1)
    s, t = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    mask = torch.ones(2, 4, dtype=torch.long)
    plain = GramMMD()(s, t, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = GramMMD()(s, t, mask)
    assert cast.dtype == torch.float32
    assert cast.item() == pytest.approx(plain.item(), rel=1e-6)  # bf16 grams would be ~1e-2 off
