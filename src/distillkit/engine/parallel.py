"""The loop's data parallelism: student and loss trained together under DDP, or sharded with
FSDP (``trainer.sharding=fsdp``: :mod:`.sharding`).

The loss may hold trainable parameters (projections of intermediate terms), so the module that
:class:`~torch.nn.parallel.DistributedDataParallel` wraps holds both the student and the loss:
one forward through the wrapper computes the student's outputs and the loss, and DDP averages
the gradients of both over the ranks during the backward pass.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distillkit.engine import sharding
from distillkit.runtime.distributed import DistEnv

# The models' buffers (position ids) never change: no broadcast before every forward pass.
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


class StudentAndLoss(nn.Module):
    """The student followed by the loss, as one module (what DDP wraps)."""

    def __init__(self, student: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.loss = loss

    def forward(self, inputs: dict, flags: dict[str, bool], teacher_out: Any,
                batch: dict) -> Any:
        """The loss output for one batch.

        Only the loss comes out: DDP looks for the parameters that get no gradient by walking
        back from the outputs, and the student's logits are not in the loss in a phase that
        trains the intermediate terms alone.
        """
        return self.loss(self.student(**inputs, **flags), teacher_out, batch)


class ParallelStep:
    """Forward and backward passes of one micro-batch, plain or under DDP.

    Args:
        student: the student, already on ``device``.
        loss: the loss module, already on ``device``.
        device: the rank's device.
        dist: the run's ranks; a plain module call when not enabled.
        sharded: shard student and loss with FSDP (:func:`.sharding.shard_model`) instead of
            wrapping them in DDP (needs ``dist.enabled``).
    """

    def __init__(self, student: nn.Module, loss: nn.Module, device: torch.device,
                 dist: DistEnv, sharded: bool = False) -> None:
        self.dist = dist
        self.sharded = sharded
        self.module: nn.Module = StudentAndLoss(student, loss)
        if sharded:
            sharding.check_sharding("fsdp", dist.world_size if dist.enabled else 1)
            sharding.shard_model(student)
            sharding.shard_loss(loss)
        elif dist.enabled:
            trainable_loss = any(p.requires_grad for p in loss.parameters())
            self.module = DistributedDataParallel(
                self.module, device_ids=[device.index] if device.type == "cuda" else None,
                # projections of terms that are off in a phase get no gradient at some steps
                find_unused_parameters=trainable_loss, **_NO_BUFFER_SYNC)

    def forward_backward(self, inputs: dict, flags: dict[str, bool], teacher_out: Any,
                         batch: dict, sync: bool, autocast: AbstractContextManager,
                         backward: Callable[[torch.Tensor], None]) -> tuple[Any, float]:
        """Runs student and loss on one micro-batch, then ``backward(weight * total)``.

        Args:
            inputs: the model inputs, on the device.
            flags: which optional outputs the student returns.
            teacher_out: the teacher's outputs for the batch (or None).
            batch: the batch on the device (its ``attention_mask`` counts this rank's
                examples).
            sync: whether this backward pass averages the gradients over the ranks (the last
                micro-batch of an optimizer step); False accumulates them locally.
            autocast: the forward pass's autocast context.
            backward: back-propagates the weighted loss (with the loop's scaler and
                accumulation).

        Returns:
            The loss output and this rank's share weight (:meth:`DistEnv.shard_weight`).
        """
        weight = self.dist.shard_weight(int(batch["attention_mask"].shape[0]))
        context = nullcontext()
        if self.dist.enabled and not sync:
            context = (sharding.no_gradient_sync(self.module) if self.sharded
                       else self.module.no_sync())
        with context:
            with autocast:
                out = self.module(inputs, flags, teacher_out, batch)
            backward(out.total * weight if weight != 1.0 else out.total)
        return out, weight

    def reduce_terms(self, values: dict[str, torch.Tensor], weight: float) -> dict[str, float]:
        """The logged loss terms of the whole global batch: each rank's per-example means
        weighted by its share of the examples, added up over the ranks."""
        if not self.dist.enabled:
            return {name: float(v) for name, v in values.items()}
        stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(())
                               .to(next(iter(values.values())).device) for v in values.values()])
        stacked = self.dist.all_reduce(stacked * (weight / self.dist.world_size))
        return dict(zip(values, stacked.tolist(), strict=True))

    def training_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Student, loss and optimizer states for a checkpoint: full state dicts, the same
        format as an unsharded run's (a collective when sharded: every rank calls it; rank 0
        gets the tensors)."""
        inner = self._inner()
        if not self.sharded:
            return {"student": inner.student.state_dict(), "loss": inner.loss.state_dict(),
                    "optimizer": optimizer.state_dict()}
        return {"student": sharding.full_model_state(inner.student),
                "loss": sharding.full_model_state(inner.loss),
                "optimizer": sharding.full_optimizer_state(inner, optimizer)}

    def load_training_state(self, state: dict[str, Any],
                            optimizer: torch.optim.Optimizer) -> None:
        """Loads :meth:`training_state`'s result (every rank reads the checkpoint)."""
        inner = self._inner()
        sharding.load_full_model_state(inner.student, state["student"])
        sharding.load_full_model_state(inner.loss, state["loss"])
        if self.sharded:
            sharding.load_full_optimizer_state(inner, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])

    def _inner(self) -> StudentAndLoss:
        module = self.module
        return module.module if isinstance(module, DistributedDataParallel) else module
