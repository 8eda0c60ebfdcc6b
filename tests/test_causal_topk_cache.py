"""The top-k teacher-target cache of causal LMs (distillkit.teachers.topk_cache), its collator
step (distillkit.data.topk_rows) and the engine serving a step from it, on tiny random Llamas."""

from __future__ import annotations

import logging
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from distillkit.causal.divergences import ForwardKL, GeneralizedJSD
from distillkit.causal.tiny import tiny_llama
from distillkit.causal.token_loss import TokenDistillationLoss, shift_for_next_token
from distillkit.causal.topk import LOG_FLOOR, TopKTargets, topk_targets
from distillkit.data.feature_rows import ROW
from distillkit.data.topk_rows import TopKCollator
from distillkit.engine import Distiller, EngineSettings
from distillkit.engine.evaluate import model_inputs
from distillkit.engine.outputs import cached_teacher_outputs
from distillkit.engine.schedules import warmup_schedule
from distillkit.errors import ConfigError
from distillkit.teachers.topk_cache import TopKSplit, cache_teacher_topk
from distillkit.teachers.topk_store import TopKSpec, TopKStore, TopKWriter

WORDS = ("what is the capital of france ? paris . the answer is 4 . who does "
         "what and where do they answer the question").split()


def texts(n: int, seed: int = 0) -> list[str]:
    """``n`` generated word sequences of 3 to 12 words."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 13)))) for _ in range(n)]


@pytest.fixture(scope="module")
def teacher():
    return tiny_llama(num_layers=2, hidden_size=32, seed=0)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("DISTILLKIT_CACHE", str(path))
    return path


def pad(rows: list[list[int]], row_ids: list[int], pad_id: int, side: str) -> dict:
    """A padded batch of ``rows`` (``side`` padding) carrying their row ids."""
    seq = max(len(r) for r in rows)
    ids = torch.full((len(rows), seq), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), seq), dtype=torch.long)
    for b, r in enumerate(rows):
        at = 0 if side == "right" else seq - len(r)
        ids[b, at:at + len(r)] = torch.tensor(r)
        mask[b, at:at + len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask, ROW: torch.tensor(row_ids)}


def split(bundle, lines: list[str], side: str = "right", batch_size: int = 3) -> TopKSplit:
    """The split's ids and its batches, in a shuffled row order (as a length-sorted or random
    loader would give them)."""
    ids = [bundle.tokenizer(t)["input_ids"] for t in lines]
    order = np.random.default_rng(1).permutation(len(ids)).tolist()
    batches = [pad([ids[i] for i in order[s:s + batch_size]], order[s:s + batch_size],
                   bundle.tokenizer.pad_token_id, side)
               for s in range(0, len(ids), batch_size)]
    return TopKSplit(ids, batches)


def cached(bundle, splits, k=5, dtype="fp16", max_gb=1.0, **kwargs):
    return cache_teacher_topk(bundle.model, splits, k=k, dtype=dtype, max_gb=max_gb,
                              max_length=64, **kwargs)


def reference_log_probs(model, ids: list[int]) -> torch.Tensor:
    """The teacher's own ``[L, V]`` log-softmax on one unpadded example (the model's logits)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return F.log_softmax(logits.double(), dim=-1)


@pytest.mark.parametrize(("dtype", "atol", "rtol"), [("fp32", 1e-4, 1e-5), ("fp16", 2e-3, 1e-3)])
def test_store_round_trip_per_dtype(teacher, cache, dtype, atol, rtol):
    data = split(teacher, texts(7))
    result = cached(teacher, {"train": data}, k=6, dtype=dtype, chunk_tokens=4)
    assert result.source == "computed" and result.splits["train"]["origin"] == "computed"
    store = result.stores["train"]
    entry = store.path
    assert np.load(entry / "indices.npy", mmap_mode="r").dtype == np.uint16
    assert np.load(entry / "log_probs.npy", mmap_mode="r").dtype == np.dtype(
        {"fp16": np.float16, "fp32": np.float32}[dtype])
    per_token = 6 * (2 + {"fp16": 2, "fp32": 4}[dtype]) + 4  # log-probs, uint16 ids, rest
    arrays = result.tokens * per_token + 16 * len(data.ids)  # + the row index
    assert arrays <= result.bytes <= arrays + 4 * 128  # + four .npy headers
    for row, ids in enumerate(data.ids):
        got = store.example(row)
        assert got.indices.dtype == torch.int64 and got.log_probs.dtype == torch.float32
        ref = reference_log_probs(teacher.model, ids)
        want, _ = ref.topk(6, dim=-1)
        # the stored values are the teacher's top 6, in order, at the stored ids
        torch.testing.assert_close(got.log_probs.double(), want, atol=atol, rtol=rtol)
        torch.testing.assert_close(ref.gather(-1, got.indices), want, atol=atol, rtol=rtol)
        # the rest mass: what the named tokens leave, and everything adds up to 1
        rest = torch.log1p(-want.exp().sum(-1))
        torch.testing.assert_close(got.rest_log_prob.double(), rest, atol=atol, rtol=rtol)
        total = got.log_probs.double().exp().sum(-1) + got.rest_log_prob.double().exp()
        torch.testing.assert_close(total, torch.ones_like(total), atol=5 * atol, rtol=0)


def test_large_vocabularies_store_int32_ids(tmp_path):
    spec = TopKSpec(k=3, dtype="fp32", vocab=70000)
    writer = TopKWriter(tmp_path / "entry", spec, [2, 1])
    ids = torch.tensor([[69999, 65536, 3], [1, 2, 3]])
    values = torch.log(torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.2, 0.1]]))
    writer.write(0, TopKTargets(values, ids, torch.log(torch.tensor([0.2, 0.4]))))
    writer.write(1, TopKTargets(values[:1], ids[:1], torch.log(torch.tensor([0.2]))))
    writer.publish({})
    store = TopKStore(tmp_path / "entry")
    assert np.load(tmp_path / "entry" / "indices.npy").dtype == np.int32
    assert store.example(0).indices.tolist() == ids.tolist()
    assert store.example(1).indices.tolist() == ids[:1].tolist()
    assert TopKSpec(3, "fp16", 65536).index_dtype == np.uint16


@pytest.mark.parametrize("side", ["right", "left"])
def test_collated_targets_sit_at_the_real_positions(teacher, cache, side):
    data = split(teacher, texts(5), side=side, batch_size=5)
    store = cached(teacher, {"train": data}, k=4, dtype="fp32").stores["train"]
    batch = data.batches[0]
    live = batch["input_ids"], batch["attention_mask"]
    collate = TopKCollator(lambda _: {k: v.clone() for k, v in batch.items()}, [store])
    out = collate([])
    assert ROW not in out
    log_probs, indices, rest = (out[k] for k in ("teacher_topk_log_probs",
                                                 "teacher_topk_indices", "teacher_topk_rest"))
    assert log_probs.shape == (*live[0].shape, 4) and indices.dtype == torch.int64
    real = live[1].bool()
    # the live teacher on the padded batch: its distribution at every real position
    with torch.no_grad():
        ref = F.log_softmax(teacher.model(input_ids=live[0], attention_mask=live[1])
                            .logits.double(), dim=-1)
    want, _ = ref.topk(4, dim=-1)
    torch.testing.assert_close(log_probs[real].double(), want[real], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ref.gather(-1, indices)[real], want[real], atol=1e-4, rtol=1e-5)
    assert (~real).any()  # the batch has padding: finite, ignorable fillers there
    assert (log_probs[~real] == LOG_FLOOR).all() and (indices[~real] == 0).all()
    assert (rest[~real] == 0.0).all() and torch.isfinite(rest).all()


def test_cached_loss_equals_the_live_loss_and_dense_kd_at_k_equal_vocab(teacher, cache):
    student = tiny_llama(num_layers=1, hidden_size=16, intermediate_size=32, num_heads=2,
                         num_kv_heads=1, seed=3).model
    vocab = teacher.model.config.vocab_size
    data = split(teacher, texts(6), batch_size=6)
    batch = data.batches[0]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    labels = shift_for_next_token(batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        live = teacher.model(**inputs).logits
        student_logits = student(**inputs).logits
    for k, dense in ((7, False), (vocab, True)):
        store = cached(teacher, {"train": data}, k=k, dtype="fp32").stores["train"]
        out = TopKCollator(lambda _: {n: v.clone() for n, v in batch.items()}, [store])([])
        from_cache = cached_teacher_outputs(out, torch.device("cpu"))["topk"]
        for divergence in (ForwardKL(), GeneralizedJSD(beta=0.3)):
            loss = TokenDistillationLoss(divergence, temperature=2.0, alpha=0.6, chunk_tokens=5)
            got = loss({"logits": student_logits}, {"topk": from_cache},
                       {"labels": labels, "attention_mask": inputs["attention_mask"]})
            want = loss({"logits": student_logits},
                        {"logits" if dense else "topk": live if dense else topk_targets(live, k)},
                        {"labels": labels, "attention_mask": inputs["attention_mask"]})
            torch.testing.assert_close(got.total, want.total, atol=1e-5, rtol=1e-4)


def test_key_follows_teacher_ids_k_and_dtype_not_the_loss(teacher, cache, caplog):
    lines = texts(4)

    def entries():
        return sorted(p.name for p in (cache / "teacher_topk").iterdir()
                      if p.is_dir() and not p.name.endswith(".tmp"))

    first = cached(teacher, {"train": split(teacher, lines)})
    # a sweep job with another temperature/alpha/divergence asks for the same entry
    assert cached(teacher, {"train": split(teacher, lines)}).source == "cache"
    assert len(entries()) == 1
    cached(teacher, {"train": split(teacher, lines)}, k=6)
    cached(teacher, {"train": split(teacher, lines)}, dtype="fp32")
    cached(teacher, {"train": split(teacher, texts(4, seed=5))})
    other = tiny_llama(num_layers=2, hidden_size=32, seed=1)
    cached(other, {"train": split(other, lines)})
    same = tiny_llama(num_layers=2, hidden_size=32, seed=0)  # the pass casts it in place
    cached(same, {"train": split(same, lines)}, precision=torch.bfloat16)
    assert len(entries()) == 6
    assert first.splits["train"]["key"] in entries()


def test_interrupted_pass_leaves_no_entry(teacher, cache):
    data = split(teacher, texts(6))

    def interrupted():
        yield data.batches[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached(teacher, {"train": TopKSplit(data.ids, interrupted())})
    assert not [p for p in (cache / "teacher_topk").iterdir() if p.is_dir()]
    # batches that miss rows, or disagree with the ids, are refused and leave nothing either
    with pytest.raises(ValueError, match="cover 3 of its 6 rows"):
        cached(teacher, {"train": TopKSplit(data.ids, data.batches[:1])})
    wrong = [list(ids) + [5] for ids in data.ids]
    with pytest.raises(ValueError, match="do not match the split's ids"):
        cached(teacher, {"train": TopKSplit(wrong, data.batches)})
    assert not [p for p in (cache / "teacher_topk").iterdir() if p.is_dir()]
    assert cached(teacher, {"train": data}).source == "computed"


def test_over_budget_runs_the_teacher_live_in_one_line(teacher, cache):
    data = split(teacher, texts(6))

    def never():
        raise AssertionError("the teacher ran")
        yield

    result = cached(teacher, {"train": TopKSplit(data.ids, never())}, max_gb=1e-9)
    assert result.source == "live" and not result.stores and result.bytes > 0
    line = result.describe()
    assert "\n" not in line and "trainer.feature_cache_max_gb=1e-09" in line
    assert "the teacher runs every step" in line
    assert not (cache / "teacher_topk").exists()


@pytest.mark.parametrize(("options", "phrase"), [
    ({"k": 0}, "top-k size must be >= 1"), ({"dtype": "int8"}, "use fp16"),
    ({"max_gb": -1.0}, "trainer.feature_cache_max_gb must be >= 0"),
    ({"k": 10_000}, "exceeds the vocabulary")])
def test_bad_settings_are_refused(teacher, cache, options, phrase):
    with pytest.raises(ConfigError, match=phrase):
        cached(teacher, {"train": split(teacher, texts(2))}, **options)


def _examples(bundle, lines):
    return [{"input_ids": bundle.tokenizer(t)["input_ids"], ROW: i} for i, t in enumerate(lines)]


def _pad_collate(pad_id, examples):
    batch = pad([e["input_ids"] for e in examples], [e[ROW] for e in examples], pad_id, "right")
    batch["labels"] = shift_for_next_token(batch["input_ids"], batch["attention_mask"])
    return batch


def test_a_step_without_teacher_is_served_from_the_batch(teacher, cache, caplog):
    lines = texts(8)
    store = cached(teacher, {"train": split(teacher, lines)}, k=5).stores["train"]
    student = tiny_llama(num_layers=1, hidden_size=16, intermediate_size=32, num_heads=2,
                         num_kv_heads=1, seed=4).model
    before = [p.detach().clone() for p in student.parameters()]
    collate = TopKCollator(partial(_pad_collate, teacher.tokenizer.pad_token_id), [store])
    loader = DataLoader(_examples(teacher, lines), batch_size=4, collate_fn=collate)
    loss = TokenDistillationLoss(ForwardKL(), temperature=1.0, alpha=1.0)
    distiller = Distiller(student, None, loss, partial(torch.optim.AdamW, lr=1e-2),
                          partial(warmup_schedule, name="constant"),
                          EngineSettings(batch_size=4, max_steps=2, log_every_steps=1,
                                         progress=False, device="cpu"))
    with caplog.at_level(logging.INFO):
        result = distiller.fit(loader)
    assert result.steps == 2 and set(result.last_losses) == {"kd", "total"}
    # the cached targets reach the loss, never the model (a Llama would swallow extra kwargs)
    assert set(model_inputs(next(iter(loader)), torch.device("cpu"))) == {"input_ids",
                                                                          "attention_mask"}
    assert any((a != b).any() for a, b in zip(before, student.parameters(), strict=True))
