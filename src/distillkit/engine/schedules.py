"""Learning-rate schedules (thin wrapper over ``transformers.get_scheduler``)."""

from __future__ import annotations

import torch
from transformers import get_scheduler

from distillkit.errors import ConfigError


def warmup_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    num_training_steps: int,
    name: str = "linear",
    warmup_ratio: float = 0.0,
    warmup_steps: int | None = None,
) -> torch.optim.lr_scheduler.LRScheduler:
    """Any transformers schedule, with warm-up given as a ratio or a step count.

    Args:
        optimizer: the optimizer to schedule.
        num_training_steps: total optimizer steps (filled in by the engine).
        name: a ``transformers.SchedulerType`` (linear, cosine, constant_with_warmup, ...).
        warmup_ratio: warm-up steps as a fraction of the total (used if warmup_steps is None).
        warmup_steps: explicit warm-up steps.
    """
    if not 0.0 <= warmup_ratio < 1.0:
        raise ConfigError(f"trainer.scheduler.warmup_ratio must be in [0, 1), got {warmup_ratio}")
    warmup = warmup_steps if warmup_steps is not None else int(warmup_ratio * num_training_steps)
    try:
        return get_scheduler(name, optimizer, num_warmup_steps=warmup,
                             num_training_steps=num_training_steps)
    except ValueError as exc:
        raise ConfigError(f"trainer.scheduler.name='{name}': {exc}") from exc
