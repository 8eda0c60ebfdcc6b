"""Plain settings of the training loop (no Hydra types: the engine runs without Hydra)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from distillkit.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class EngineSettings:
    """Training-loop settings (the ``trainer`` config group, minus optimizer and scheduler).

    Attributes:
        epochs: passes over the training split (ignored when ``max_steps`` is set).
        max_steps: optimizer steps to run; overrides ``epochs``.
        batch_size: training examples per forward pass.
        eval_batch_size: examples per evaluation batch.
        grad_accum_steps: forward passes per optimizer step.
        max_grad_norm: gradient-norm clipping threshold (None: no clipping).
        eval_every_steps: evaluate the student every N optimizer steps (None: after each epoch).
        log_every_steps: log losses and lr every N optimizer steps (the only host syncs).
        seed: seed for model initialisation, shuffling and dropout.
        device: ``auto`` (cuda if available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (bf16 autocast on a GPU that supports it, else fp32), ``fp32`` or
            ``bf16`` (autocast).
        progress: show progress bars.
        num_workers: DataLoader worker processes.
        group_by_length: training batches group examples of similar length (random batches,
            far less padding; evaluation and inference batches are always length-sorted).
    """

    epochs: int = 1
    max_steps: Optional[int] = None  # noqa: UP045 - OmegaConf needs typing.Optional
    batch_size: int = 32
    eval_batch_size: int = 64
    grad_accum_steps: int = 1
    max_grad_norm: Optional[float] = 1.0  # noqa: UP045
    eval_every_steps: Optional[int] = None  # noqa: UP045
    log_every_steps: int = 20
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    progress: bool = True
    num_workers: int = 0
    group_by_length: bool = True

    def validate(self) -> None:
        """Raises ConfigError for out-of-range values."""
        positive = {"trainer.batch_size": self.batch_size,
                    "trainer.eval_batch_size": self.eval_batch_size,
                    "trainer.grad_accum_steps": self.grad_accum_steps,
                    "trainer.log_every_steps": self.log_every_steps}
        if self.max_steps is not None:
            positive["trainer.max_steps"] = self.max_steps
        else:
            positive["trainer.epochs"] = self.epochs
        if self.eval_every_steps is not None:
            positive["trainer.eval_every_steps"] = self.eval_every_steps
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"trainer.precision='{self.precision}' is not one of {', '.join(PRECISIONS)}"
            )

    def resolve_device(self) -> torch.device:
        """The torch device for ``device`` (``auto`` picks cuda when present)."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ConfigError(f"trainer.device='{self.device}' is not a device: {exc}") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("trainer.device asks for cuda but no GPU is visible; "
                              "use trainer.device=auto or cpu")
        return device

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype for ``device`` (None: full fp32)."""
        if self.precision == "bf16":
            return torch.bfloat16
        if self.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
