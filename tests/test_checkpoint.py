"""Checkpoints: exact in-process resume, atomic files, last-K + best pruning, finding and
refusing checkpoints."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from distillkit.data import TextClassificationData, synthetic_nli
from distillkit.engine import Distiller, EngineSettings
from distillkit.engine.schedules import warmup_schedule
from distillkit.losses import DistillationLoss, KDLoss, KLDivergence
from distillkit.models import bert_student, tiny_teacher
from distillkit.runtime.checkpoint import (
    CheckpointError,
    CheckpointManager,
    check_resumable,
    checkpoint_files,
    find_checkpoint,
    flat_config,
    load_checkpoint,
)

LABELS = ["entailment", "neutral", "contradiction"]


@pytest.fixture(scope="module")
def data():
    d = TextClassificationData(partial(synthetic_nli, n_train=80, n_validation=32, n_test=0,
                                       label_noise=0.0),
                               text_column="premise", text_pair_column="hypothesis",
                               labels=LABELS, max_length=32)
    d.tokenize(tiny_teacher(labels=LABELS).tokenizer)
    return d


class Recorder:
    """A checkpoint sink that keeps every payload in memory (deep-copied like a file would)."""

    def __init__(self, every: int):
        self.every, self.states = every, {}

    def due(self, step, evaluated):
        return step % self.every == 0

    def save(self, step, state, metric):
        self.states[step] = torch.load(_roundtrip(state), weights_only=True)

    def latest(self):
        return max(self.states, default=None)


def _roundtrip(state):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


class Projection(KDLoss):
    """A loss with a trainable parameter (like intermediate-layer projections)."""

    def __init__(self):
        super().__init__()
        self.inner = DistillationLoss(kd=KLDivergence(), temperature=2.0, alpha=0.5)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, student, teacher, batch):
        out = self.inner({"logits": student["logits"] * self.scale}, teacher, batch)
        return out


def _fit(data, sink=None, resume=None, steps=13):
    torch.manual_seed(0)
    teacher = tiny_teacher(labels=LABELS)
    student = bert_student(2, 32, 2, 64, teacher=teacher, labels=LABELS, dropout=0.2).model
    loss = Projection()
    settings = EngineSettings(batch_size=16, max_steps=steps, log_every_steps=1,
                              eval_every_steps=4, progress=False, device="cpu")
    distiller = Distiller(student, teacher.model, loss, partial(torch.optim.AdamW, lr=3e-3),
                          partial(warmup_schedule, name="linear", warmup_ratio=0.2), settings,
                          checkpoints=sink)
    torch.manual_seed(1)  # the training RNG (dropout) differs from the init RNG
    loader = data.loader("train", 16, shuffle=True, seed=7)
    result = distiller.fit(loader, data.loader("eval", 32), resume=resume)
    return result, student, loss


@pytest.mark.parametrize("resume_step", [3, 5, 10])
def test_resume_mid_epoch_matches_uninterrupted_run(data, resume_step):
    # 80 examples / 16 = 5 batches per epoch: step 3 and 10 are mid-epoch (10 in epoch 2),
    # step 5 is an epoch's last batch
    sink = Recorder(every=1)
    full, student_a, loss_a = _fit(data, sink=sink)
    state = sink.states[resume_step]
    assert state["step"] == resume_step
    resumed, student_b, loss_b = _fit(data, resume=state)
    assert resumed.steps == full.steps == 13
    assert resumed.last_losses == full.last_losses
    assert resumed.evals == [{**e, "seconds": r["seconds"]}
                             for e, r in zip(full.evals, resumed.evals, strict=True)]
    for (name, a), b in zip(student_a.state_dict().items(), student_b.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(loss_a.scale, loss_b.scale) and loss_b.scale.item() != 1.0


def test_resume_refuses_a_different_step_budget(data):
    sink = Recorder(every=4)
    _fit(data, sink=sink, steps=8)
    with pytest.raises(Exception, match="run of 8 steps, this run has 13"):
        _fit(data, resume=sink.states[4], steps=13)


def _state(step):
    return {"step": step, "student": {"w": torch.full((2,), float(step))}}


def test_manager_keeps_last_k_and_best_and_writes_atomically(tmp_path):
    manager = CheckpointManager(tmp_path / "ck", every_steps=2, keep_last=2)
    assert manager.due(4, evaluated=False) and manager.due(3, evaluated=True)
    assert not manager.due(3, evaluated=False)
    metrics = {2: None, 3: 0.9, 4: None, 6: 0.5, 8: None}
    for step, metric in metrics.items():
        manager.save(step, _state(step), metric)
    names = [p.name for p in checkpoint_files(tmp_path / "ck")]
    assert names == ["step-00000003.pt", "step-00000006.pt", "step-00000008.pt"]
    assert manager.best().name == "step-00000003.pt"
    assert not [p for p in (tmp_path / "ck").iterdir() if p.name.endswith(".tmp")]
    index = json.loads((tmp_path / "ck" / "index.json").read_text())
    assert index["best"] == "step-00000003.pt"
    loaded = load_checkpoint(tmp_path / "ck" / "step-00000008.pt")
    assert torch.equal(loaded["student"]["w"], torch.full((2,), 8.0))
    # a new manager on the same folder (a resumed run) remembers the best
    again = CheckpointManager(tmp_path / "ck", every_steps=2, keep_last=1)
    again.save(10, _state(10), 0.7)
    assert [p.name for p in checkpoint_files(tmp_path / "ck")] == [
        "step-00000003.pt", "step-00000010.pt"]


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path):
    manager = CheckpointManager(tmp_path / "ck", every_steps=1, keep_last=2)
    manager.save(1, _state(1), None)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        manager.save(2, {"step": 2, "bad": Unpicklable()}, None)
    assert [p.name for p in (tmp_path / "ck").iterdir() if p.suffix != ".json"] == [
        "step-00000001.pt"]


def test_disk_full_names_the_step_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno
    import os

    manager = CheckpointManager(tmp_path / "ck", every_steps=1, keep_last=2)
    manager.save(1, _state(1), None)

    def full(obj, fh):  # half a file, then the device is full
        fh.write(b"x" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match=r"checkpoint at step 2 not saved: cannot write "
                                              r".*step-00000002.pt: No space left on device.*"
                                              r"step-00000001.pt, is intact.*resume=auto"):
        manager.save(2, _state(2), None)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "index.json", "step-00000001.pt"], "no half-written file stays"
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(tmp_path / "ck" / "step-00000001.pt")["student"]["w"],
                       torch.full((2,), 1.0))


def test_find_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert find_checkpoint(None, run) is None
    assert find_checkpoint("auto", run) is None  # nothing yet: start fresh
    manager = CheckpointManager(run / "checkpoints", every_steps=1, keep_last=3)
    for step in (1, 2):
        manager.save(step, _state(step), None)
    newest = run / "checkpoints" / "step-00000002.pt"
    assert find_checkpoint("auto", run) == newest
    assert find_checkpoint(str(run), tmp_path / "elsewhere") == newest
    assert find_checkpoint(str(run / "checkpoints"), tmp_path) == newest
    first = run / "checkpoints" / "step-00000001.pt"
    assert find_checkpoint(str(first), tmp_path) == first
    with pytest.raises(CheckpointError, match="no checkpoint there"):
        find_checkpoint(str(tmp_path / "missing"), run)


def test_unreadable_checkpoint_named_in_error(tmp_path):
    bad = tmp_path / "step-00000001.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*step-00000001.pt"):
        load_checkpoint(bad)


def test_resume_with_a_different_config_is_refused(tmp_path):
    saved = flat_config({"loss": {"temperature": 4.0}, "trainer": {"progress": True},
                         "resume": None})
    same_but_how = flat_config({"loss": {"temperature": 4.0}, "trainer": {"progress": False},
                                "resume": "auto"})
    check_resumable({"config": saved}, same_but_how, tmp_path)
    changed = flat_config({"loss": {"temperature": 8.0}, "trainer": {"progress": True}})
    with pytest.raises(CheckpointError, match=r"loss.temperature: 4.0 -> 8.0"):
        check_resumable({"config": saved}, changed, tmp_path)
