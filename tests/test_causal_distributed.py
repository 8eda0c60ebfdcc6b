"""task=causal_lm under torchrun with 2 CPU (gloo) processes: data-parallel (DDP) and sharded
(``trainer.sharding=fsdp``: FSDP2 on the LeanCausalLM wrappers, whose output layer the loss
applies after their forward pass), against the one-process run with the same global batch.

The runs see the same examples at every step (fp32, no dropout), so they differ only by float
reduction order: losses, evaluations and the final perplexities agree to 1e-5 relative (as in
tests/test_distributed.py and tests/test_fsdp.py); rank 0 alone writes the run's files.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import run_cli
from tests.test_fsdp import _torchrun

pytestmark = pytest.mark.e2e

RUN = ["experiment=tiny_causal_lm", "trainer.max_steps=4", "trainer.eval_every_steps=2",
       "trainer.eval_batch_size=8",  # 4 test batches: 2 scored by each rank
       "trainer.progress=false"]
REL_TOL = 1e-5
RANK_LOGS = {"DISTILLKIT_RANK_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL_TOL * max(abs(a), abs(b), 1e-12)


def _ok(proc) -> str:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


def _metrics(run_dir) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_ddp_and_fsdp_runs_match_the_one_process_run(tmp_path):
    """DDP and FSDP end where one process ends (losses, evaluations during training, the final
    perplexities and agreement); rank 0 alone writes metrics.json and generations.jsonl; the
    sharded run exports a plain student with the one-process run's weights."""
    cache = tmp_path / "cache"
    dirs = {name: tmp_path / name for name in ("one", "ddp", "fsdp")}
    _ok(run_cli([*RUN, f"hydra.run.dir={dirs['one']}"], cwd=tmp_path,
                env={"DISTILLKIT_CACHE": str(cache)}))
    _ok(_torchrun([*RUN, f"hydra.run.dir={dirs['ddp']}"], tmp_path, cache, RANK_LOGS))
    output = _ok(_torchrun([*RUN, "trainer.sharding=fsdp", f"hydra.run.dir={dirs['fsdp']}"],
                           tmp_path, cache, RANK_LOGS))
    assert "FSDP: model FSDPLeanCausalLM sharded" in output
    assert "FSDP: teacher FSDPLeanCausalLM sharded" in output
    assert output.count("run output:") == 1  # rank 0 alone writes the record
    one = _metrics(dirs["one"])
    assert "distributed" not in one
    for name in ("ddp", "fsdp"):
        run = _metrics(dirs[name])
        assert run["distributed"] == {"processes": 2, "backend": "gloo",
                                      "batch_per_process": 8}, name
        assert run["train"]["steps"] == one["train"]["steps"] == 4
        for key, value in one["train"]["last_losses"].items():
            assert _close(run["train"]["last_losses"][key], value), (name, key)
        assert [e["step"] for e in run["train"]["evals"]] == [2, 4]
        for a, b in zip(run["train"]["evals"], one["train"]["evals"], strict=True):
            assert _close(a["perplexity"], b["perplexity"]), (name, a, b)
        for who in ("teacher", "student"):
            assert run[who]["tokens"] == one[who]["tokens"] > 0  # every test token, once
            assert _close(run[who]["perplexity"], one[who]["perplexity"]), (name, who)
        assert _close(run["student"]["agreement"], one["student"]["agreement"]), name
        assert _close(run["student"]["kl"], one["student"]["kl"]), name
        generations = (dirs[name] / "generations.jsonl").read_text().splitlines()
        assert generations == (dirs["one"] / "generations.jsonl").read_text().splitlines()
    plain, sharded = (AutoModelForCausalLM.from_pretrained(dirs[s] / "student")
                      for s in ("one", "fsdp"))
    sharded_state = sharded.state_dict()
    for key, value in plain.state_dict().items():
        assert torch.allclose(sharded_state[key], value, rtol=REL_TOL, atol=1e-6), key


def test_fsdp_on_policy_run_samples_from_the_gathered_student(tmp_path):
    """loss.lmbda under FSDP: each rank samples responses for its share from the sharded
    student's gathered weights (from the very first batch: seed 3 picks micro-batch 0), the
    live sharded teacher scores them; the top-k cache is computed once (rank 0) and read by
    rank 1."""
    run_dir = tmp_path / "run"
    output = _ok(_torchrun([*RUN, "trainer.sharding=fsdp", "trainer.seed=3", "loss.lmbda=0.5",
                            "loss.generation.max_new_tokens=4", "trainer.teacher_topk=8",
                            f"hydra.run.dir={run_dir}"], tmp_path, tmp_path / "cache",
                           RANK_LOGS))
    metrics = _metrics(run_dir)
    assert metrics["on_policy"]["batches"] == 2  # micro-batches 0 and 2 of seed 3
    assert metrics["teacher_topk"]["source"] == "computed"
    assert "[rank 1] teacher top-k targets read from the cache" in output
    assert metrics["student"]["perplexity"] > 1
    # data=tiny_causal: num_generations=4, written by rank 0 alone
    assert len((run_dir / "generations.jsonl").read_text().splitlines()) == 4


def test_ddp_run_with_a_fine_tuned_teacher_and_sequence_kd_matches_one_process(tmp_path):
    """teacher.finetune=true and loss.seq_kd=true under DDP: rank 0 fine-tunes the teacher and
    decodes the training prompts once (main-first stages), rank 1 reads both from the cache,
    and the run ends where the one-process run with the same settings ends."""
    extra = ["teacher.finetune=true", "teacher.finetune_settings.lr=3e-3", "loss.seq_kd=true",
             "loss.generation.max_new_tokens=6"]
    one, ddp = tmp_path / "one", tmp_path / "ddp"
    _ok(run_cli([*RUN, *extra, f"hydra.run.dir={one}"], cwd=tmp_path,
                env={"DISTILLKIT_CACHE": str(tmp_path / "cache-one")}))
    output = _ok(_torchrun([*RUN, *extra, f"hydra.run.dir={ddp}"], tmp_path,
                           tmp_path / "cache-ddp", RANK_LOGS))
    m_one, m_ddp = _metrics(one), _metrics(ddp)
    assert m_ddp["stages"]["teacher"] == "fine-tuned"
    assert "[rank 1] reusing fine-tuned causal teacher from cache" in output
    assert m_ddp["teacher_finetune"]["key"] == m_one["teacher_finetune"]["key"]
    assert m_ddp["sequence_kd"]["generations"] == "computed"
    assert (ddp / "teacher_responses.jsonl").read_text() == \
        (one / "teacher_responses.jsonl").read_text()
    for who in ("teacher", "student"):
        assert _close(m_ddp[who]["perplexity"], m_one[who]["perplexity"]), who
    assert _close(m_ddp["student"]["kl"], m_one["student"]["kl"])
