"""The generic engine on tiny models: it trains, distils, logs and stops on bad losses."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter
from transformers import set_seed

from distillkit.data import TextClassificationData, synthetic_nli
from distillkit.engine import Distiller, EngineSettings
from distillkit.engine.schedules import warmup_schedule
from distillkit.errors import TrainingError
from distillkit.losses import DistillationLoss, KDLoss, KLDivergence, LossOutput
from distillkit.models import bert_student, tiny_teacher

LABELS = ["entailment", "neutral", "contradiction"]


@pytest.fixture(scope="module")
def data():
    d = TextClassificationData(partial(synthetic_nli, n_train=96, n_validation=32, n_test=0,
                                       label_noise=0.0),
                               text_column="premise", text_pair_column="hypothesis",
                               labels=LABELS, max_length=32)
    d.tokenize(tiny_teacher(labels=LABELS).tokenizer)
    return d


def _distiller(teacher, student, loss, lr=3e-3, **settings):
    opts = {"batch_size": 16, "eval_batch_size": 32, "progress": False, "log_every_steps": 1,
            "device": "cpu", **settings}
    return Distiller(student, teacher, loss, partial(torch.optim.AdamW, lr=lr),
                     partial(warmup_schedule, name="constant"), EngineSettings(**opts),
                     writer=settings.pop("writer", None) if "writer" in settings else None)


def _mean_kl(student, teacher, loader):
    student.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            total += KLDivergence()(student(**inputs).logits, teacher(**inputs).logits).item()
            n += 1
    return total / n


def test_distillation_moves_student_towards_teacher(data):
    set_seed(0)
    teacher = tiny_teacher(labels=LABELS)
    student = bert_student(2, 32, 2, 64, teacher=teacher, labels=LABELS).model
    teacher.model.eval()
    loader = data.loader("eval", 32)
    before = _mean_kl(student, teacher.model, loader)
    loss = DistillationLoss(kd=KLDivergence(), temperature=1.0, alpha=1.0)
    result = _distiller(teacher.model, student, loss, epochs=4).fit(data.loader("train", 16))
    after = _mean_kl(student, teacher.model, loader)
    assert result.steps == 4 * 6
    assert after < 0.5 * before, (before, after)


def test_hard_loss_never_runs_the_teacher(data):
    class Exploding(torch.nn.Module):
        def forward(self, **_):
            raise AssertionError("teacher called")

    teacher = tiny_teacher(labels=LABELS)
    student = bert_student(2, 32, 2, 64, teacher=teacher, labels=LABELS).model
    loss = DistillationLoss(kd=None, alpha=0.0)
    d = _distiller(Exploding(), student, loss, max_steps=3)
    assert d.teacher is None
    assert d.fit(data.loader("train", 16)).steps == 3


def test_grad_accumulation_counts_optimizer_steps(data):
    teacher = tiny_teacher(labels=LABELS)
    student = bert_student(2, 32, 2, 64, teacher=teacher, labels=LABELS).model
    loss = DistillationLoss(kd=KLDivergence(), alpha=0.5)
    d = _distiller(teacher.model, student, loss, grad_accum_steps=2, epochs=2)
    assert d.fit(data.loader("train", 16)).steps == 2 * 3  # 6 batches / 2 per step, 2 epochs


def test_non_finite_loss_stops_with_clear_error(data):
    class NanLoss(KDLoss):
        needs_teacher = False

        def forward(self, student, teacher, batch):
            return LossOutput(total=student["logits"].sum() * float("nan"), terms={})

    teacher = tiny_teacher(labels=LABELS)
    student = bert_student(2, 32, 2, 64, teacher=teacher, labels=LABELS).model
    with pytest.raises(TrainingError, match="non-finite loss at step 1"):
        _distiller(None, student, NanLoss(), max_steps=5).fit(data.loader("train", 16))


def test_first_non_finite_step_is_found_between_logs_and_never_checkpointed(data):
    class NanFromStep3(KDLoss):
        """Hard-label loss whose kd term turns NaN at the third forward pass."""

        needs_teacher = False

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, student, teacher, batch):
            self.calls += 1
            hard = torch.nn.functional.cross_entropy(student["logits"], batch["labels"])
            kd = hard.detach() * (float("nan") if self.calls >= 3 else 0.0)
            return LossOutput(total=hard + kd, terms={"hard": hard.detach(), "kd": kd})

    class Every(list):
        def due(self, step, evaluated):
            return True

        def save(self, step, state, metric):
            self.append(step)

        def latest(self):
            return f"step-{self[-1]}" if self else None

    teacher = tiny_teacher(labels=LABELS)
    student = bert_student(2, 32, 2, 64, teacher=teacher, labels=LABELS).model
    sink = Every()
    d = _distiller(None, student, NanFromStep3(), max_steps=6, log_every_steps=5)
    d.checkpoints = sink
    with pytest.raises(TrainingError, match=r"non-finite loss at step 3 \(total=nan, "
                                            r"hard=[0-9.]+, kd=nan\).*newest: step-2\).*"
                                            r"trainer.optimizer.lr.*max_grad_norm.*fp32"):
        d.fit(data.loader("train", 16))
    assert sink == [1, 2], "no checkpoint after the non-finite step"


def test_every_term_and_lr_logged_to_tensorboard(data, tmp_path):
    teacher = tiny_teacher(labels=LABELS)
    student = bert_student(2, 32, 2, 64, teacher=teacher, labels=LABELS).model
    writer = SummaryWriter(log_dir=str(tmp_path))
    loss = DistillationLoss(kd=KLDivergence(), alpha=0.5)
    d = Distiller(student, teacher.model, loss, partial(torch.optim.AdamW, lr=1e-3),
                  partial(warmup_schedule, name="linear", warmup_ratio=0.5),
                  EngineSettings(batch_size=16, max_steps=4, log_every_steps=1,
                                 eval_every_steps=2, progress=False, device="cpu"),
                  writer=writer)
    result = d.fit(data.loader("train", 16), data.loader("eval", 32))
    writer.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss/kd", "train/loss/hard", "train/loss/total", "train/lr",
            "train/grad_norm", "eval/student/accuracy"} <= tags
    norms = [e.value for e in acc.Scalars("train/grad_norm")]
    assert len(norms) == 4 and all(math.isfinite(v) and v > 0 for v in norms)
    lrs = [e.value for e in acc.Scalars("train/lr")]
    assert lrs[0] < lrs[1], "warm-up raises the learning rate"
    assert [e["step"] for e in result.evals] == [2, 4]


def test_invalid_settings_rejected():
    from distillkit.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.batch_size"):
        EngineSettings(batch_size=0).validate()
    with pytest.raises(ConfigError, match="trainer.precision"):
        EngineSettings(precision="fp8").validate()
