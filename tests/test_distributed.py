"""Data-parallel runs: batch sharding, the launch environment, and torchrun vs one process.

The end-to-end test runs the real CLI under ``torch.distributed.run`` with 2 CPU processes
(gloo) and once in one process with the same global batch, and compares the metrics: the
runs see the same examples at every step, so they differ only by float reduction order.
Measured on this project's 2-core CPU machine: relative differences of at most ~2e-7 on every
loss, identical accuracies. The test allows 1e-5 relative on losses and one example on accuracies; without
the share weights of a smaller last batch (13 + 12 examples here) the losses differ by ~1e-3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from distillkit.data import TextClassificationData, synthetic_nli
from distillkit.data.sampling import (
    LengthGroupedBatchSampler,
    ShardedBatchSampler,
    SortedBatchSampler,
)
from distillkit.errors import ConfigError
from distillkit.models.tokenizers import tiny_tokenizer
from distillkit.runtime import distributed
from tests.conftest import TINY_RUN

LENGTHS = np.random.default_rng(0).integers(5, 60, size=505)
# 505 training examples: 15 global batches of 32 and one of 25 (13 + 12 on two ranks); three
# epochs, fp32, no dropout (dropout masks are drawn per rank), a learning student.
COMPARED_RUN = [*TINY_RUN, "trainer.precision=fp32", "student.dropout=0",
                "data.source.n_train=505", "trainer.max_steps=48", "trainer.eval_every_steps=16",
                "trainer.optimizer.lr=1e-2", "export_student=false"]
REL_TOL = 1e-5


def _shards(global_batches, n, batch, world, even=True):
    return [list(ShardedBatchSampler(global_batches, n, batch, rank, world, even))
            for rank in range(world)]


def _epoch(rank=None, world=1):
    """One epoch of length-grouped global batches (seeded alike), or one rank's shards."""
    sampler = LengthGroupedBatchSampler(LENGTHS, 32, torch.Generator().manual_seed(5))
    if rank is None:
        return list(sampler)
    sharded = ShardedBatchSampler(sampler, len(LENGTHS), 32, rank, world)
    batches = list(sharded)
    assert len(batches) == len(sharded)
    return batches


@pytest.mark.parametrize("world", [2, 3])
def test_shards_split_each_global_batch_disjointly(world):
    global_batches = _epoch()
    shards = [_epoch(rank, world) for rank in range(world)]
    assert all(len(s) == len(global_batches) == 16 for s in shards)
    for step, batch in enumerate(global_batches):
        parts = [shards[rank][step] for rank in range(world)]
        assert sorted(i for p in parts for i in p) == sorted(batch)  # together: the batch
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # and alike in size


def test_a_last_batch_smaller_than_the_ranks_is_skipped_only_in_training():
    batches = [[0, 1, 2, 3], [4]]  # 5 examples, batch size 4, 2 ranks: the last has 1
    assert _shards(batches, 5, 4, 2) == [[[0, 2]], [[1, 3]]]
    assert [len(ShardedBatchSampler(batches, 5, 4, r, 2)) for r in (0, 1)] == [1, 1]
    kept = _shards(batches, 5, 4, 2, even=False)  # evaluation keeps every example
    assert kept == [[[0, 2], [4]], [[1, 3]]]
    assert [len(ShardedBatchSampler(batches, 5, 4, r, 2, even=False)) for r in (0, 1)] == [2, 1]
    sorted_batches = SortedBatchSampler(LENGTHS, 64)
    every = [i for s in _shards(sorted_batches, len(LENGTHS), 64, 3, even=False) for b in s
             for i in b]
    assert sorted(every) == list(range(len(LENGTHS)))


@pytest.mark.parametrize("by_length", [True, False])
def test_sharded_loaders_take_the_examples_of_the_one_process_loader(by_length):
    data = TextClassificationData(partial(synthetic_nli, n_train=101, n_validation=10, n_test=0),
                                  text_column="premise", text_pair_column="hypothesis")
    data.tokenize(tiny_tokenizer())

    def ids(shard):
        loader = data.loader("train", 16, shuffle=True, seed=7, by_length=by_length,
                             shard=shard)
        return [[tuple(row[m.bool()].tolist()) for row, m in
                 zip(b["input_ids"], b["attention_mask"], strict=True)] for b in loader]
    whole, first, second = ids(None), ids((0, 2)), ids((1, 2))
    assert len(whole) == len(first) == len(second) == 7
    for batch, a, b in zip(whole, first, second, strict=True):
        assert sorted(batch) == sorted(a + b) and len(a) == len(batch) - len(batch) // 2


def test_one_process_environment_and_conventions():
    env = distributed.current()
    assert not env.enabled and env.is_main and env.shard() is None
    assert env.shard_weight(7) == 1.0 and env.gather_objects("x") == ["x"]
    assert env.device_for("auto") == "auto" and env.per_rank_batch(30) == 30
    four = distributed.DistEnv(rank=1, world_size=4, local_rank=1, enabled=True)
    assert four.per_rank_batch(32) == 8 and four.device_for("cpu") == "cpu"
    with pytest.raises(ConfigError, match=r"trainer.batch_size=30 is the global batch .* 4 "):
        four.per_rank_batch(30)


def test_submitit_tasks_export_the_torch_environment():
    pytest.importorskip("submitit")
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "8",
             "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_PROCID": "5",
             "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    with mock.patch.dict(os.environ, slurm):
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(key, None)
        distributed._export_submitit_env()
        exported = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                               "MASTER_ADDR")}
        port = int(os.environ["MASTER_PORT"])
    assert exported == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                        "MASTER_ADDR": "gpu07"}
    assert 20000 <= port <= 60000
    assert "RANK" not in os.environ


@pytest.mark.parametrize(("env", "subdir"), [
    ({}, ".hydra"), ({"RANK": "0"}, ".hydra"), ({"RANK": "1"}, None),
    ({"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "7", "SLURM_PROCID": "3"}, None),
])
def test_only_rank_0_writes_the_hydra_subdir(compose_cfg, env, subdir):
    with mock.patch.dict(os.environ, env):
        if "RANK" not in env:
            os.environ.pop("RANK", None)
        cfg = compose_cfg(return_hydra_config=True)
        assert cfg.hydra.output_subdir == subdir


def test_slurm_launcher_config_composes(compose_cfg):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="hydra-submitit-launcher (distillkit[slurm]) not installed")
    from omegaconf import OmegaConf

    cfg = compose_cfg(["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=8",
                       "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert cfg.hydra.launcher.tasks_per_node == 8  # one DDP rank per GPU
    assert launcher["partition"] == "gpu" and launcher["nodes"] == 1
    assert launcher["timeout_min"] == 240 and launcher["cpus_per_task"] == 8


def _ddp_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One rank of :func:`test_ddp_trains_loss_projections_through_a_phase_without_logits`
    (run by torch.multiprocessing.spawn): trains on its shard, saves what it ended with."""
    import torch.distributed as dist

    from distillkit.engine import Distiller, EngineSettings
    from distillkit.engine.schedules import warmup_schedule
    from distillkit.losses import DistillationLoss, HiddenMSE, SoftTargetCrossEntropy
    from distillkit.losses.mapping import LayerPair
    from distillkit.models import bert_student, tiny_teacher

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        env = distributed.DistEnv(rank=rank, world_size=world, enabled=True, backend="gloo")
        labels = ["entailment", "neutral", "contradiction"]
        data = TextClassificationData(partial(synthetic_nli, n_train=40, n_validation=8,
                                              n_test=0),
                                      text_column="premise", text_pair_column="hypothesis")
        torch.manual_seed(0)
        teacher = tiny_teacher(labels=labels)
        data.tokenize(teacher.tokenizer)
        # each rank starts from other weights: DDP must give them rank 0's, then keep them equal
        torch.manual_seed(100 + rank)
        student = bert_student(2, 16, 2, 32, teacher=teacher, labels=labels).model
        loss = DistillationLoss(kd=SoftTargetCrossEntropy(), alpha=1.0,
                                intermediate={"hidden": HiddenMSE()}, projection=torch.nn.Linear,
                                intermediate_phase=0.5)
        loss.bind([LayerPair(1, 1), LayerPair(2, 2)], 16, 32)
        distiller = Distiller(student, teacher.model, loss, partial(torch.optim.AdamW, lr=1e-2),
                              partial(warmup_schedule, name="constant"),
                              EngineSettings(max_steps=6, batch_size=8, progress=False,
                                             log_every_steps=1, device="cpu",
                                             precision="fp32"), dist=env)
        start = {k: v.clone() for k, v in loss.state_dict().items()}
        loader = data.loader("train", 8, shuffle=True, shard=env.shard())
        seen = [b["input_ids"].tolist() for b in loader]
        result = distiller.fit(loader)
        torch.save({"start": start, "loss": loss.state_dict(), "student": student.state_dict(),
                    "seen": seen, "last_losses": result.last_losses, "steps": result.steps},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_trains_loss_projections_through_a_phase_without_logits(tmp_path):
    """Two gloo processes train student and loss as one DDP module on different shards: the
    loss's projections (and the student) end identical on both ranks, so their gradients were
    averaged, and a phase whose loss never reads the student's logits leaves no parameter
    waiting (DDP would hang or raise)."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["steps"] for r in ranks] == [6, 6]
    assert ranks[0]["seen"] != ranks[1]["seen"]  # the ranks trained on different examples
    projections = [k for k in ranks[0]["loss"] if "projection" in k]
    assert len(projections) == 4  # weight and bias of the two pairs' projections
    for key in projections:
        assert not torch.equal(ranks[0]["start"][key], ranks[0]["loss"][key]), key  # trained
        assert torch.equal(ranks[0]["loss"][key], ranks[1]["loss"][key]), key
    for key, value in ranks[0]["student"].items():
        assert torch.equal(value, ranks[1]["student"][key]), key
    assert ranks[0]["last_losses"] == ranks[1]["last_losses"]  # the global batch's terms


# ---- end to end: torchrun with 2 CPU processes vs one process ------------------------------

# torchrun target: the CLI, with rank 1 starting 1.2 s late, so the ranks' clocks name
# different seconds and only the shared run directory keeps them in one.
LATE_RANK = ("import os, sys, time\n"
             "if os.environ.get('RANK') == '1':\n    time.sleep(1.2)\n"
             "from distillkit.app.cli import main\nmain()\n")


def _cli_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "DISTILLKIT_CACHE": str(tmp_path / "dk-cache"), "DISTILLKIT_RANK_LOG_LEVEL": "INFO"}


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL_TOL * max(abs(a), abs(b), 1e-12)


@pytest.mark.e2e
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    script = tmp_path / "late_rank.py"
    script.write_text(LATE_RANK)
    ddp_cwd = tmp_path / "ddp"
    ddp_cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), *COMPARED_RUN], cwd=ddp_cwd, env=_cli_env(tmp_path), capture_output=True,
        text=True, timeout=300, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    runs = [p for p in (ddp_cwd / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs  # one shared run directory, named by rank 0's clock
    ddp_dir = runs[0]
    one_dir = tmp_path / "one"
    single = subprocess.run([sys.executable, "-m", "distillkit", *COMPARED_RUN,
                             f"hydra.run.dir={one_dir}"], cwd=tmp_path,
                            env=_cli_env(tmp_path), capture_output=True, text=True,
                            timeout=300, check=False)
    assert single.returncode == 0, single.stderr[-3000:]

    # rank 0 alone wrote the run's output: the same files as the one-process run
    assert sorted(p.name for p in ddp_dir.iterdir()) == sorted(p.name for p in
                                                               one_dir.iterdir())
    assert len(list((ddp_dir / "tb").iterdir())) == 1
    assert "[rank 1]" not in (ddp_dir / "distillkit.log").read_text()
    # the teacher stage and the teacher logits ran once; rank 1 read both caches
    assert output.count("fine-tuning teacher") == 1 and output.count("computed in") == 1
    assert output.count("[rank 1] reusing fine-tuned teacher from cache") == 1
    assert output.count("[rank 1] teacher logits for 'train'") == 1
    assert "read from cache" in output.split("[rank 1] teacher logits for 'train'")[1][:200]

    ddp = json.loads((ddp_dir / "metrics.json").read_text())
    one = json.loads((one_dir / "metrics.json").read_text())
    assert ddp["distributed"] == {"processes": 2, "backend": "gloo", "batch_per_process": 16}
    assert "distributed" not in one
    assert ddp["train"]["steps"] == one["train"]["steps"] == 48
    for who in ("teacher", "student"):
        assert ddp[who]["examples"] == one[who]["examples"] == 128
        assert abs(ddp[who]["accuracy"] - one[who]["accuracy"]) <= 1 / 128
        assert _close(ddp[who]["loss"], one[who]["loss"]), (who, ddp[who], one[who])
    for name, value in one["train"]["last_losses"].items():
        assert _close(ddp["train"]["last_losses"][name], value), name
    assert [e["step"] for e in ddp["train"]["evals"]] == [16, 32, 48]
    for a, b in zip(ddp["train"]["evals"], one["train"]["evals"], strict=True):
        assert abs(a["accuracy"] - b["accuracy"]) <= 1 / 128 and _close(a["loss"], b["loss"])
    assert one["student"]["accuracy"] > 0.5  # the compared student learned something


@pytest.mark.e2e
def test_submitit_job_with_two_tasks_is_one_ddp_run(tmp_path):
    """The SLURM launcher's code path on this machine: submitit's local executor starts the
    job's 2 tasks, distillkit exports the torch environment from submitit's and runs DDP."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="hydra-submitit-launcher (distillkit[slurm]) not installed")
    sweep = tmp_path / "sweep"
    env = _cli_env(tmp_path)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", "distillkit", "-m", "hydra/launcher=submitit_local",
         "hydra.launcher.tasks_per_node=2", *TINY_RUN, "trainer.max_steps=4",
         "export_student=false", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (job,) = [p.parent for p in sweep.glob("*/metrics.json")]
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["distributed"]["processes"] == 2 and metrics["train"]["steps"] == 4
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "submitit job: rank 1 of 2" in logs
    assert "[rank 1]" not in (job / "distillkit.log").read_text()
