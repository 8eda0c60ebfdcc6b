"""The offline default's pieces: SNLI splits, students copied from the teacher, teacher cache."""

from __future__ import annotations

import json

import pytest
import torch

from distillkit.data import snli
from distillkit.errors import ConfigError
from distillkit.models import student_from_teacher, tiny_teacher
from distillkit.runtime.assets import ASSETS, MARKER
from tests.conftest import TINY_RUN, run_cli

LABELS = ["entailment", "neutral", "contradiction"]


@pytest.fixture
def fake_snli(tmp_path, monkeypatch):
    """A cached 'snli' asset with 40 training pairs and 6 test pairs (no download)."""
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "assets" / "snli"
    root.mkdir(parents=True)

    def rows(n, prefix):
        return "".join(json.dumps({"sentence1": f"{prefix} premise {i}", "sentence2": "h",
                                   "gold_label": LABELS[i % 3] if i % 10 else "-",
                                   "pairID": f"{prefix}{i}"}) + "\n" for i in range(n))

    (root / "snli_1.0_train_subset.jsonl").write_text(rows(40, "tr"))
    (root / "snli_1.0_test.jsonl").write_text(rows(6, "te"))
    (root / MARKER).write_text(json.dumps({"sha256": ASSETS["snli"].sha256}))
    return root


def test_snli_splits_are_deterministic_and_disjoint(fake_snli):
    a = snli(train_size=20, validation_size=8, seed=1, fetch=False)
    b = snli(train_size=20, validation_size=8, seed=1, fetch=False)
    assert {k: len(v) for k, v in a.items()} == {"train": 20, "validation": 8, "test": 6,
                                                  "transfer": 12}
    assert a["validation"]["pairID"] == b["validation"]["pairID"]
    ids = [set(a[s]["pairID"]) for s in ("train", "validation", "transfer")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert snli(train_size=20, validation_size=8, seed=2, fetch=False)["validation"][
        "pairID"] != a["validation"]["pairID"]


def test_student_copies_chosen_teacher_layers():
    teacher = tiny_teacher(num_layers=4, labels=LABELS)
    student = student_from_teacher([1, 3], teacher=teacher, labels=LABELS)
    assert student.model.config.num_hidden_layers == 2
    t_layers, s_layers = teacher.model.bert.encoder.layer, student.model.bert.encoder.layer
    for s_i, t_i in enumerate([1, 3]):
        for (name, p), q in zip(s_layers[s_i].named_parameters(), t_layers[t_i].parameters(),
                                strict=True):
            assert torch.equal(p, q), name
    assert student.model.bert.encoder.layer[0] is not t_layers[1], "a copy, not shared"
    assert len(teacher.model.bert.encoder.layer) == 4, "teacher untouched"


@pytest.mark.parametrize("layers", [[], [0, 4], [2, 1], [1, 1]])
def test_student_layer_choice_validated(layers):
    teacher = tiny_teacher(num_layers=4, labels=LABELS)
    with pytest.raises(ConfigError, match=r"student.layers.*\[0, 3\]"):
        student_from_teacher(layers, teacher=teacher, labels=LABELS)


@pytest.mark.e2e
def test_teacher_finetuned_once_then_reused(tmp_path):
    args = [*TINY_RUN, "trainer.max_steps=2", "export_student=false", "student=copy3",
            "student.layers=[0]"]
    first = run_cli([*args, f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "fine-tuning teacher" in first.stdout
    second = run_cli([*args, "loss.temperature=2", f"hydra.run.dir={tmp_path / 'b'}"],
                     cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "reusing fine-tuned teacher" in second.stdout
    assert "fine-tuning teacher" not in second.stdout
    cached = list((tmp_path / "dk-cache" / "teachers").glob("*/config.json"))
    assert len(cached) == 1
    third = run_cli([*args, f"hydra.run.dir={tmp_path / 'c'}"], cwd=tmp_path)
    assert third.returncode == 0, third.stdout[-2000:]
    m = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("a", "b", "c")]
    assert m[0]["teacher"]["accuracy"] == m[1]["teacher"]["accuracy"]
    # a run that reuses the teacher gives exactly what the run that trained it gave
    assert m[2]["train"]["last_losses"] == m[0]["train"]["last_losses"]
    assert m[2]["student"] | {"seconds": 0} == m[0]["student"] | {"seconds": 0}


@pytest.mark.assets
@pytest.mark.e2e
def test_real_teacher_and_snli_on_a_slice(tmp_path):
    """The packaged MiniLM-L6 teacher + SNLI through the CLI, on a few examples."""
    from distillkit.runtime.assets import cache_root

    run_dir = tmp_path / "run"
    proc = run_cli(["data.source.train_size=64", "data.source.validation_size=32",
                    "data.max_eval_samples=32", "data.max_transfer_samples=32",
                    "trainer.max_steps=2", "trainer.progress=false",
                    "teacher.finetune_settings.batch_size=16", f"hydra.run.dir={run_dir}"],
                   cwd=tmp_path, env={"DISTILLKIT_CACHE": str(cache_root())})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["params"]["teacher"] == pytest.approx(22.7e6, rel=0.01)
    assert metrics["eval_split"] == "test" and metrics["teacher"]["examples"] == 32
    assert metrics["inference"]["speedup"] > 0


@pytest.mark.e2e
def test_cached_teacher_logits_match_live_teacher(tmp_path):
    """Distilling from cached logits gives the same student as a live teacher, and the second
    job over the same teacher and data reads the cache instead of running the teacher."""
    args = [*TINY_RUN, "trainer.max_steps=6", "export_student=false", "data.transfer_split=null"]
    live = run_cli([*args, "trainer.teacher_cache=false", f"hydra.run.dir={tmp_path / 'live'}"],
                   cwd=tmp_path)
    cached = run_cli([*args, f"hydra.run.dir={tmp_path / 'c1'}"], cwd=tmp_path)
    again = run_cli([*args, "loss.temperature=2", f"hydra.run.dir={tmp_path / 'c2'}"],
                    cwd=tmp_path)
    for proc in (live, cached, again):
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "teacher logits" not in live.stdout
    assert "computed in" in cached.stdout and "read from cache" in again.stdout
    m_live, m_cached = (json.loads((tmp_path / d / "metrics.json").read_text())
                        for d in ("live", "c1"))
    assert m_live["student"]["accuracy"] == m_cached["student"]["accuracy"]
    assert m_live["train"]["last_losses"]["kd"] == pytest.approx(
        m_cached["train"]["last_losses"]["kd"], rel=1e-4)


def test_transfer_split_hides_labels_and_joins_distillation(fake_snli):
    from functools import partial

    from distillkit.data import TextClassificationData
    from distillkit.models.tokenizers import tiny_tokenizer

    data = TextClassificationData(partial(snli, train_size=20, validation_size=8, fetch=False),
                                  text_column="sentence1", text_pair_column="sentence2",
                                  label_column="gold_label", labels=LABELS, drop_labels=["-"],
                                  transfer_split="transfer")
    data.tokenize(tiny_tokenizer())
    assert set(data.raw["transfer"]["labels"]) == {-100}
    assert len(data.raw["transfer"]) == 12, "transfer rows are kept even with gold label '-'"
    n_distil = sum(len(b["labels"]) for b in data.loader("distil", 8))
    assert n_distil == len(data.raw["train"]) + 12
    assert len(data.loader("train", 8).dataset) == len(data.raw["train"])


def test_copy_init_pretrained_uses_weights_from_before_finetuning():
    from distillkit.models import ModelBundle

    pretrained = tiny_teacher(num_layers=2, labels=LABELS)
    finetuned = tiny_teacher(num_layers=2, labels=LABELS)  # other random weights
    teacher = ModelBundle(finetuned.model, pretrained.tokenizer, "ft", True, initial=pretrained)
    for init, source in (("pretrained", pretrained), ("finetuned", finetuned)):
        student = student_from_teacher([1], init=init, teacher=teacher, labels=LABELS)
        got = student.model.bert.encoder.layer[0].attention.self.query.weight
        want = source.model.bert.encoder.layer[1].attention.self.query.weight
        assert torch.equal(got, want), init
    with pytest.raises(ConfigError, match="student.init"):
        student_from_teacher([1], init="random", teacher=teacher, labels=LABELS)


@pytest.mark.parametrize("loss_name,source", [("kd", "finetuned"), ("hard", "pretrained")])
def test_copy_init_auto_follows_whether_the_loss_learns_from_the_teacher(loss_name, source,
                                                                        compose_cfg):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from distillkit.models import ModelBundle
    from distillkit.tasks.classification import student_and_pairs

    weights = {"pretrained": tiny_teacher(num_layers=2, labels=LABELS),
               "finetuned": tiny_teacher(num_layers=2, labels=LABELS)}
    teacher = ModelBundle(weights["finetuned"].model, weights["pretrained"].tokenizer, "ft",
                          True, initial=weights["pretrained"])
    cfg = OmegaConf.create({
        "student": {"_target_": "distillkit.models.student_from_teacher", "_partial_": True,
                    "layers": [1], "init": "auto"},
        "mapping": {"_target_": "distillkit.losses.mapping.none_mapping", "_partial_": True}})
    loss = instantiate(compose_cfg([f"loss={loss_name}"]).loss)
    student, _ = student_and_pairs(cfg, teacher, LABELS, loss, seed=0)
    got = student.model.bert.encoder.layer[0].attention.self.query.weight
    want = weights[source].model.bert.encoder.layer[1].attention.self.query.weight
    assert torch.equal(got, want)


def test_finetune_settings_refuse_unknown_keys():
    from distillkit.teachers.finetune import FinetuneSettings

    assert FinetuneSettings.from_config({"lr": 1e-3}).lr == 1e-3
    with pytest.raises(ConfigError, match=r"\['lrr'\] in teacher.finetune_settings"):
        FinetuneSettings.from_config({"lrr": 1e-3})


def test_teacher_cache_key_hashes_every_training_row(fake_snli):
    """Regression: the key once hashed a column's repr, which shows only its first rows."""
    from functools import partial

    from distillkit.data import TextClassificationData
    from distillkit.models.tokenizers import tiny_tokenizer
    from distillkit.teachers.finetune import FinetuneSettings, cache_key

    teacher = tiny_teacher(num_layers=2, labels=LABELS)
    keys = []
    for train_size in (20, 24):  # same seed: the first rows agree, the split sizes differ
        data = TextClassificationData(
            partial(snli, train_size=train_size, validation_size=8, seed=1, fetch=False),
            text_column="sentence1", text_pair_column="sentence2", label_column="gold_label",
            labels=LABELS, drop_labels=["-"])
        data.tokenize(tiny_tokenizer())
        keys.append(cache_key(teacher, data, FinetuneSettings(), seed=0))
    assert keys[0] != keys[1]


def _stage_inputs(tmp_path, monkeypatch):
    """Tiny tokenised data and a tiny teacher for the teacher stage, cached under tmp_path."""
    from functools import partial

    from distillkit.data import TextClassificationData, synthetic_nli

    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path))
    data = TextClassificationData(partial(synthetic_nli, n_train=32, n_validation=8, n_test=0),
                                  text_column="premise", text_pair_column="hypothesis",
                                  labels=LABELS, max_length=16)
    teacher = tiny_teacher(labels=LABELS)
    data.tokenize(teacher.tokenizer)
    return data, teacher


def test_finetune_precision_picks_the_teacher_independently_of_the_student(tmp_path,
                                                                           monkeypatch):
    """A bf16 fine-tuned teacher is reused by an fp32 student run that asks for it."""
    from distillkit.engine import EngineSettings
    from distillkit.teachers.finetune import FinetuneSettings, prepare_teacher

    data, teacher = _stage_inputs(tmp_path, monkeypatch)

    def prepare(run_precision, finetune_precision):
        engine = EngineSettings(device="cpu", progress=False, precision=run_precision)
        settings = FinetuneSettings(epochs=1, precision=finetune_precision)
        return prepare_teacher(teacher, "auto", settings, data, engine)

    first = prepare("bf16", "auto")
    assert first.origin == "fine-tuned"
    assert prepare("fp32", "bf16").origin == "cache"  # same teacher, fp32 student run
    assert prepare("fp32", "auto").origin == "fine-tuned"  # an fp32 fine-tune is another one
    with pytest.raises(ConfigError, match="finetune_settings.precision='fp8'"):
        prepare("fp32", "fp8")


def test_teacher_seed_keeps_one_teacher_across_student_seeds(tmp_path, monkeypatch):
    """teacher.finetune_settings.seed pins the fine-tune (its key): students of other seeds
    reuse it; without it the run's seed is the teacher's, as before."""
    from distillkit.engine import EngineSettings
    from distillkit.teachers.finetune import FinetuneSettings, prepare_teacher

    data, teacher = _stage_inputs(tmp_path, monkeypatch)

    def prepare(run_seed, teacher_seed):
        engine = EngineSettings(device="cpu", progress=False, precision="fp32", seed=run_seed)
        return prepare_teacher(teacher, "auto", FinetuneSettings(epochs=1, seed=teacher_seed),
                               data, engine)

    assert prepare(1, 5).origin == "fine-tuned"
    assert prepare(2, 5).origin == "cache"  # another student seed, the same teacher
    assert prepare(5, None).origin == "cache"  # no teacher seed: the run's seed is it
    assert prepare(2, None).origin == "fine-tuned"
    with pytest.raises(ConfigError, match=r"teacher.finetune_settings.seed must be an integer"):
        FinetuneSettings.from_config({"seed": "abc"})


@pytest.mark.e2e
def test_teacher_seed_through_the_cli(tmp_path):
    """The new head and the fine-tune follow the teacher's seed: a second student seed finds
    the first run's teacher in the cache."""
    args = [*TINY_RUN, "trainer.max_steps=2", "export_student=false",
            "teacher.finetune_settings.seed=3"]
    runs = [run_cli([*args, f"trainer.seed={seed}", f"hydra.run.dir={tmp_path / str(seed)}"],
                    cwd=tmp_path) for seed in (1, 2)]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr[-2000:]
    assert "fine-tuning teacher" in runs[0].stdout
    assert "reusing fine-tuned teacher" in runs[1].stdout
    assert len(list((tmp_path / "dk-cache" / "teachers").glob("*/config.json"))) == 1
