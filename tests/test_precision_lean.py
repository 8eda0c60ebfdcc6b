"""Precision settings, the lean online teacher path and memory-mapped teacher logits."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from transformers import set_seed

from distillkit.data import TextClassificationData, synthetic_nli
from distillkit.engine import Distiller, EngineSettings, frozen
from distillkit.engine import settings as settings_module
from distillkit.engine.schedules import warmup_schedule
from distillkit.errors import ConfigError
from distillkit.losses import DistillationLoss, HiddenMSE, SoftTargetCrossEntropy
from distillkit.losses.mapping import uniform_mapping as uniform
from distillkit.models import bert_student, first_layers, tiny_teacher

LABELS = ["entailment", "neutral", "contradiction"]


@pytest.fixture(scope="module")
def teacher():
    set_seed(0)
    return tiny_teacher(labels=LABELS, num_layers=4)


@pytest.fixture(scope="module")
def data(teacher):
    d = TextClassificationData(partial(synthetic_nli, n_train=64, n_validation=16, n_test=0,
                                       label_noise=0.0),
                               text_column="premise", text_pair_column="hypothesis",
                               labels=LABELS, max_length=32)
    d.tokenize(teacher.tokenizer)
    return d


def _batch(data):
    return next(iter(data.loader("train", 8)))


@pytest.mark.parametrize(("precision", "device_type", "native", "expected"), [
    ("fp32", "cpu", True, None), ("bf16", "cpu", False, torch.bfloat16),
    ("fp16", "cpu", False, torch.float16), ("auto", "cpu", True, torch.bfloat16),
    ("auto", "cpu", False, None),
])
def test_precision_resolution(monkeypatch, precision, device_type, native, expected):
    monkeypatch.setattr(settings_module, "cpu_has_native_bf16", lambda: native)
    s = EngineSettings(precision=precision)
    assert s.autocast_dtype(torch.device(device_type)) == expected
    assert s.teacher_dtype(torch.device(device_type)) == expected  # auto follows the student
    assert EngineSettings(precision=precision, teacher_precision="fp32").teacher_dtype(
        torch.device(device_type)) is None


def test_unknown_teacher_precision_is_refused():
    with pytest.raises(ConfigError, match="trainer.teacher_precision='fp8'"):
        EngineSettings(teacher_precision="fp8").validate()


def test_teacher_batch_size_below_one_is_refused():
    with pytest.raises(ConfigError, match="trainer.teacher_batch_size must be >= 1, got 0"):
        EngineSettings(teacher_batch_size=0).validate()


def test_first_layers_view_matches_full_model_and_leaves_it_intact(teacher, data):
    batch = _batch(data)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model = teacher.model.eval()
    view = first_layers(model, 2)
    with torch.no_grad():
        full = model(**inputs, output_hidden_states=True, output_attentions=True)
        part = view(**inputs, output_hidden_states=True, output_attentions=True)
    assert len(part.hidden_states) == 3 and len(full.hidden_states) == 5
    for i in range(3):
        torch.testing.assert_close(part.hidden_states[i], full.hidden_states[i])
    torch.testing.assert_close(part.attentions[1], full.attentions[1])
    assert model.config.num_hidden_layers == 4 and len(model.bert.encoder.layer) == 4
    assert view.bert.encoder.layer[1] is model.bert.encoder.layer[1]  # shared, not copied
    assert first_layers(model, 4) is model


def test_teacher_depth_only_without_teacher_logits(teacher):
    pairs = uniform(teacher_layers=4, student_layers=2)  # 0-0, 1-2, 2-4
    hidden_only = DistillationLoss(kd=None, alpha=0.0, prediction_weight=0.0,
                                   intermediate={"hidden_mse": HiddenMSE()})
    hidden_only.bind(pairs[:2], student_width=32, teacher_width=32)
    assert hidden_only.teacher_depth() == 2
    with_kd = DistillationLoss(kd=SoftTargetCrossEntropy(), alpha=0.5,
                               intermediate={"hidden_mse": HiddenMSE()})
    with_kd.bind(pairs[:2], student_width=32, teacher_width=32)
    assert with_kd.teacher_depth() is None


def _fit(bundle, teacher_model, data, loss, **opts):
    set_seed(1)
    student = bert_student(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
                           teacher=bundle, labels=LABELS).model
    settings = EngineSettings(batch_size=8, progress=False, device="cpu", max_steps=4,
                              log_every_steps=1, **opts)
    distiller = Distiller(student, teacher_model, loss, partial(torch.optim.AdamW, lr=1e-3),
                          partial(warmup_schedule, name="constant"), settings)
    result = distiller.fit(data.loader("train", 8, shuffle=True, seed=0))
    return student, result, distiller


def test_truncated_teacher_trains_the_same_student(teacher, data):
    """Hidden-state distillation up to layer 2 is unchanged when layers 3-4 never run."""
    pairs = uniform(teacher_layers=4, student_layers=2)[:2]

    def loss():
        out = DistillationLoss(kd=None, alpha=0.0, prediction_weight=0.0,
                               intermediate={"hidden_mse": HiddenMSE()})
        out.bind(pairs, student_width=32, teacher_width=32)
        return out

    full, r_full, _ = _fit(teacher, teacher.model, data, loss(), precision="fp32")
    cut, r_cut, _ = _fit(teacher, first_layers(teacher.model, 2), data, loss(), precision="fp32")
    assert r_full.last_losses == pytest.approx(r_cut.last_losses, rel=1e-5)
    for a, b in zip(full.parameters(), cut.parameters(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_teacher_and_student_train(teacher, data, precision):
    import copy
    model = copy.deepcopy(teacher.model)
    loss = DistillationLoss(kd=SoftTargetCrossEntropy(), alpha=0.5, temperature=2.0)
    _, result, distiller = _fit(teacher, model, data, loss, precision=precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert next(distiller.teacher.parameters()).dtype == dtype  # weights cast, not autocast
    assert distiller.scaler.is_enabled() == (precision == "fp16")
    assert np.isfinite(result.last_losses["total"]) and result.steps == 4


def test_frozen_casts_and_freezes(teacher):
    import copy
    model = frozen(copy.deepcopy(teacher.model).train(), torch.device("cpu"), torch.bfloat16)
    assert not model.training
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in model.parameters())


def test_memory_mapped_logits_reach_the_batches_in_row_order(data, tmp_path):
    n_train = len(data.tokenized["train"])
    logits = np.arange(n_train * 3, dtype=np.float32).reshape(n_train, 3)
    np.save(tmp_path / "l.npy", logits)
    mapped = np.load(tmp_path / "l.npy", mmap_mode="r")
    data.attach_teacher_logits("train", mapped)
    try:
        assert data.teacher_logits["train"] is mapped  # not copied into the dataset
        assert "teacher_logits" not in data.tokenized["train"].column_names
        seen = {}
        loader = data.loader("train", 8, shuffle=True, seed=3, by_length=False)
        ids = data.tokenized["train"]["input_ids"]
        for batch in loader:
            for row, ids_row in zip(batch["teacher_logits"], batch["input_ids"], strict=True):
                seen[int(row[0]) // 3] = [t for t in ids_row.tolist() if t != 0]
        assert sorted(seen) == list(range(n_train))
        assert all(seen[i] == ids[i] for i in seen)  # each example carries its own row
    finally:
        data.teacher_logits.clear()


def test_compile_option_wraps_student_and_teacher(teacher, data):
    import copy
    loss = DistillationLoss(kd=SoftTargetCrossEntropy(), alpha=0.5, temperature=2.0)
    student, result, distiller = _fit(teacher, copy.deepcopy(teacher.model), data, loss,
                                      precision="fp32", compile=True, compile_backend="eager")
    assert result.steps == 4
    assert student._compiled_call_impl is not None  # nn.Module.compile ran, in place
    assert distiller.teacher._compiled_call_impl is not None
    assert not any(k.startswith("_orig_mod") for k in student.state_dict())  # same keys


@pytest.mark.parametrize("teacher_dropout", [True, False])
def test_teacher_dropout_keeps_the_teacher_stochastic(teacher, data, teacher_dropout):
    """Two distillation steps on the same batch: the teacher's logits differ between them with
    trainer.teacher_dropout (its dropout is active) and are identical without."""
    import copy
    data.teacher_logits.clear()  # the live teacher runs, no precomputed logits
    batch = _batch(data)
    set_seed(1)
    student = bert_student(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
                           teacher=teacher, labels=LABELS).model
    loss = DistillationLoss(kd=SoftTargetCrossEntropy(), alpha=0.5, temperature=2.0)
    distiller = Distiller(student, copy.deepcopy(teacher.model), loss,
                          partial(torch.optim.AdamW, lr=1e-3),
                          partial(warmup_schedule, name="constant"),
                          EngineSettings(batch_size=8, progress=False, device="cpu", max_steps=2,
                                         precision="fp32", teacher_dropout=teacher_dropout))
    seen, given = [], []  # the teacher's outputs, and the teacher logits the loss was given
    distiller.teacher.register_forward_hook(
        lambda module, args, out: seen.append(out.logits.detach().clone()))
    loss.register_forward_pre_hook(lambda module, args: given.append(args[1]["logits"].clone()))
    distiller.fit([batch, batch])
    assert len(seen) == len(given) == 2
    for out, read in zip(seen, given, strict=True):
        torch.testing.assert_close(read, out, rtol=0, atol=0)
    if teacher_dropout:
        assert not torch.allclose(seen[0], seen[1])
    else:
        torch.testing.assert_close(seen[0], seen[1], rtol=0, atol=0)


@pytest.mark.e2e
def test_teacher_dropout_bypasses_the_teacher_output_cache(tmp_path):
    import json

    from tests.conftest import TINY_RUN, run_cli
    out = tmp_path / "run"
    proc = run_cli([*TINY_RUN, "trainer.teacher_dropout=true", f"hydra.run.dir={out}"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "teacher-output cache is bypassed" in (out / "distillkit.log").read_text()
    stages = json.loads((out / "metrics.json").read_text())["stages"]
    assert stages["teacher_targets"] == "skipped"
    assert not (tmp_path / "dk-cache" / "teacher_outputs").exists()


def test_teacher_logits_pass_halves_its_batch_on_out_of_memory(teacher, data, tmp_path,
                                                               monkeypatch):
    import copy

    from distillkit.teachers import outputs as teacher_outputs
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path))
    real = teacher_outputs.predict_logits
    sizes = []

    def predict(model, loader, *args, **kwargs):
        sizes.append(len(next(iter(loader.batch_sampler))))
        if sizes[-1] > 8:
            raise torch.OutOfMemoryError("fake: batch too large")
        return real(model, loader, *args, **kwargs)

    monkeypatch.setattr(teacher_outputs, "predict_logits", predict)
    bundle = copy.deepcopy(teacher)
    settings = EngineSettings(device="cpu", precision="fp32", progress=False,
                              teacher_batch_size=32)
    data.teacher_logits.clear()
    try:
        sources = teacher_outputs.attach_teacher_logits(bundle, data, settings)
        assert sources == {"train": "computed"} and sizes == [32, 16, 8]
        mapped = data.teacher_logits["train"]
        assert isinstance(mapped, np.memmap)  # read back from disk, not kept in RAM
        direct = real(bundle.model, data.loader("train", 64), torch.device("cpu"),
                      progress=False).numpy()
        from distillkit.data.sampling import restore_order
        direct = restore_order(data.loader("train", 64).batch_sampler, direct)
        np.testing.assert_allclose(mapped, direct, rtol=1e-5, atol=1e-6)
    finally:
        data.teacher_logits.clear()
