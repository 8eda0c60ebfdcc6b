"""Losses against analytic cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distillkit.errors import ConfigError
from distillkit.losses import (
    DistillationLoss,
    HardCrossEntropy,
    KLDivergence,
    MSELogits,
    SoftTargetCrossEntropy,
)


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g), torch.arange(8) % 5


def test_kl_of_identical_distributions_is_zero(logits):
    s, _, _ = logits
    for t in (1.0, 4.0):
        assert KLDivergence()(s, s.clone(), t).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_ce_equals_kl_plus_teacher_entropy(logits):
    s, t_logits, _ = logits
    temp = 3.0
    p = F.softmax(t_logits / temp, -1)
    entropy = -(p * p.log()).sum(-1).mean() * temp**2
    ce = SoftTargetCrossEntropy()(s, t_logits, temp)
    kl = KLDivergence()(s, t_logits, temp)
    assert ce.item() == pytest.approx((kl + entropy).item(), rel=1e-5)


def test_soft_ce_known_value():
    # uniform teacher, student logits [0, ln 3] at T=1: CE = -(0.5*log(1/4) + 0.5*log(3/4))
    s = torch.tensor([[0.0, math.log(3.0)]])
    t = torch.zeros(1, 2)
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert SoftTargetCrossEntropy()(s, t, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_t_squared_gradient_scale(logits):
    s, t_logits, _ = logits
    for temp in (1.0, 2.0, 8.0):
        x = s.clone().requires_grad_(True)
        SoftTargetCrossEntropy()(x, t_logits, temp).backward()
        # d/dz_s [T^2 * CE(p_t, softmax(z_s/T))] = T * (softmax(z_s/T) - p_t) / batch
        expected = temp * (F.softmax(s / temp, -1) - F.softmax(t_logits / temp, -1)) / s.shape[0]
        torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6)


def test_mse_logits_known_value():
    s = torch.tensor([[1.0, 3.0]])
    t = torch.tensor([[0.0, 1.0]])
    assert MSELogits()(s, t, 1.0).item() == pytest.approx((1 + 4) / 2)
    assert MSELogits()(s, t, 2.0).item() == pytest.approx((0.25 + 1) / 2)


def test_mask_ignores_positions():
    s = torch.randn(2, 3, 4)
    t = s.clone()
    t[:, 2, 0] += 10.0  # only the masked-out position differs
    mask = torch.tensor([[True, True, False], [True, True, False]])
    assert KLDivergence()(s, t, 2.0, mask=mask).item() == pytest.approx(0.0, abs=1e-6)
    assert KLDivergence()(s, t, 2.0).item() > 0.1


def test_alpha_zero_equals_hard_ce(logits):
    s, t_logits, y = logits
    loss = DistillationLoss(kd=SoftTargetCrossEntropy(), temperature=4.0, alpha=0.0)
    out = loss({"logits": s}, {"logits": t_logits}, {"labels": y})
    assert out.total.item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    assert not loss.needs_teacher and "kd" not in out.terms


def test_weighting_schema(logits):
    s, t_logits, y = logits
    alpha, temp = 0.3, 2.0
    loss = DistillationLoss(kd=SoftTargetCrossEntropy(), temperature=temp, alpha=alpha)
    out = loss({"logits": s}, {"logits": t_logits}, {"labels": y})
    kd = SoftTargetCrossEntropy()(s, t_logits, temp)
    hard = HardCrossEntropy()(s, y)
    assert out.total.item() == pytest.approx((alpha * kd + (1 - alpha) * hard).item(), rel=1e-6)
    assert out.terms["kd"].item() == pytest.approx(kd.item())
    assert out.terms["hard"].item() == pytest.approx(hard.item())


def test_alpha_one_is_pure_distillation(logits):
    s, t_logits, y = logits
    out = DistillationLoss(kd=KLDivergence(), alpha=1.0)({"logits": s}, {"logits": s}, {"labels": y})
    assert out.total.item() == pytest.approx(0.0, abs=1e-6) and "hard" not in out.terms


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kd": KLDivergence(), "alpha": 1.5}, "loss.alpha"),
        ({"kd": KLDivergence(), "temperature": 0.0}, "loss.temperature"),
        ({"kd": None, "alpha": 0.5}, "loss.kd is null"),
    ],
)
def test_bad_values_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DistillationLoss(**kwargs)


def test_hidden_labels_are_ignored_and_never_nan(logits):
    s, _, y = logits
    hidden = y.clone()
    hidden[4:] = -100
    assert HardCrossEntropy()(s, hidden).item() == pytest.approx(
        F.cross_entropy(s[:4], y[:4]).item(), rel=1e-6)
    assert HardCrossEntropy()(s, torch.full_like(y, -100)).item() == 0.0
