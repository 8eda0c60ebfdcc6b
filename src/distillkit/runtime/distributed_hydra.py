"""Hydra's side of a data-parallel run: one run directory for every rank, written by rank 0.

Under ``torchrun`` (or ``accelerate launch``) every rank runs the Hydra app and composes its own
config. The run directory defaults to ``outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}``, and the ranks
start a moment apart, so each could name a different second. :class:`SharedRunDir` (a Hydra
callback in ``conf/config.yaml``) makes ``${now:...}`` read rank 0's clock on every rank before
Hydra resolves the run or sweep directory: all ranks share rank 0's directory, whatever pattern
it uses, also without ``hydra.run.dir``.

Ranks > 0 write nothing there: ``hydra.output_subdir`` is ``${distillkit.rank0:.hydra}``, which
resolves to None (no ``.hydra/`` copy of the config) on ranks > 0 while every rank's config,
and so the ``multirun.yaml`` each rank's sweeper saves, stays the same text; and
:func:`prepare_job` sends their log lines to the console only
(:func:`distillkit.runtime.distributed.configure_rank_logging`).

Under submitit (``hydra/launcher=slurm``) the launcher names each job's directory once, when it
submits the sweep, so every task already shares it; each task is one rank.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from distillkit.runtime import distributed

log = logging.getLogger(__name__)


def share_launch_time(config: DictConfig) -> None:
    """Makes ``${now:...}`` resolve to rank 0's launch time on every rank (a no-op in a
    one-process run)."""
    env = distributed.setup()
    if not env.enabled:
        return
    stamp = env.broadcast_object(time.time() if env.is_main else None)
    moment = datetime.datetime.fromtimestamp(stamp)
    OmegaConf.register_new_resolver("now", lambda pattern: moment.strftime(pattern),
                                    use_cache=True, replace=True)
    OmegaConf.clear_cache(config)  # nothing resolved with this rank's own clock stays


class SharedRunDir(Callback):
    """Every rank of a torchrun launch uses rank 0's run (or sweep) directory."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before Hydra resolves ``hydra.run.dir``."""
        share_launch_time(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before the sweeper resolves ``hydra.sweep.dir``."""
        share_launch_time(config)


def launch_rank() -> int:
    """This process's global rank as its launcher named it (before any process group): the
    ``RANK`` of torchrun/accelerate, a submitit task's rank, else 0."""
    if os.environ.get("RANK"):
        return int(os.environ["RANK"])
    if os.environ.get("SUBMITIT_EXECUTOR"):
        try:
            from submitit import JobEnvironment

            return int(JobEnvironment().global_rank)
        except Exception:  # not inside a job after all
            return 0
    return 0


def _rank0(value: Any) -> Any:
    """``${distillkit.rank0:x}``: x on rank 0, None on the other ranks."""
    return value if launch_rank() == 0 else None


# Resolved in each process when Hydra reads it (never cached: the config travels to submitit
# tasks). Registered on import: the CLI and the submitit tasks (which unpickle the CLI's task
# function) import this module before Hydra resolves the config.
OmegaConf.register_new_resolver("distillkit.rank0", _rank0, replace=True)


def prepare_job() -> distributed.DistEnv:
    """Joins the process group (a submitit task exports its rank first) and quiets the log of
    ranks > 0; called at the start of every job."""
    env = distributed.setup()
    distributed.configure_rank_logging(env)
    if env.enabled and env.is_main:
        log.info("data-parallel run: %d processes (backend %s); rank 0 writes the output",
                 env.world_size, env.backend)
    return env
