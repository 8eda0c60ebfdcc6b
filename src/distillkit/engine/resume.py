"""What the loop needs to stop anywhere and continue bit-for-bit: RNG states and a sink.

A checkpoint holds, besides the model, loss, optimizer and scheduler states:

* the global RNG states (python, numpy, torch, cuda) at the checkpoint step, which drive
  dropout from there on;
* the training loader's position: the epoch, the number of batches already taken from it, and
  the RNG states *as they were when the epoch started*. Resuming restores those, draws the same
  permutation again, skips the batches already trained on, then restores the step's RNG states.

The engine hands checkpoint payloads to a :class:`CheckpointSink` (``distillkit.runtime.checkpoint``
writes them to disk); it never decides where or how they are stored.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

import numpy as np
import torch

from distillkit.errors import TrainingError


class CheckpointSink(Protocol):
    """Receives training-state payloads from :meth:`Distiller.fit`."""

    def due(self, step: int, evaluated: bool) -> bool:
        """Whether to checkpoint after optimizer step ``step`` (``evaluated``: an eval ran)."""

    def save(self, step: int, state: dict[str, Any], metric: float | None) -> None:
        """Stores ``state``; ``metric`` (higher is better, or None) ranks the best one."""

    def latest(self) -> Any:
        """The newest checkpoint stored (named in a NaN-loss error), or None."""


def _numpy_state() -> tuple:
    # plain Python values, so checkpoints load with torch.load(weights_only=True)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return kind, keys.tolist(), int(pos), int(has_gauss), float(cached)


def capture_rng() -> dict[str, Any]:
    """The global RNG states: python, numpy, torch (CPU) and every CUDA device."""
    return {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Restores what :func:`capture_rng` captured."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture_epoch_rng(loader: Any) -> dict[str, Any]:
    """The RNG states an epoch of ``loader`` draws its order from, taken before iterating.

    A DataLoader with its own ``generator`` draws from it; without one it draws from the
    global torch RNG, so both are kept.
    """
    generator = getattr(loader, "generator", None)
    return {"generator": generator.get_state() if generator is not None else None,
            "torch": torch.get_rng_state()}


def restore_epoch_rng(loader: Any, state: dict[str, Any]) -> None:
    """Restores what :func:`capture_epoch_rng` captured (before iterating ``loader`` again)."""
    generator = getattr(loader, "generator", None)
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])


def check_total_steps(resume: dict[str, Any], total_steps: int) -> None:
    """Refuses a checkpoint taken in a run of another length (its scheduler and position would
    not fit this run).

    Raises:
        TrainingError: naming both lengths and the fix.
    """
    if resume["total_steps"] != total_steps:
        raise TrainingError(
            f"the checkpoint was taken in a run of {resume['total_steps']} steps, this run "
            f"has {total_steps}; resume with the same trainer.max_steps/epochs")


def rank_rng(resume: dict[str, Any], dist: Any) -> dict[str, Any]:
    """This rank's RNG states in a checkpoint (``dist``: the run's
    :class:`~distillkit.runtime.distributed.DistEnv`); rank 0's when the checkpoint came from
    another number of processes."""
    ranks = resume.get("rank_rng")
    if dist.enabled and ranks and len(ranks) == dist.world_size:
        return ranks[dist.rank]
    return resume["rng"]
