"""The loss contract (distillkit.losses.contract.KDLoss): every loss option is one, the
defaults do what the contract documents, and the engine calls it."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from distillkit.data import TextClassificationData, synthetic_nli
from distillkit.engine import Distiller, EngineSettings
from distillkit.errors import ConfigError
from distillkit.losses import KDLoss, LossOutput, MetaTeacherLoss
from distillkit.losses.mapping import LayerPair
from distillkit.models import bert_student, tiny_teacher
from tests.conftest import CONF

LOSS_OPTIONS = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))
LABELS = ["entailment", "neutral", "contradiction"]


def _loss(compose_cfg, option: str) -> KDLoss:
    return instantiate(compose_cfg([f"loss={option}"]).loss)


class Minimal(KDLoss):
    """A loss implementing only forward: everything else is the contract's default."""

    def forward(self, student, teacher, batch):
        return LossOutput(total=student["logits"].sum())


def test_the_loss_options_are_found():
    assert {"kd", "hard", "mmd", "tinybert", "seq_kd", "step_by_step"} <= set(LOSS_OPTIONS)


@pytest.mark.parametrize("option", LOSS_OPTIONS)
def test_every_loss_option_is_a_kdloss(compose_cfg, option):
    assert isinstance(_loss(compose_cfg, option), KDLoss)


def test_the_meta_teacher_loss_is_a_kdloss_without_teacher():
    loss = MetaTeacherLoss(width=8, num_domains=2, domain_loss_weight=1.0)
    assert isinstance(loss, KDLoss) and not loss.needs_teacher
    assert loss.required_features() == {"logits", "hidden_states"}


def test_a_loss_must_implement_forward():
    with pytest.raises(TypeError, match="forward"):
        KDLoss()


def test_defaults_of_the_contract():
    loss = Minimal()
    assert loss.needs_teacher is True
    assert loss.required_features() == {"logits"}
    assert loss.teacher_depth() is None
    assert loss.takes_mapping is False
    assert loss.describe_layers() is None
    assert loss.layer_plan() == [] and loss.layer_terms() == []
    assert loss.sequence_kd is None
    assert loss.set_progress(3, 10) is None
    assert loss.bind([], 8, 16) is None  # no mapping: nothing to refuse


def test_default_bind_refuses_a_mapping_in_one_line():
    with pytest.raises(ConfigError) as err:
        Minimal().bind([LayerPair(1, 2)], student_width=8, teacher_width=16)
    assert str(err.value) == "loss Minimal takes no layer mapping; use mapping=none"


def test_kd_needs_the_teacher_and_only_logits(compose_cfg):
    loss = _loss(compose_cfg, "kd")
    assert loss.needs_teacher and loss.required_features() == {"logits"}
    assert loss.teacher_depth() is None and not loss.takes_mapping
    assert loss.layer_terms() == [] and loss.describe_layers() == "none"


@pytest.mark.parametrize("option", ["hard", "seq_hard", "seq_kd", "step_by_step"])
def test_losses_without_teacher_outputs(compose_cfg, option):
    assert not _loss(compose_cfg, option).needs_teacher


def test_seq_kd_carries_its_sequence_settings(compose_cfg):
    loss = _loss(compose_cfg, "seq_kd")
    assert loss.sequence_kd == {"num_beams": 4, "n_best": 1, "max_new_tokens": 32,
                                "batch_size": 64, "mix_original": False}
    assert _loss(compose_cfg, "seq_word_kd").sequence_kd is None


@pytest.mark.parametrize(("option", "terms", "plan"), [
    ("mmd", ["hidden_mse", "mmd"],
     [("hidden_mse", LayerPair(0, 0), 1.0), ("mmd", LayerPair(0, 0), 1.0),
      ("hidden_mse", LayerPair(2, 4), 1.0), ("mmd", LayerPair(2, 4), 1.0)]),
    # attention maps exist for layers 1..L only: no attention term on the embeddings pair
    ("tinybert", ["hidden_mse", "attention_mse"],
     [("hidden_mse", LayerPair(0, 0), 1.0), ("hidden_mse", LayerPair(2, 4), 1.0),
      ("attention_mse", LayerPair(2, 4), 1.0)]),
])
def test_intermediate_losses_take_a_mapping_and_plan_the_bound_pairs(compose_cfg, option,
                                                                     terms, plan):
    loss = _loss(compose_cfg, option)
    assert loss.takes_mapping and loss.layer_terms() == terms
    assert loss.layer_plan() == [] and loss.required_features() == {"logits"}
    loss.bind([LayerPair(0, 0), LayerPair(2, 4)], student_width=8, teacher_width=16)
    assert loss.layer_plan() == plan
    assert "hidden_mse@s2-t4 x1" in loss.describe_layers()
    assert "s0-t0 8->16" in loss.describe_layers()  # the projection of the embeddings pair
    assert loss.teacher_depth() is None  # it reads the teacher's logits too: all layers run


def test_hidden_only_loss_reads_teacher_layers_up_to_its_deepest_pair(compose_cfg):
    loss = _loss(compose_cfg, "hidden")
    loss.bind([LayerPair(1, 2), LayerPair(2, 3)], student_width=8, teacher_width=8)
    assert loss.teacher_depth() == 3
    assert loss.required_features() == {"logits", "hidden_states"}


class Recording(KDLoss):
    """Hard-label loss that records every set_progress call."""

    def __init__(self) -> None:
        super().__init__()
        self.progress: list[tuple[int, int]] = []

    @property
    def needs_teacher(self) -> bool:
        return False

    def set_progress(self, step: int, total_steps: int) -> None:
        self.progress.append((step, total_steps))

    def forward(self, student, teacher, batch):
        assert teacher is None
        return LossOutput(total=F.cross_entropy(student["logits"], batch["labels"]))


def _tiny_fit(loss, **settings):
    data = TextClassificationData(partial(synthetic_nli, n_train=16, n_validation=8, n_test=0),
                                  text_column="premise", text_pair_column="hypothesis",
                                  labels=LABELS, max_length=32)
    teacher = tiny_teacher(labels=LABELS)
    data.tokenize(teacher.tokenizer)
    student = bert_student(2, 32, 2, 64, teacher=teacher, labels=LABELS).model
    distiller = Distiller(student, teacher.model, loss, partial(torch.optim.AdamW, lr=1e-3),
                          lambda opt, num_training_steps: torch.optim.lr_scheduler.LambdaLR(
                              opt, lambda _: 1.0),
                          EngineSettings(batch_size=8, progress=False, device="cpu",
                                         **settings))
    return distiller, distiller.fit(data.loader("train", 8, shuffle=True))


def test_engine_calls_set_progress_before_every_optimizer_step():
    loss = Recording()
    distiller, result = _tiny_fit(loss, max_steps=3, grad_accum_steps=2)
    assert result.steps == 3
    assert loss.progress == [(0, 3), (1, 3), (2, 3)]  # once per step, not per micro-batch
    assert distiller.teacher is None  # needs_teacher False: the teacher never runs


def test_engine_refuses_a_loss_outside_the_contract():
    class Plain(torch.nn.Module):
        def forward(self, student, teacher, batch):
            return LossOutput(total=student["logits"].sum())

    with pytest.raises(TypeError, match="KDLoss, not Plain"):
        Distiller(torch.nn.Linear(2, 2), None, Plain(), torch.optim.SGD, None,
                  EngineSettings(device="cpu"))
