"""Generated responses for causal-LM distillation: the on-policy (GKD) batch path, prompt
continuation, the loss on on-policy batches, sequence-level KD's response replacement."""

from __future__ import annotations

import pytest
import torch

from distillkit.causal.data import PROMPT_LENGTH, ROW, CausalLMData
from distillkit.causal.divergences import ForwardKL
from distillkit.causal.encode import IGNORE
from distillkit.causal.generation import CausalGeneration, continue_prompts, pad_id, stop_ids
from distillkit.causal.losses import causal_kd
from distillkit.causal.models import small_llama_student
from distillkit.causal.on_policy import OnPolicyBatches
from distillkit.causal.sources import tiny_text
from distillkit.causal.tiny import tiny_llama
from distillkit.causal.token_loss import ON_POLICY, TokenDistillationLoss
from distillkit.engine.outputs import TOPK_KEYS
from distillkit.errors import ConfigError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup():
    teacher = tiny_llama(seed=0)
    student = small_llama_student(1, 16, 32, 2, 1, seed=1, teacher=teacher)
    data = CausalLMData(lambda: tiny_text(16, 4, 0), format="pairs")
    data.tokenize(teacher.tokenizer)
    return teacher, student, data


def _hook(student, data, lmbda=1.0, max_new_tokens=5):
    tok = student.tokenizer
    return OnPolicyBatches(student.model, data.collate, lmbda,
                           CausalGeneration(max_new_tokens=max_new_tokens), pad_id(tok),
                           stop_ids(student.model, tok), seed=3, device=CPU)


def test_an_on_policy_batch_keeps_the_prompts_and_learns_the_sampled_tokens(setup):
    _, student, data = setup
    batch = next(iter(data.loader("train", 4)))
    batch["teacher_topk_log_probs"] = torch.zeros(1)  # a cached entry of the old responses
    torch.manual_seed(0)
    out = _hook(student, data)(dict(batch), micro=0)
    assert out[ON_POLICY].all() and not set(TOPK_KEYS) & set(out)
    assert out[ROW].tolist() == batch[ROW].tolist()
    assert out[PROMPT_LENGTH].tolist() == batch[PROMPT_LENGTH].tolist()
    stops = stop_ids(student.model, student.tokenizer)
    for b in range(4):
        n = int(batch[PROMPT_LENGTH][b])
        real = out["input_ids"][b][out["attention_mask"][b].bool()].tolist()
        assert real[:n] == batch["input_ids"][b][:n].tolist()  # the prompt, unchanged
        response = real[n:]
        assert 1 <= len(response) <= 5
        assert not set(response[:-1]) & stops  # cut after the first stop id
        labels = out["labels"][b].tolist()
        # position t predicts token t + 1: nothing before the prompt's last token, then
        # every sampled token, then nothing
        assert labels[:n - 1] == [IGNORE] * (n - 1)
        assert labels[n - 1:n - 1 + len(response)] == response
        assert all(v == IGNORE for v in labels[n - 1 + len(response):])


def test_the_share_of_on_policy_batches_follows_lmbda_and_the_seed(setup):
    _, student, data = setup
    hook = _hook(student, data, lmbda=0.3)
    picks = [hook.chosen(m) for m in range(2000)]
    assert 0.27 < sum(picks) / len(picks) < 0.33
    assert picks == [_hook(student, data, lmbda=0.3).chosen(m) for m in range(2000)]
    assert picks != [OnPolicyBatches(student.model, data.collate, 0.3, CausalGeneration(), 0,
                                     set(), seed=4, device=CPU).chosen(m) for m in range(2000)]
    batch = next(iter(data.loader("train", 4)))
    off = next(m for m, p in enumerate(picks) if not p)
    assert hook(batch, off) is batch  # an off-policy batch is passed through untouched


def test_left_padded_batches_continue_like_one_prompt_at_a_time(setup):
    teacher, _, data = setup
    prompts = [p[:2 + i % 3] for i, (p, _) in enumerate(data.prompts("train", 6))]
    assert len({len(p) for p in prompts}) == 3  # the batch needs padding
    tok = teacher.tokenizer
    kwargs = dict(max_new_tokens=4, pad=pad_id(tok), stops=set(), device=CPU)
    batched = continue_prompts(teacher.model, prompts, batch_size=4, **kwargs)
    single = [continue_prompts(teacher.model, [p], **kwargs)[0] for p in prompts]
    assert batched == single and all(len(r) == 4 for r in batched)
    stop = batched[0][-1]
    cut = continue_prompts(teacher.model, prompts[:1], **{**kwargs, "stops": {stop}})
    # kept up to and including the first stop id
    assert cut == [batched[0][:batched[0].index(stop) + 1]]


def test_an_on_policy_batch_counts_the_kd_term_only():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    batch = {"labels": labels, "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    loss = TokenDistillationLoss(ForwardKL(), temperature=2.0, alpha=0.3)
    off = loss({"logits": s}, {"logits": t}, batch)
    on = loss({"logits": s}, {"logits": t}, {**batch, ON_POLICY: torch.ones(2, dtype=torch.bool)})
    p, log_q = torch.softmax(t / 2, -1), torch.log_softmax(s / 2, -1)
    kl = (p * (p.log() - log_q)).sum(-1).mean()
    ce = torch.nn.functional.cross_entropy(s.reshape(-1, 11), labels.reshape(-1))
    assert on.total.item() == pytest.approx(0.3 * 4 * kl.item(), rel=1e-5)
    assert off.total.item() == pytest.approx(0.3 * 4 * kl.item() + 0.7 * ce.item(), rel=1e-5)
    assert set(on.terms) == {"kd"} and set(off.terms) == {"kd", "hard"}


@pytest.mark.parametrize(("kwargs", "phrases"), [
    ({"lmbda": 1.5}, ["loss.lmbda=1.5", "[0, 1]"]),
    ({"lmbda": 0.5, "alpha": 0.0}, ["loss.lmbda=0.5", "loss.alpha"]),
    ({"generation": {"max_new_token": 8}}, ["max_new_token", "loss.generation"]),
    ({"generation": {"temperature": 0}}, ["loss.generation.temperature", "> 0"]),
    ({"generation": {"num_beams": 0}}, ["loss.generation.num_beams", ">= 1"]),
])
def test_bad_generation_settings_are_refused(kwargs, phrases):
    with pytest.raises(ConfigError) as err:
        causal_kd(**kwargs)
    assert all(p in str(err.value) for p in phrases), str(err.value)


def test_seq_kd_sets_the_loss_contracts_sequence_settings():
    assert causal_kd().sequence_kd is None
    loss = causal_kd(seq_kd=True, generation={"max_new_tokens": 7, "num_beams": 2})
    assert loss.sequence_kd["max_new_tokens"] == 7 and loss.sequence_kd["num_beams"] == 2


def test_replaced_responses_are_learnt_after_their_prompt(setup):
    teacher, _, _ = setup
    data = CausalLMData(lambda: tiny_text(4, 2, 0), format="pairs", max_length=9)
    data.tokenize(teacher.tokenizer)
    prompts = [p for p, _ in data.prompts("train", 4)]
    responses = [[5, 6], [7], [8, 9, 10, 11, 12, 13, 14, 15], [6]]
    data.replace_responses("train", prompts, responses)
    for ex, p, r in zip(data.encoded["train"], prompts, responses, strict=True):
        assert ex.input_ids == (p + r)[:9] and ex.prompt_length == len(p)
        assert ex.labels == ([IGNORE] * len(p) + r)[:9]
    with pytest.raises(ValueError, match="3 prompts"):
        data.replace_responses("train", prompts[:3], responses[:3])
