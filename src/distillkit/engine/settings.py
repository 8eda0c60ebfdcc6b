"""Plain settings of the training loop (no Hydra types: the engine runs without Hydra)."""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from distillkit.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products in hardware (AVX512-BF16 or AMX-BF16 on
    x86, the BF16 extension on Arm). Without it, bf16 on the CPU is emulated and slower."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap, reliable check; stay in fp32
        return False
    flags = set()
    for line in info.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


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
        precision: the student's compute precision: ``fp32``, ``bf16`` (autocast) or ``fp16``
            (autocast with a gradient scaler); ``auto`` picks bf16 on a GPU that supports it
            and on a CPU with native bf16 (AVX512-BF16 / AMX), else fp32.
        teacher_precision: the frozen teacher's precision: ``fp32``, ``bf16`` or ``fp16``
            (its weights are cast, which is faster than autocast for a model that is never
            trained); ``auto`` follows ``precision``. Applies to the teacher's forward passes
            while distilling, its cached logits and its final evaluation; its fine-tune stage
            runs under ``precision``.
        teacher_batch_size: batch size of the teacher-logits pass (None: the largest that
            fits on a GPU, ``eval_batch_size`` on a CPU).
        teacher_dropout: run the teacher with its dropout active (stochastic soft targets, as
            some recipes do); its outputs then differ every pass, so they are never cached.
        compile: compile student and teacher with ``torch.compile`` (dynamic shapes); the
            first steps are slow while it compiles.
        compile_backend: ``torch.compile`` backend (``inductor``; ``eager`` checks the wiring).
        progress: show progress bars.
        num_workers: DataLoader worker processes.
        group_by_length: training batches group examples of similar length (random batches,
            far less padding; evaluation and inference batches are always length-sorted).
        keep_freed_memory: on a CPU, glibc keeps freed memory mapped for the next step
            instead of returning it to the system and page-faulting it back in
            (:mod:`distillkit.runtime.memory`); no effect on a GPU or without glibc.
        sharding: ``none`` (each rank holds whole models: DDP under a distributed launcher)
            or ``fsdp`` (student, loss and teacher sharded over the ranks with FSDP2; needs
            more than one process: :mod:`distillkit.engine.sharding`).
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
    teacher_precision: str = "auto"
    teacher_batch_size: Optional[int] = None  # noqa: UP045
    teacher_dropout: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    progress: bool = True
    num_workers: int = 0
    group_by_length: bool = True
    keep_freed_memory: bool = True
    sharding: str = "none"

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
        if self.teacher_batch_size is not None:
            positive["trainer.teacher_batch_size"] = self.teacher_batch_size
        if self.eval_every_steps is not None:
            positive["trainer.eval_every_steps"] = self.eval_every_steps
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"trainer.precision='{self.precision}' is not one of {', '.join(PRECISIONS)}"
            )
        if self.sharding not in ("none", "fsdp"):
            raise ConfigError(f"trainer.sharding='{self.sharding}' is not one of none, fsdp")
        if self.teacher_precision not in PRECISIONS:
            raise ConfigError(f"trainer.teacher_precision='{self.teacher_precision}' is not one "
                              f"of {', '.join(PRECISIONS)}")

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

    def resolved_precision(self, device: torch.device) -> str:
        """``precision`` with ``auto`` resolved for ``device``: fp32, bf16 or fp16."""
        if self.precision != "auto":
            return self.precision
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        if device.type == "cpu":
            return "bf16" if cpu_has_native_bf16() else "fp32"
        return "fp32"

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The student's autocast dtype for ``device`` (None: full fp32)."""
        return DTYPES[self.resolved_precision(device)]

    def teacher_dtype(self, device: torch.device) -> torch.dtype | None:
        """The dtype the frozen teacher's weights are cast to (None: fp32, unchanged)."""
        if self.teacher_precision == "auto":
            return self.autocast_dtype(device)
        return DTYPES[self.teacher_precision]
