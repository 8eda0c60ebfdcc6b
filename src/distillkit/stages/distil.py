"""The ``distil`` stage: the student learns from the teacher.

One engine (:class:`distillkit.engine.Distiller`) for every task: checkpoints and ``resume``,
data-parallel ranks, evaluation during training by the task's headline metric (which also
picks the best checkpoint), TensorBoard scalars.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from distillkit.engine import Distiller, freeze_parameters
from distillkit.errors import ConfigError
from distillkit.pipeline.context import RunContext
from distillkit.runtime.checkpoint import (
    DIRNAME,
    CheckpointManager,
    check_resumable,
    find_checkpoint,
    flat_config,
    load_checkpoint,
)
from distillkit.runtime.io import write_json

log = logging.getLogger(__name__)

# Test-only: SIGKILL the run right after this optimizer step (the resume test's crash).
KILL_AT_STEP_ENV = "DISTILLKIT_TEST_KILL_AT_STEP"


def checkpointing(cfg: DictConfig, out_dir: Path
                  ) -> tuple[CheckpointManager | None, dict | None, Path | None]:
    """The run's checkpoint manager and the state to resume from (``resume``), if any."""
    every = cfg.trainer.get("checkpoint_every_steps")
    config = flat_config(OmegaConf.to_container(cfg, resolve=True))
    path = find_checkpoint(cfg.get("resume"), out_dir)
    state = None
    if path is not None:
        state = load_checkpoint(path)
        check_resumable(state.get("meta", {}), config, path)
        log.info("resuming from checkpoint %s (step %d)", path, state["step"])
    if every is None and path is None:
        return None, None, None
    keep = int(cfg.trainer.get("keep_checkpoints", 2))
    manager = CheckpointManager(out_dir / DIRNAME, every, keep, meta={"config": config})
    return manager, state, path


def _kill_hook():
    """Test-only: SIGKILL after the step named by ``$DISTILLKIT_TEST_KILL_AT_STEP``."""
    at = os.environ.get(KILL_AT_STEP_ENV)
    if not at:
        return None

    def kill(step: int) -> None:
        if step == int(at):
            log.warning("%s=%s: killing the run with SIGKILL", KILL_AT_STEP_ENV, at)
            os.kill(os.getpid(), signal.SIGKILL)
    return kill


class DistilStage:
    """Trains the student with the loss (resuming from a checkpoint when asked)."""

    name = "distil"
    main_first = False

    def prepare(self, ctx: RunContext) -> None:
        every = ctx.cfg.trainer.get("checkpoint_every_steps")
        keep = int(ctx.cfg.trainer.get("keep_checkpoints", 2))
        if every is not None and every < 1:
            raise ConfigError(f"trainer.checkpoint_every_steps must be >= 1 or null, got {every}")
        if keep < 1:
            raise ConfigError(f"trainer.keep_checkpoints must be >= 1, got {keep}")
        ctx.dist.per_rank_batch(ctx.settings.batch_size)  # the global batch: divisible
        ctx.details["checkpointing"] = checkpointing(ctx.cfg, ctx.out_dir)

    def run(self, ctx: RunContext) -> str:
        cfg, settings, task = ctx.cfg, ctx.settings, ctx.task
        checkpoints, resume_state, resume_path = ctx.details.pop("checkpointing")
        if ctx.dist.is_main:
            write_json(ctx.out_dir / "mapping.json", {
                "pairs": [p.as_dict() for p in ctx.pairs],
                "plan": [{"term": n, "student": p.student, "teacher": p.teacher, "weight": w}
                         for n, p, w in ctx.loss.layer_plan()]})
        # a resumed run drops the events logged after its checkpoint, then logs them again
        ctx.writer = SummaryWriter(
            log_dir=str(ctx.out_dir / "tb"),
            purge_step=resume_state["step"] + 1 if resume_state else None) \
            if ctx.dist.is_main else None
        if cfg.trainer.get("freeze"):
            freeze_parameters(ctx.student.model, list(cfg.trainer.freeze), "trainer.freeze")
        student, teacher = task.train_modules(ctx)
        ctx.distiller = Distiller(
            student=student, teacher=teacher, loss=ctx.loss,
            optimizer_factory=instantiate(cfg.trainer.optimizer),
            scheduler_factory=instantiate(cfg.trainer.scheduler),
            settings=settings, writer=ctx.writer, checkpoints=checkpoints,
            step_callback=_kill_hook(), dist=ctx.dist, batch_hook=task.batch_hook(ctx))
        evaluate, source = task.evaluator(ctx) or (None, None)
        ctx.result = ctx.distiller.fit(task.train_loader(ctx), source, resume=resume_state,
                                       evaluate=evaluate, metric=task.metric(ctx))
        if resume_path is not None:
            ctx.details["resumed_from"] = {"checkpoint": str(resume_path),
                                           "step": int(resume_state["step"])}
            return "resumed"
        return "computed"
