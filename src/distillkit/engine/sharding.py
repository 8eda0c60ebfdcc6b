"""FSDP sharding of student, loss and teacher (``trainer.sharding=fsdp``, docs/distributed.md).

Under ``torchrun`` with ``trainer.sharding=fsdp`` each model is sharded with FSDP2's
:func:`torch.distributed.fsdp.fully_shard`: every transformer block on its own, then the root
(embeddings, head and whatever else is left), so a rank holds 1/N of the weights, gradients and
optimizer state and gathers one block at a time for its forward and backward passes. The blocks
are found generically: the classes the model names in ``_no_split_modules`` (every Hugging Face
model that supports device maps declares them), else the children of its ``nn.ModuleList``
stacks. The frozen teacher is sharded the same way and reshards after each forward pass.

The loss's trainable parameters (projections) are sharded too, as their own FSDP root: their
gradients are then averaged over the ranks like the student's, and every parameter the optimizer
sees is a ``DTensor`` (a plain optimizer step over a mix of ``DTensor`` and ``Tensor`` refuses).

Checkpoints hold FULL state dicts (:func:`full_model_state`, gathered to rank 0 on the CPU), in
the same format as an unsharded run, so a checkpoint's or the exported student's weights load
into a plain model; :func:`load_full_model_state` shards such a state back on resume.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from transformers import PreTrainedModel

from distillkit.errors import ConfigError

log = logging.getLogger(__name__)

SHARDINGS = ("none", "fsdp")
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
_LOAD_FULL = StateDictOptions(full_state_dict=True)


class HeadAfterForward:
    """Marks a module whose forward pass returns one of its own layers for the caller to apply
    afterwards (:class:`~distillkit.causal.lean.LeanCausalLM` returns its output layer; the
    loss applies it chunk by chunk). Sharded, such a root keeps its gathered weights after its
    forward pass, so the layer holds real tensors (not freed shards) when it is applied and its
    gradient reaches FSDP's reduce-scatter; the backward pass (or :func:`release`, for a
    frozen teacher) shards them again."""


def _reshards_after_forward(module: nn.Module) -> bool:
    return not isinstance(module, HeadAfterForward)


def check_sharding(sharding: str, world_size: int, compile_: bool = False) -> None:
    """Refuses ``trainer.sharding`` values and combinations that cannot run.

    Args:
        sharding: ``trainer.sharding``.
        world_size: processes of the run (1 without a distributed launcher).
        compile_: ``trainer.compile``.

    Raises:
        ConfigError: an unknown value, FSDP in one process, or FSDP with ``trainer.compile``.
    """
    if sharding not in SHARDINGS:
        raise ConfigError(f"trainer.sharding='{sharding}' is not one of {', '.join(SHARDINGS)}")
    if sharding != "fsdp":
        return
    if world_size < 2:
        raise ConfigError("trainer.sharding=fsdp shards the models over several processes but "
                          "this run has one; launch it with torchrun --nproc_per_node=N (N > 1) "
                          "or use trainer.sharding=none")
    if compile_:
        raise ConfigError("trainer.sharding=fsdp with trainer.compile=true is not supported "
                          "(untested together); use trainer.compile=false")


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: instances of the classes named in ``_no_split_modules``,
    else the children of its ``nn.ModuleList`` stacks.

    Raises:
        ConfigError: a model with neither (nothing to shard block by block).
    """
    declared = model._no_split_modules if isinstance(model, PreTrainedModel) else None
    names = set(declared or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names] if names else []
    if not blocks:
        blocks = [child for m in model.modules() if isinstance(m, nn.ModuleList)
                  for child in m.children()]
    if not blocks:
        raise ConfigError(f"trainer.sharding=fsdp finds no transformer blocks in "
                          f"{type(model).__name__} (no _no_split_modules, no nn.ModuleList); "
                          "use trainer.sharding=none")
    return blocks


def shard_model(model: nn.Module, frozen: bool = False) -> nn.Module:
    """Shards ``model`` in place: each block, then the root.

    Args:
        model: the model (already on its device and in its dtype).
        frozen: a forward-only model (the teacher); logged only, every block reshards after
            its forward pass either way.

    Returns:
        ``model`` (its class is now FSDP's subclass of the original; ``state_dict`` keys are
        unchanged).
    """
    blocks = block_modules(model)
    for block in blocks:
        fully_shard(block, reshard_after_forward=True)
    fully_shard(model, reshard_after_forward=_reshards_after_forward(model))
    log.info("FSDP: %s %s sharded in %d blocks + root", "teacher" if frozen else "model",
             type(model).__name__, len(blocks))
    return model


def shard_loss(loss: nn.Module) -> None:
    """Shards the loss's trainable parameters (its projections) as one FSDP root, so their
    gradients are averaged over the ranks; a loss without parameters is left as it is."""
    if any(p.requires_grad for p in loss.parameters()):
        fully_shard(loss, reshard_after_forward=True)


def fsdp_modules(*models: nn.Module) -> list[FSDPModule]:
    """The FSDP-managed modules inside ``models`` (each once)."""
    seen: dict[int, FSDPModule] = {}
    for model in models:
        for m in model.modules():
            if isinstance(m, FSDPModule):
                seen.setdefault(id(m), m)
    return list(seen.values())


def is_sharded(model: nn.Module) -> bool:
    """Whether any part of ``model`` is managed by FSDP."""
    return bool(fsdp_modules(model))


def related_roots(model: nn.Module, roots: Iterable[nn.Module]) -> list[nn.Module]:
    """The sharded ``roots`` that share a module with ``model`` (a teacher cut to its first
    layers shares the blocks and embeddings of the whole teacher)."""
    mine = {id(m) for m in model.modules()}
    return [root for root in roots if mine & {id(m) for m in root.modules()}]


@contextmanager
def gathered(models: list[nn.Module]) -> Iterator[None]:
    """Holds the full weights of ``models`` on every rank (forward-only use: evaluation).

    Inside, forward passes run no collective, so ranks may run different numbers of batches
    (each evaluates its own shard of a split). On exit the weights are sharded again.
    """
    modules = fsdp_modules(*models)
    for root in models:
        if isinstance(root, FSDPModule):  # its blocks may now run before the root has run
            root._get_fsdp_state()._lazy_init()  # (which names the root): name it first
    for m in modules:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in modules:
            m.set_reshard_after_forward(_reshards_after_forward(m), recurse=False)
            m.reshard()


def release(model: nn.Module) -> None:
    """Shards the gathered weights of a sharded forward-only model again (a frozen
    :class:`HeadAfterForward` teacher once the loss has applied its layer)."""
    for m in fsdp_modules(model):
        m.reshard()


@contextmanager
def no_gradient_sync(module: nn.Module) -> Iterator[None]:
    """Accumulates gradients locally (no reduce-scatter) for the FSDP modules of ``module``."""
    modules = fsdp_modules(module)
    for m in modules:
        m.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        for m in modules:
            m.set_requires_gradient_sync(True)


def full_model_state(model: nn.Module) -> dict[str, Any]:
    """The full (unsharded) state dict, on the CPU, on rank 0 (empty on the others). A
    collective: every rank calls it."""
    if not is_sharded(model):
        return model.state_dict()
    return get_model_state_dict(model, options=_FULL)


def load_full_model_state(model: nn.Module, state: dict[str, Any]) -> None:
    """Loads a full state dict (every rank holds it) into a sharded or plain model."""
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    set_model_state_dict(model, dict(state), options=_LOAD_FULL)  # it rewrites its argument


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state (keyed by parameter name), on rank 0. A collective."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                              state: dict[str, Any]) -> None:
    """Loads :func:`full_optimizer_state`'s result (every rank holds it) into the sharded
    optimizer."""
    set_optimizer_state_dict(model, optimizer, copy.deepcopy(state), options=_LOAD_FULL)
