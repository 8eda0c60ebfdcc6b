"""loss=causal_hidden (task=causal_lm): token-level KD plus a hidden-state MSE over the mapping
group's layer pairs, with a projection when the widths differ; the task resolves the mapping,
binds the loss, keeps the teacher live instead of its top-k cache, and trains the projection."""

from __future__ import annotations

import json
import logging
import math
from functools import partial

import pytest
import torch

from distillkit.causal.hidden_loss import HiddenTokenDistillationLoss, causal_hidden
from distillkit.engine import Distiller, EngineSettings
from distillkit.engine.schedules import warmup_schedule
from distillkit.errors import ConfigError
from distillkit.losses.mapping import LayerPair, explicit_mapping
from distillkit.run import context
from tests.conftest import one_error_line, run_cli

# batch 1, 3 positions, the last one padding (never counted)
MASK = torch.tensor([[1, 1, 0]])
LABELS = torch.tensor([[1, 0, -100]])


def _hidden(*rows):
    return tuple(torch.tensor([r], dtype=torch.float32) for r in rows)


# student: embeddings + 1 layer; teacher: embeddings + 2 layers; width 2 on both sides
STUDENT_H = _hidden([[1, 1], [1, 1], [7, 7]], [[1, 0], [0, 2], [9, 9]])
TEACHER_H = _hidden([[1, 1], [1, -1], [0, 0]], [[3, 3], [3, 3], [3, 3]], [[0, 0], [0, 0], [5, 5]])
# per-token MSE over the width, real tokens only:
#   s0-t0: token 0 (0+0)/2 = 0, token 1 (0+4)/2 = 2  -> mean 1.0
#   s1-t2: token 0 (1+0)/2 = 0.5, token 1 (0+4)/2 = 2 -> mean 1.25
MSE_00, MSE_12 = 1.0, 1.25


def _outputs(hidden):
    # zero logits over 2 tokens: CE = ln 2 per counted token, and teacher = student (KD = 0)
    return {"logits": torch.zeros(1, 3, 2), "hidden_states": hidden}


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_hidden_term_against_a_hand_computation(alpha):
    loss = causal_hidden("fkl", alpha=alpha, hidden_weight=0.5)
    pairs = explicit_mapping([{"student": 0, "teacher": 0, "weight": 3.0}, [1, 2]],
                             teacher_layers=2, student_layers=1)
    loss.bind(pairs, student_width=2, teacher_width=2)
    out = loss(_outputs(STUDENT_H), _outputs(TEACHER_H),
               {"labels": LABELS, "attention_mask": MASK})
    hidden = 0.5 * (3.0 * MSE_00 + 1.0 * MSE_12)  # 2.125
    assert float(out.terms["hidden_mse"]) == pytest.approx(hidden)
    assert float(out.terms["hard"]) == pytest.approx(math.log(2))
    assert float(out.total) == pytest.approx((1 - alpha) * math.log(2) + hidden)
    assert loss.layer_plan() == [("hidden_mse", LayerPair(0, 0, weight=3.0), 1.5),
                                 ("hidden_mse", LayerPair(1, 2), 0.5)]
    assert loss.required_features() == {"logits", "hidden_states"}
    assert loss.teacher_features() == {"hidden_states": frozenset({0, 2})}
    assert loss.needs_teacher  # also at alpha 0: the hidden term reads the teacher


def test_projection_maps_the_student_width_and_trains():
    loss = causal_hidden("fkl", alpha=0.0, projection=torch.nn.Linear)
    loss.bind([LayerPair(1, 2)], student_width=1, teacher_width=2)
    proj = loss.hidden.projections["s1-t2"]
    assert isinstance(proj, torch.nn.Linear) and (proj.in_features, proj.out_features) == (1, 2)
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([[2.0], [-1.0]]))
        proj.bias.copy_(torch.tensor([0.0, 1.0]))
    student = _hidden([[0], [0], [0]], [[1], [2], [4]])
    # projected: [2, 0], [4, -1] (padding: [8, -3]); teacher: [0, 0], [0, 0]
    # per token (4 + 0)/2 = 2, (16 + 1)/2 = 8.5 -> mean 5.25
    out = loss(_outputs(student), _outputs(TEACHER_H), {"labels": LABELS, "attention_mask": MASK})
    assert float(out.terms["hidden_mse"]) == pytest.approx(5.25)
    assert {id(p) for p in proj.parameters()} <= {id(p) for p in loss.parameters()}
    out.total.backward()
    # d/dW of mean_t mean_j (W h_t + b - g_t)_j^2 over the 2 real tokens, by hand
    expected = torch.tensor([[(2 * 1 + 4 * 2) / 2], [(0 * 1 - 1 * 2) / 2]])
    torch.testing.assert_close(proj.weight.grad, expected)


@pytest.mark.parametrize(("options", "phrase"), [
    ({"hidden_weight": -1.0}, "loss.hidden_weight must be >= 0, got -1.0"),
])
def test_bad_hidden_weight_is_refused(options, phrase):
    with pytest.raises(ConfigError, match=phrase):
        causal_hidden(**options)


@pytest.mark.parametrize(("pairs", "widths", "phrase"), [
    ([LayerPair(1, 2)], (16, 32), "set loss.projection"),  # differing widths, no projection
    ([], (16, 16), "gives them no pairs; choose a mapping"),  # mapping=none
    ([LayerPair(1, 2, loss="attention_kl")], (16, 16), "its intermediate terms: hidden_mse"),
])
def test_bad_bindings_are_refused(pairs, widths, phrase):
    with pytest.raises(ConfigError, match=phrase):
        causal_hidden().bind(pairs, *widths)


def test_hidden_weight_zero_is_the_token_loss_alone():
    loss = causal_hidden(hidden_weight=0.0)
    loss.bind([LayerPair(0, 0)], student_width=2, teacher_width=2)
    assert not loss.takes_mapping and loss.layer_plan() == []
    assert loss.required_features() == {"logits"} and loss.teacher_features() == {}
    out = loss(_outputs(STUDENT_H), _outputs(TEACHER_H), {"labels": LABELS, "attention_mask": MASK})
    assert "hidden_mse" not in out.terms


# the tiny experiment with a 4-layer teacher (width 32) and a 2-layer student (width 16)
TINY = ["experiment=tiny_causal_lm", "loss=causal_hidden", "teacher.num_layers=4",
        "student.num_layers=2"]


def _ctx(compose_cfg, tmp_path, monkeypatch, *overrides):
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path / "cache"))
    ctx = context(compose_cfg([*TINY, *overrides]), tmp_path)
    ctx.task.build(ctx)
    return ctx


@pytest.mark.parametrize(("mapping", "pairs"), [
    ([], [(0, 0), (1, 2), (2, 4)]),  # the option's default: uniform, round(s * 4 / 2)
    (["mapping=uniform"], [(0, 0), (1, 2), (2, 4)]),
    (["mapping=last", "mapping.k=2"], [(1, 3), (2, 4)]),
    (["mapping=explicit", "mapping.pairs=[[0,0],[1,3]]"], [(0, 0), (1, 3)]),
])
def test_the_task_resolves_the_mapping_and_binds_the_loss(compose_cfg, tmp_path, monkeypatch,
                                                          mapping, pairs):
    ctx = _ctx(compose_cfg, tmp_path, monkeypatch, *mapping)
    assert [(p.student, p.teacher) for p in ctx.pairs] == pairs
    assert isinstance(ctx.loss, HiddenTokenDistillationLoss)
    assert [(p.student, p.teacher) for _, p, _ in ctx.loss.layer_plan()] == pairs
    assert sorted(ctx.loss.hidden.projections) == [f"s{s}-t{t}" for s, t in pairs]
    assert all((m.in_features, m.out_features) == (16, 32)
               for m in ctx.loss.hidden.projections.values())


def test_a_token_loss_with_a_mapping_is_refused(compose_cfg, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="takes no layer mapping; use mapping=none"):
        _ctx(compose_cfg, tmp_path, monkeypatch, "loss=causal_kd", "mapping=uniform")


def test_the_teacher_runs_live_instead_of_its_topk_cache_and_the_projection_trains(
        compose_cfg, tmp_path, monkeypatch, caplog):
    ctx = _ctx(compose_cfg, tmp_path, monkeypatch, "trainer.teacher_topk=4")
    with caplog.at_level(logging.INFO):
        assert ctx.task.teacher_targets(ctx) == "skipped"
    assert not ctx.cached_logits and "teacher_topk" not in ctx.details
    assert "the loss reads the teacher's hidden states" in caplog.text
    student, teacher = ctx.task.train_modules(ctx)
    assert teacher is not None
    projections = ctx.loss.hidden.projections
    before = {k: m.weight.detach().clone() for k, m in projections.items()}
    distiller = Distiller(student, teacher, ctx.loss, partial(torch.optim.AdamW, lr=1e-2),
                          partial(warmup_schedule, name="constant"),
                          EngineSettings(batch_size=8, max_steps=2, progress=False,
                                         device="cpu"))
    result = distiller.fit(ctx.task.train_loader(ctx))
    assert result.steps == 2 and set(result.last_losses) == {"kd", "hard", "hidden_mse",
                                                             "total"}
    assert all(not torch.equal(before[k], m.weight) for k, m in projections.items())


@pytest.mark.e2e
def test_cli_run_writes_the_pairs_to_mapping_json(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(["experiment=tiny_causal_lm", "loss=causal_hidden", "loss.hidden_weight=2",
                    "trainer.max_steps=2", "trainer.eval_every_steps=2",
                    "trainer.progress=false", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # 2-layer teacher, 1-layer student, uniform: 0-0, 1-2
    mapping = json.loads((run_dir / "mapping.json").read_text())
    assert mapping == {"pairs": [{"student": 0, "teacher": 0}, {"student": 1, "teacher": 2}],
                       "plan": [{"term": "hidden_mse", "student": 0, "teacher": 0, "weight": 2.0},
                                {"term": "hidden_mse", "student": 1, "teacher": 2,
                                 "weight": 2.0}]}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["train"]["last_losses"]) == {"kd", "hard", "hidden_mse", "total"}


@pytest.mark.e2e
def test_cli_out_of_range_explicit_pair_is_one_error_line(tmp_path):
    proc = run_cli(["experiment=tiny_causal_lm", "loss=causal_hidden", "mapping=explicit",
                    "mapping.pairs=[[0,0],[1,5]]", f"hydra.run.dir={tmp_path / 'r'}"],
                   cwd=tmp_path)
    one_error_line(proc.returncode, proc.stdout + proc.stderr,
                   ["mapping pair 1 (student 1, teacher 5) is out of range",
                    "teacher indices in [0, 2]", "fix mapping.pairs"])
    assert not (tmp_path / "r" / "metrics.json").exists()
