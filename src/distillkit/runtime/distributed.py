"""Data-parallel runs (DDP): the launch environment, the process group and what each rank does.

A run is distributed when its launcher names the processes through the environment:

* ``torchrun --nproc_per_node=N -m distillkit ...`` and ``accelerate launch`` set ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (even for N = 1);
* a submitit job with several tasks (``hydra/launcher=slurm``, conf/hydra/launcher/) sets
  only ``SLURM_*`` / ``SUBMITIT_*`` variables: :func:`setup` exports the torch ones from them
  with ``submitit.helpers.TorchDistributedEnvironment``.

Conventions (docs/distributed.md):

* ``trainer.batch_size`` is the *global* batch: every optimizer step takes the same examples as
  a one-process run, each of the N ranks ``batch_size / N`` of them (N must divide it);
  gradients and logged losses are averaged weighted by each rank's share, so they equal the
  one-process values up to float reduction order;
* each rank runs on ``cuda:<LOCAL_RANK>`` (modulo the GPUs it sees) when the device is
  ``auto``/``cuda``; the process group is ``gloo`` on CPU-only machines and
  ``cpu:gloo,cuda:nccl`` otherwise (``$DISTILLKIT_DIST_BACKEND`` overrides it);
* rank 0 builds first (teacher stage and teacher-logits cache: computed once) while the others
  wait, then they read the caches; rank 0 alone writes into the run directory.

Collectives wait ``$DISTILLKIT_DIST_TIMEOUT_MINUTES`` (default 120) before failing, so the other
ranks can wait for rank 0 to fine-tune a teacher.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from distillkit.errors import ConfigError

log = logging.getLogger(__name__)

BACKEND_ENV = "DISTILLKIT_DIST_BACKEND"
TIMEOUT_ENV = "DISTILLKIT_DIST_TIMEOUT_MINUTES"
# Log level of ranks > 0 (their lines go to the console only, prefixed with the rank).
RANK_LOG_LEVEL_ENV = "DISTILLKIT_RANK_LOG_LEVEL"


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the run.

    Attributes:
        rank: global rank (0 writes the run's output).
        world_size: number of processes.
        local_rank: rank on this machine (picks the GPU).
        enabled: launched by a distributed launcher (a process group exists).
        backend: the process group's backend (None when not enabled).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes checkpoints, logs and metrics."""
        return self.rank == 0

    def barrier(self) -> None:
        """Waits until every rank gets here (no-op in a one-process run)."""
        if self.enabled:
            dist.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Runs the block on rank 0 first, then on the others (which find rank 0's caches)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduces ``tensor`` in place over the ranks (``sum`` or ``max``) and returns it."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (``[obj]`` in a one-process run)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def shard(self) -> tuple[int, int] | None:
        """``(rank, world_size)`` for data loaders, or None in a one-process run."""
        return (self.rank, self.world_size) if self.enabled else None

    def shard_weight(self, local_examples: int) -> float:
        """Scale of this rank's mean loss so that DDP's gradient average equals the gradient
        of the mean over the whole global batch: ``n_local * N / n_global`` (1 when every
        rank holds the same number of examples; only a last, smaller batch differs)."""
        if not self.enabled:
            return 1.0
        total = self.all_reduce(torch.tensor([float(local_examples)]))
        return local_examples * self.world_size / max(float(total.item()), 1.0)

    def device_for(self, requested: str) -> str:
        """The device a rank trains on for ``trainer.device`` (``auto``/``cuda`` pick the
        local rank's GPU).

        Raises:
            ConfigError: ``cuda:N`` in a run of several processes (all would share one GPU).
        """
        if not self.enabled or requested == "cpu" or not torch.cuda.is_available():
            return requested
        if requested in ("auto", "cuda"):
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        if self.world_size > 1:
            raise ConfigError(f"trainer.device={requested} names one GPU for {self.world_size} "
                              "processes; use trainer.device=auto (each rank takes the GPU of "
                              "its LOCAL_RANK)")
        return requested

    def per_rank_batch(self, batch_size: int) -> int:
        """This rank's share of the global ``trainer.batch_size``.

        Raises:
            ConfigError: when the number of processes does not divide the batch size.
        """
        if batch_size % self.world_size:
            raise ConfigError(
                f"trainer.batch_size={batch_size} is the global batch and must be divisible by "
                f"the {self.world_size} processes (each takes batch_size / processes examples)")
        return batch_size // self.world_size

    def summary(self, batch_size: int) -> dict[str, Any]:
        """How the run was split, for ``metrics.json``."""
        return {"processes": self.world_size, "backend": self.backend,
                "batch_per_process": self.per_rank_batch(batch_size)}


SINGLE = DistEnv()
_current = SINGLE


def current() -> DistEnv:
    """The environment set up by :func:`setup` (a one-process run before or without it)."""
    return _current


def _export_submitit_env() -> None:
    """Inside a submitit job of several tasks, exports RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR and MASTER_PORT from its SLURM (or local) environment."""
    if "RANK" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    try:
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:  # a submitit job without submitit installed cannot happen; be safe
        return
    if JobEnvironment().num_tasks < 2:
        return
    # CUDA_VISIBLE_DEVICES is left as SLURM set it: device_for() maps the local rank onto it
    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    log.info("submitit job: rank %d of %d (local rank %d), master %s:%d", env.rank,
             env.world_size, env.local_rank, env.master_addr, env.master_port)


def _backend() -> str:
    if os.environ.get(BACKEND_ENV):
        return os.environ[BACKEND_ENV]
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def setup() -> DistEnv:
    """Detects the launcher's environment and joins the process group (once per process).

    Returns:
        This process's :class:`DistEnv` (also from :func:`current` from now on).
    """
    global _current
    if _current.enabled:
        return _current
    _export_submitit_env()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return _current
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if torch.cuda.is_available():
        torch.cuda.set_device(local % torch.cuda.device_count())
    backend = _backend()
    if not dist.is_initialized():
        minutes = float(os.environ.get(TIMEOUT_ENV, 120))
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=minutes))
    _current = DistEnv(rank=rank, world_size=world, local_rank=local, enabled=True,
                       backend=backend)
    return _current


def shutdown() -> None:
    """Leaves the process group (at the end of the process)."""
    global _current
    if _current.enabled and dist.is_initialized():
        dist.destroy_process_group()
    _current = SINGLE


class _RankPrefix(logging.Filter):
    """Prefixes every record with the rank that logged it."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.prefix = f"[rank {rank}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_rank_prefixed", False):
            record.msg = f"{self.prefix}{record.msg}"
            record._rank_prefixed = True
        return True


def configure_rank_logging(env: DistEnv) -> None:
    """Ranks > 0 log to the console only (no file in the run directory), prefixed with their
    rank, at ``$DISTILLKIT_RANK_LOG_LEVEL`` (default WARNING: rank 0 tells the story)."""
    if env.is_main:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
        elif not any(isinstance(f, _RankPrefix) for f in handler.filters):
            handler.addFilter(_RankPrefix(env.rank))
    root.setLevel(os.environ.get(RANK_LOG_LEVEL_ENV, "WARNING").upper())
