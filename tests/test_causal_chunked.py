"""The chunked token-level KD + cross-entropy and TokenDistillationLoss: chunked equals
unchunked (values and gradients), masking, the alpha/temperature schema, bad settings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from distillkit.causal.chunked import LMHeadInput, chunked_token_kd, token_losses
from distillkit.causal.divergences import (
    ForwardKL,
    GeneralizedJSD,
    ReverseKL,
    SkewKL,
    SkewReverseKL,
    TotalVariation,
)
from distillkit.causal.token_loss import TokenDistillationLoss, shift_for_next_token
from distillkit.causal.topk import topk_targets
from distillkit.errors import ConfigError, ModelError

B, T, H, V, HT = 2, 9, 6, 13, 5


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :3] = -100  # a prompt
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -2:] = 0  # padding
    return {
        "h": torch.randn(B, T, H, generator=g), "w": torch.randn(V, H, generator=g),
        "b": torch.randn(V, generator=g), "ht": torch.randn(B, T, HT, generator=g),
        "wt": torch.randn(V, HT, generator=g) * 2, "labels": labels, "mask": mask,
    }


def leaves(case):
    return [case[k].clone().requires_grad_(True) for k in ("h", "w", "b")]


def reference_kl(z, zt, counted, t):
    """Mean forward KL of the counted tokens, from full logits with torch's own kl_div."""
    return F.kl_div(F.log_softmax(z[counted] / t, -1), F.log_softmax(zt[counted] / t, -1),
                    log_target=True, reduction="none").sum(-1).mean()


def counted_of(case):
    return (case["labels"] != -100) & case["mask"].bool()


@pytest.mark.parametrize("chunk", [1, 7, 1000])
@pytest.mark.parametrize("teacher_form", ["logits", "head", "topk"])
@pytest.mark.parametrize("t", [1.0, 2.0])
def test_chunked_equals_unchunked(case, chunk, teacher_form, t):
    zt = case["ht"] @ case["wt"].T
    teacher = {"logits": zt, "head": LMHeadInput(case["ht"], case["wt"]),
               "topk": topk_targets(zt, V)}[teacher_form]
    counted = counted_of(case)
    h, w, b = leaves(case)
    z = h @ w.T + b
    ref = 0.3 * reference_kl(z, zt, counted, t) + 0.7 * F.cross_entropy(
        z[counted], case["labels"][counted])
    ref_grads = torch.autograd.grad(ref, [h, w, b])
    h, w, b = leaves(case)
    out = token_losses(LMHeadInput(h, w, b), teacher, case["labels"], ForwardKL(), t,
                       kd_weight=0.3, ce_weight=0.7, mask=case["mask"], chunk_tokens=chunk)
    assert out.tokens == int(counted.sum())
    torch.testing.assert_close(out.total, ref)
    for got, want in zip(torch.autograd.grad(out.total, [h, w, b]), ref_grads, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("div", [ForwardKL(), ReverseKL(), GeneralizedJSD(0.3), TotalVariation(),
                                 SkewKL(), SkewReverseKL()])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_equals_unchunked_from_logits(case, div, chunk):
    zt, counted = case["ht"] @ case["wt"].T, counted_of(case)
    z0 = case["h"] @ case["w"].T
    z = z0.clone().requires_grad_(True)
    ref = div(z[counted], zt[counted], 1.5).mean()
    ref.backward()
    z2 = z0.clone().requires_grad_(True)
    got = chunked_token_kd(z2, zt, counted, div, 1.5, chunk_tokens=chunk)
    got.backward()
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(z2.grad, z.grad)


def test_masked_tokens_do_not_count(case):
    counted = counted_of(case)
    h, w, b = leaves(case)
    zt = case["ht"] @ case["wt"].T
    out = token_losses(LMHeadInput(h, w, b), zt, case["labels"], ForwardKL(), 1.0,
                       ce_weight=1.0, mask=case["mask"], chunk_tokens=4)
    (gh,) = torch.autograd.grad(out.total, [h])
    assert gh[~counted].abs().max().item() == 0.0 and gh[counted].abs().max().item() > 0
    # wild values on the tokens that do not count change nothing
    h2 = case["h"].clone()
    h2[~counted] = 1e3
    zt2 = zt.clone()
    zt2[~counted] = -1e3
    out2 = token_losses(LMHeadInput(h2, w, b), zt2, case["labels"], ForwardKL(), 1.0,
                        ce_weight=1.0, mask=case["mask"], chunk_tokens=4)
    torch.testing.assert_close(out2.total, out.total)


def test_no_vocab_sized_tensor_for_the_whole_batch(case):
    """No op, forward or backward, outputs more than one chunk of logits (the full logits of
    the reference do, which shows the probe works)."""

    class Largest(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(o, torch.Tensor):
                    self.numel = max(self.numel, o.numel())
            return out

    vocab, hidden, tokens, chunk = 400, 4, 64, 4
    g = torch.Generator().manual_seed(0)
    h = torch.randn(1, tokens, hidden, generator=g, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=g, requires_grad=True)
    teacher = LMHeadInput(torch.randn(1, tokens, hidden, generator=g),
                          torch.randn(vocab, hidden, generator=g))
    labels = torch.zeros(1, tokens, dtype=torch.long)
    with Largest() as probe:
        token_losses(LMHeadInput(h, w), teacher, labels, ForwardKL(), 2.0, ce_weight=1.0,
                     chunk_tokens=chunk).total.backward()
    assert probe.numel <= max(chunk * vocab, vocab * hidden) < tokens * vocab
    with Largest() as naive:
        (h @ w.T).sum().backward()
    assert naive.numel == tokens * vocab


def test_gradient_follows_the_incoming_gradient_and_no_grad_works(case):
    h, w, b = leaves(case)
    zt = case["ht"] @ case["wt"].T
    run = lambda: token_losses(LMHeadInput(h, w, b), zt, case["labels"], ForwardKL(),  # noqa: E731
                               ce_weight=1.0, chunk_tokens=5).total
    g1 = torch.autograd.grad(run(), [h, w, b])
    g3 = torch.autograd.grad(3.0 * run(), [h, w, b])
    for one, three in zip(g1, g3, strict=True):
        torch.testing.assert_close(three, 3.0 * one)
    with torch.no_grad():
        assert run().item() == pytest.approx(run().detach().item(), rel=1e-6)


def test_bf16_head_gives_bf16_gradients_close_to_fp32(case):
    zt = case["ht"] @ case["wt"].T
    grads = {}
    for dtype in (torch.float32, torch.bfloat16):
        h, w = (case[k].to(dtype).requires_grad_(True) for k in ("h", "w"))
        total = token_losses(LMHeadInput(h, w), zt, case["labels"], ForwardKL(),
                             ce_weight=1.0, chunk_tokens=3).total
        grads[dtype] = torch.autograd.grad(total, [h, w])
    for low, full in zip(grads[torch.bfloat16], grads[torch.float32], strict=True):
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low.float(), full, rtol=0.05, atol=0.02)


def test_no_counted_token_gives_zero(case):
    h, w, b = leaves(case)
    labels = torch.full((B, T), -100)
    out = token_losses(LMHeadInput(h, w, b), case["ht"] @ case["wt"].T, labels, ForwardKL(),
                       ce_weight=1.0)
    assert out.total.item() == 0.0 and out.tokens == 0
    assert out.kd.item() == 0.0 and out.ce.item() == 0.0
    out.total.backward()
    assert h.grad.abs().max().item() == 0.0


# -- TokenDistillationLoss: the alpha / temperature schema --------------------------------------
def outputs(case):
    zs = case["h"] @ case["w"].T + case["b"]
    zt = case["ht"] @ case["wt"].T
    batch = {"labels": case["labels"], "attention_mask": case["mask"]}
    return zs, zt, batch


def test_alpha_zero_is_cross_entropy_alone(case):
    zs, _, batch = outputs(case)
    a, b = zs.clone().requires_grad_(True), zs.clone().requires_grad_(True)
    loss = TokenDistillationLoss(ForwardKL(), temperature=4.0, alpha=0.0)
    assert not loss.needs_teacher
    out = loss({"logits": a}, None, batch)
    counted = counted_of(case)
    expected = F.cross_entropy(b[counted], case["labels"][counted])
    torch.testing.assert_close(out.total, expected)
    assert set(out.terms) == {"hard"}
    out.total.backward()
    expected.backward()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("t", [1.0, 3.0])
def test_alpha_one_is_t_squared_kd(case, t):
    zs, zt, batch = outputs(case)
    a, b = zs.clone().requires_grad_(True), zs.clone().requires_grad_(True)
    out = TokenDistillationLoss(ForwardKL(), temperature=t, alpha=1.0)(
        {"logits": a}, {"logits": zt}, batch)
    expected = t * t * reference_kl(b, zt, counted_of(case), t)
    torch.testing.assert_close(out.total, expected)
    torch.testing.assert_close(out.terms["kd"], expected.detach())
    assert set(out.terms) == {"kd"}
    out.total.backward()
    expected.backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_total_variation_carries_t_and_alpha_mixes(case):
    zs, zt, batch = outputs(case)
    counted, t = counted_of(case), 2.0
    p, q = F.softmax(zt[counted] / t, -1), F.softmax(zs[counted] / t, -1)
    tvd = 0.5 * (p - q).abs().sum(-1).mean()
    ce = F.cross_entropy(zs[counted], case["labels"][counted])
    out = TokenDistillationLoss(TotalVariation(), temperature=t, alpha=0.25)(
        {"logits": zs}, {"logits": zt}, batch)
    torch.testing.assert_close(out.total, 0.25 * t * tvd + 0.75 * ce)


def test_hidden_states_and_topk_keys_match_logits(case):
    head = nn.Linear(H, V, bias=True)
    with torch.no_grad():
        head.weight.copy_(case["w"])
        head.bias.copy_(case["b"])
    zs, zt, batch = outputs(case)
    loss = TokenDistillationLoss(GeneralizedJSD(0.5), temperature=2.0, alpha=0.6, chunk_tokens=4)
    lean = loss({"hidden_states_last": case["h"], "lm_head": head, "logits": None},
                {"topk": topk_targets(zt, V), "logits": None}, batch)
    full = loss({"logits": zs}, {"logits": zt}, batch)
    torch.testing.assert_close(lean.total, full.total)
    lean.total.backward()
    assert head.weight.grad is not None and head.bias.grad is not None
    t_head = nn.Linear(HT, V, bias=False)
    with torch.no_grad():
        t_head.weight.copy_(case["wt"])
    via_head = loss({"logits": zs}, {"hidden_states_last": case["ht"], "lm_head": t_head}, batch)
    torch.testing.assert_close(via_head.total, full.total)


def test_contract_members():
    loss = TokenDistillationLoss(ReverseKL(), alpha=0.5)
    assert loss.needs_teacher and loss.required_features() == {"logits"}
    assert not TokenDistillationLoss(None, alpha=0.0).needs_teacher


@pytest.mark.parametrize("kwargs, phrase", [
    ({"temperature": 0.0}, "loss.temperature must be > 0, got 0.0"),
    ({"alpha": 1.5}, "loss.alpha must be in [0, 1], got 1.5"),
    ({"divergence": None, "alpha": 0.5}, "loss.alpha=0.5 weighs a distillation term"),
    ({"chunk_tokens": 0}, "loss.chunk_tokens must be a positive integer, got 0"),
    ({"chunk_tokens": 2.5}, "loss.chunk_tokens must be a positive integer, got 2.5"),
    ({"chunk_tokens": True}, "loss.chunk_tokens must be a positive integer, got True"),
])
def test_bad_loss_settings(kwargs, phrase):
    with pytest.raises(ConfigError) as err:
        TokenDistillationLoss(**{"divergence": ForwardKL(), **kwargs})
    assert phrase in str(err.value) and "\n" not in str(err.value)


def test_shift_for_next_token():
    labels = torch.tensor([[-100, 5, 6, 7], [8, 9, 10, 11]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    assert shift_for_next_token(labels).tolist() == [[5, 6, 7, -100], [9, 10, 11, -100]]
    assert shift_for_next_token(labels, mask).tolist() == [[5, 6, 7, -100],
                                                           [9, 10, -100, -100]]


@pytest.mark.parametrize("form", ["logits", "head"])
def test_teacher_with_another_vocab_size_is_refused(case, form):
    wt = torch.randn(V + 3, HT)
    teacher = {"logits": case["ht"] @ wt.T, "head": LMHeadInput(case["ht"], wt)}[form]
    with pytest.raises(ModelError) as err:
        token_losses(LMHeadInput(case["h"], case["w"]), teacher, case["labels"], ForwardKL())
    assert f"teacher logits have {V + 3} vocabulary entries, the student's {V}" in str(err.value)
    assert "\n" not in str(err.value)
