"""FSDP sharding (``trainer.sharding=fsdp``): refusals, and two gloo CPU processes against DDP.

torch 2.x runs FSDP2's ``fully_shard`` on the CPU with gloo, so the sharded path is tested here
with two processes: the same training as DDP (same global batches, fp32, no dropout) must end
with the same weights and losses up to float reduction order, its checkpoints must hold full
state dicts that resume exactly, and the exported student must load into a plain model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from distillkit.engine.sharding import block_modules, check_sharding, full_model_state
from distillkit.errors import ConfigError
from tests.conftest import TINY_RUN, one_error_line, run_cli

TOL = 1e-5


def test_sharding_needs_several_processes_and_no_compile():
    check_sharding("none", 1)
    check_sharding("fsdp", 2)
    with pytest.raises(ConfigError, match="has one; launch it with torchrun"):
        check_sharding("fsdp", 1)
    with pytest.raises(ConfigError, match="trainer.compile=false"):
        check_sharding("fsdp", 2, compile_=True)
    with pytest.raises(ConfigError, match="not one of none, fsdp"):
        check_sharding("zero3", 2)


def test_blocks_are_found_without_model_specific_code():
    from distillkit.causal.tiny import tiny_llama
    from distillkit.models import tiny_teacher

    llama = tiny_llama(num_layers=3).model  # declares _no_split_modules
    assert [type(b).__name__ for b in block_modules(llama)] == ["LlamaDecoderLayer"] * 3
    bert = tiny_teacher(labels=["a", "b"]).model  # declares none: its nn.ModuleList stack
    blocks = block_modules(bert)
    assert [type(b).__name__ for b in blocks] == ["BertLayer"] * len(bert.bert.encoder.layer)
    with pytest.raises(ConfigError, match="finds no transformer blocks"):
        block_modules(torch.nn.Linear(2, 2))


@pytest.mark.e2e
def test_fsdp_without_torchrun_is_refused_in_one_line(tmp_path):
    proc = run_cli([*TINY_RUN, "trainer.sharding=fsdp", f"hydra.run.dir={tmp_path / 'run'}"],
                   tmp_path)
    one_error_line(proc.returncode, proc.stdout + proc.stderr,
                   ["trainer.sharding=fsdp", "torchrun --nproc_per_node", "one"])
    assert not (tmp_path / "run" / "metrics.json").exists()


# ---- two processes: FSDP against DDP, in-process (live teacher, trainable projections) ------

class _MemorySink:
    """Keeps the checkpoints of rank 0 in memory."""

    def __init__(self) -> None:
        self.states: dict[int, dict] = {}

    def due(self, step: int, evaluated: bool) -> bool:
        return step == 3

    def save(self, step: int, state: dict, metric: float | None) -> None:
        self.states[step] = state

    def latest(self) -> None:
        return None


def _train(env, sharding: str, steps: int, resume=None, sink=None):
    from distillkit.data import TextClassificationData, synthetic_nli
    from distillkit.engine import Distiller, EngineSettings
    from distillkit.engine.schedules import warmup_schedule
    from distillkit.losses import DistillationLoss, HiddenMSE, SoftTargetCrossEntropy
    from distillkit.losses.mapping import LayerPair
    from distillkit.models import bert_student, tiny_teacher

    labels = ["entailment", "neutral", "contradiction"]
    data = TextClassificationData(partial(synthetic_nli, n_train=48, n_validation=10, n_test=0),
                                  text_column="premise", text_pair_column="hypothesis")
    torch.manual_seed(0)
    teacher = tiny_teacher(labels=labels)
    data.tokenize(teacher.tokenizer)
    torch.manual_seed(1)
    student = bert_student(2, 16, 2, 32, teacher=teacher, labels=labels).model
    loss = DistillationLoss(kd=SoftTargetCrossEntropy(), alpha=0.5,
                            intermediate={"hidden": HiddenMSE()}, projection=torch.nn.Linear)
    loss.bind([LayerPair(1, 1), LayerPair(2, 2)], 16, 32)
    settings = EngineSettings(max_steps=steps, batch_size=8, progress=False, log_every_steps=1,
                              device="cpu", precision="fp32", sharding=sharding,
                              eval_batch_size=4)
    distiller = Distiller(student, teacher.model, loss, partial(torch.optim.AdamW, lr=1e-2),
                          partial(warmup_schedule, name="constant"), settings, dist=env,
                          checkpoints=sink)
    torch.manual_seed(2)
    result = distiller.fit(data.loader("train", 8, shuffle=True, shard=env.shard()),
                           resume=resume)
    # 10 eval examples over 2 ranks in batches of 4: the ranks run different numbers of
    # batches (sharded: on gathered weights, no collective per forward pass)
    evaluation = distiller.evaluate(student, data.loader("eval", 4, shard=(env.rank, 2)), "e")
    return {"losses": result.last_losses, "eval": evaluation,
            "student": full_model_state(student), "loss": full_model_state(loss)}


def _rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from distillkit.runtime import distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        env = distributed.DistEnv(rank=rank, world_size=world, enabled=True, backend="gloo")
        out = {"ddp": _train(env, "none", 6), "fsdp": _train(env, "fsdp", 6)}
        sink = _MemorySink()
        out["fsdp3"] = _train(env, "fsdp", 3, sink=sink)
        checkpoint = env.broadcast_object(sink.states.get(3))  # rank 0 holds it
        # a run of 3 steps resumed from its last checkpoint: loads it, trains no further
        out["resumed"] = _train(env, "fsdp", 3, resume=checkpoint)
        if rank == 0:
            out["checkpoint"] = checkpoint
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _close(a: torch.Tensor | float, b: torch.Tensor | float) -> bool:
    # atol: Adam turns the ~0 gradients of attention key biases (softmax ignores them) into
    # steps of ~1e-6 whose sign follows float reduction order
    return bool(torch.allclose(torch.as_tensor(a), torch.as_tensor(b), rtol=TOL, atol=1e-5))


def test_fsdp_trains_like_ddp_and_resumes_from_full_checkpoints(tmp_path):
    """Student, live teacher and the loss's projections sharded over 2 gloo processes end
    where DDP ends; the checkpoint holds full (unsharded) tensors under the plain model's keys,
    and it loads back into a sharded run (full -> shards -> full gives the same weights)."""
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    out = ranks[0]
    ddp, fsdp, resumed = out["ddp"], out["fsdp"], out["resumed"]
    assert fsdp["student"].keys() == ddp["student"].keys()
    for name, value in ddp["student"].items():
        assert type(fsdp["student"][name]) is torch.Tensor, name  # full, not a DTensor shard
        assert fsdp["student"][name].shape == value.shape, name
        assert _close(fsdp["student"][name], value), name
    projections = [k for k in ddp["loss"] if "projection" in k]
    assert len(projections) == 4
    for key in projections:
        assert _close(fsdp["loss"][key], ddp["loss"][key]), key
    for name, value in ddp["losses"].items():
        assert _close(fsdp["losses"][name], value), name
    assert fsdp["eval"]["examples"] == ddp["eval"]["examples"] == 10
    assert _close(fsdp["eval"]["loss"], ddp["eval"]["loss"])
    checkpoint = out["checkpoint"]
    assert checkpoint["step"] == 3
    assert checkpoint["student"].keys() == ddp["student"].keys()
    assert all(type(v) is torch.Tensor for v in checkpoint["student"].values())
    key = "classifier.weight"
    assert not torch.equal(checkpoint["student"][key], fsdp["student"][key])  # mid-run
    for key in (*checkpoint["student"], *projections):
        state, part = ("loss", "loss") if key in projections else ("student", "student")
        assert torch.equal(resumed[part][key], checkpoint[state][key]), key
    assert resumed["eval"] == {**out["fsdp3"]["eval"], "seconds": resumed["eval"]["seconds"]}
    assert ranks[1]["fsdp"]["losses"] == fsdp["losses"]  # the global batch's terms


# ---- end to end: torchrun, FSDP against DDP, the exported student in a plain model ----------

RUN = [*TINY_RUN, "trainer.precision=fp32", "student.dropout=0", "trainer.max_steps=8",
       "trainer.eval_every_steps=4", "trainer.optimizer.lr=1e-2"]


def _torchrun(args: list[str], cwd: Path, cache: Path,
              extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs the CLI under torchrun; a run that hangs (a collective only one rank calls) is
    killed with its ranks after 300 s."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DISTILLKIT_CACHE": str(cache),
           **(extra_env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "distillkit", *args]
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"torchrun hung: {(out + err)[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.mark.e2e
def test_torchrun_fsdp_run_killed_and_resumed_matches_ddp_and_exports_a_plain_student(
        tmp_path):
    """The real CLI under torchrun: a sharded run killed (SIGKILL) after step 5 and resumed
    with resume=auto from its step-4 checkpoint ends with the uninterrupted DDP run's losses
    and accuracy, and exports a student with the DDP run's weights."""
    from transformers import AutoModelForSequenceClassification

    dirs = {s: tmp_path / s for s in ("none", "fsdp")}
    cache = tmp_path / "cache"
    proc = _torchrun([*RUN, f"hydra.run.dir={dirs['none']}"], tmp_path, cache)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    sharded = [*RUN, "trainer.sharding=fsdp", "trainer.checkpoint_every_steps=2",
               f"hydra.run.dir={dirs['fsdp']}"]
    killed = _torchrun(sharded, tmp_path, cache, {"DISTILLKIT_TEST_KILL_AT_STEP": "5"})
    assert killed.returncode != 0 and not (dirs["fsdp"] / "metrics.json").exists()
    proc = _torchrun([*sharded, "resume=auto"], tmp_path, cache)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "FSDP: model FSDPBertForSequenceClassification sharded" in output
    ddp, fsdp = (json.loads((dirs[s] / "metrics.json").read_text()) for s in ("none", "fsdp"))
    assert fsdp["resumed_from"]["step"] == 4
    for name, value in ddp["train"]["last_losses"].items():
        assert _close(fsdp["train"]["last_losses"][name], value), name
    assert _close(fsdp["student"]["loss"], ddp["student"]["loss"])
    assert fsdp["student"]["accuracy"] == ddp["student"]["accuracy"]
    plain, exported = (AutoModelForSequenceClassification.from_pretrained(dirs[s] / "student")
                       for s in ("none", "fsdp"))
    exported_state = exported.state_dict()
    for name, value in plain.state_dict().items():
        assert _close(exported_state[name], value), name
