"""The generic distillation loop.

The engine receives built objects only: a student and an (optional) teacher ``nn.Module``, a
:class:`~distillkit.losses.contract.KDLoss`, factories for the optimizer and scheduler, and
data loaders. It knows nothing about which loss, model or dataset it runs. A batch that carries
``teacher_logits`` (precomputed teacher outputs) is distilled from those instead of a live
teacher forward pass. Hidden states and attention maps are requested from the models only at
steps where the loss's ``required_features()`` names them; the loss hears every step through
``set_progress(step, total_steps)`` before its update.

With a checkpoint sink the loop hands over its complete state (student, loss, optimizer,
scheduler, RNG states, loader position, results so far) at checkpoint steps, and
``fit(resume=state)`` continues from such a state exactly as if the run had never stopped
(see :mod:`distillkit.engine.resume`).

In a data-parallel run (``dist``) student and loss train under DDP (:mod:`.parallel`): each
rank takes its share of every global batch, gradients, logged losses and evaluations are
combined over the ranks, and only rank 0 writes TensorBoard scalars and checkpoints.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from distillkit.engine.evaluate import evaluate, loss_inputs, model_inputs
from distillkit.engine.nonfinite import NonFiniteWatch, check_finite_weights
from distillkit.engine.outputs import cached_teacher_outputs, frozen, plain_outputs
from distillkit.engine.parallel import ParallelStep
from distillkit.engine.resume import (
    CheckpointSink,
    capture_epoch_rng,
    capture_rng,
    check_total_steps,
    rank_rng,
    restore_epoch_rng,
    restore_rng,
)
from distillkit.engine.settings import EngineSettings
from distillkit.engine.sharding import gathered, related_roots, release, shard_model
from distillkit.errors import TrainingError
from distillkit.losses.contract import KDLoss
from distillkit.runtime.distributed import SINGLE, DistEnv
from distillkit.runtime.memory import keep_freed_memory

log = logging.getLogger(__name__)

# a model's output flag -> the output it adds
_FLAG_OUTPUTS = (("output_hidden_states", "hidden_states"), ("output_attentions", "attentions"))

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


@dataclass
class TrainResult:
    """What :meth:`Distiller.fit` did."""

    steps: int
    epochs_completed: float
    train_seconds: float
    last_losses: dict[str, float] = field(default_factory=dict)
    evals: list[dict] = field(default_factory=list)


class Distiller:
    """Trains a student against a frozen teacher with a given loss.

    Args:
        student: the model being trained.
        teacher: the frozen teacher (None when the loss needs no teacher).
        loss: the loss; its contract (:class:`~distillkit.losses.contract.KDLoss`) is all used.
        optimizer_factory: called with the trainable parameters.
        scheduler_factory: called as ``(optimizer, num_training_steps=N)``.
        settings: loop settings.
        writer: TensorBoard writer (None: no TensorBoard logging).
        checkpoints: receives the training state at checkpoint steps (None: no checkpoints).
        step_callback: called with the step number after every optimizer step.
        dist: the ranks of a data-parallel run (default: one process). Every rank builds its
            Distiller alike; loaders then yield each rank's share of the global batches.
        batch_hook: called as ``hook(batch, micro)`` with each training batch and its 0-based
            micro-batch index over the run, just before its step; returns the batch to train
            on (e.g. on-policy responses sampled by the student as it is now).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        loss: KDLoss,
        optimizer_factory: OptimizerFactory,
        scheduler_factory: SchedulerFactory,
        settings: EngineSettings,
        writer: SummaryWriter | None = None,
        checkpoints: CheckpointSink | None = None,
        step_callback: Callable[[int], None] | None = None,
        dist: DistEnv = SINGLE,
        batch_hook: Callable[[dict, int], dict] | None = None,
    ) -> None:
        if not isinstance(loss, KDLoss):
            raise TypeError(f"the loss must be a KDLoss, not {type(loss).__name__}")
        settings.validate()
        self.dist = dist
        self.settings = settings
        self.device = settings.resolve_device()
        self.autocast_dtype = settings.autocast_dtype(self.device)
        self.teacher_dtype = settings.teacher_dtype(self.device)
        self.student = student.to(self.device)
        self.loss = loss.to(self.device)
        self.teacher = None
        if teacher is not None and loss.needs_teacher:
            self.teacher = frozen(teacher, self.device, self.teacher_dtype)
            self.teacher.train(settings.teacher_dropout)  # dropout on: stochastic targets
        # fp16 needs loss scaling; for bf16 and fp32 the scaler is a no-op
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.autocast_dtype == torch.float16)
        if settings.compile:
            for model in (self.student, self.teacher):
                if model is not None:  # in place: state_dict keys and the class stay the same
                    model.compile(dynamic=True, backend=settings.compile_backend)
        self.parallel = ParallelStep(self.student, self.loss, self.device, dist,
                                     sharded=settings.sharding == "fsdp" and dist.enabled)
        if self.parallel.sharded and self.teacher is not None:
            shard_model(self.teacher, frozen=True)
        self.optimizer_factory = optimizer_factory
        self.scheduler_factory = scheduler_factory
        self.writer = writer if dist.is_main else None
        self.checkpoints = checkpoints
        self.step_callback = step_callback
        self.batch_hook = batch_hook

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _teacher_autocast(self):
        """Autocast off for a teacher whose weights were cast (it already runs in its dtype)."""
        if self.teacher_dtype is not None:
            return torch.autocast(self.device.type, enabled=False)
        return self._autocast()

    def total_steps(self, train_loader: DataLoader) -> int:
        """Optimizer steps the run will take."""
        s = self.settings
        if s.max_steps is not None:
            return int(s.max_steps)
        return max(1, math.ceil(len(train_loader) / s.grad_accum_steps)) * int(s.epochs)

    def _flags(self) -> dict[str, bool]:
        """Which optional model outputs the loss reads at this step."""
        features = self.loss.required_features()
        return {"output_hidden_states": "hidden_states" in features,
                "output_attentions": "attentions" in features}

    def _teacher_outputs(self, inputs: dict, batch: dict, flags: dict[str, bool]):
        """The teacher's outputs for this step: from the batch when it carries everything the
        step reads (cached logits and, when asked for, cached features), else the live
        teacher's forward pass."""
        cached = cached_teacher_outputs(batch, self.device)
        wanted = [name for flag, name in _FLAG_OUTPUTS if flags[flag]]
        if cached and all(name in cached for name in wanted):
            return cached
        if self.teacher is None:
            if self.loss.needs_teacher:
                missing = [n for n in wanted if n not in cached] or ["logits"]
                raise TrainingError(f"the loss needs the teacher's {', '.join(missing)} but "
                                    "there is no teacher and the batch does not carry them")
            return None
        # sharded: FSDP's buffers must not become inference tensors (gathered later)
        with (torch.no_grad() if self.parallel.sharded else torch.inference_mode()), \
                self._teacher_autocast():
            out = self.teacher(**inputs, **flags)
        return plain_outputs(out)

    def _log(self, step: int, terms: dict[str, torch.Tensor], total: torch.Tensor,
             lr: float, weight: float, grad_norm: torch.Tensor | None) -> dict[str, float]:
        # non-finite values were caught by the step's NonFiniteWatch before this is called
        values = self.parallel.reduce_terms({**terms, "total": total}, weight)
        if self.writer is not None:
            for name, v in values.items():
                self.writer.add_scalar(f"train/loss/{name}", v, step)
            self.writer.add_scalar("train/lr", lr, step)
            if grad_norm is not None:  # before clipping (ranks hold the same averaged grads)
                self.writer.add_scalar("train/grad_norm", float(grad_norm), step)
        return values

    def evaluate(self, model: nn.Module, loader: DataLoader, desc: str) -> dict[str, float]:
        """Evaluates ``model`` on ``loader`` with the run's precision (a model whose weights
        are not float32, such as a cast teacher, runs in its own dtype)."""
        model.to(self.device)
        floating = next((p for p in model.parameters() if p.is_floating_point()), None)
        dtype = self.autocast_dtype if floating is None or floating.dtype == torch.float32 \
            else None
        with self.full_weights(model):
            return evaluate(model, loader, self.device, dtype, desc=desc,
                            progress=self.settings.progress and self.dist.is_main,
                            dist=self.dist)

    def full_weights(self, *models: nn.Module) -> AbstractContextManager:
        """:func:`~.sharding.gathered` for ``models`` (or the loop's wrappers of them) when
        sharded: forward passes outside the loop (evaluation, generation); else a no-op."""
        roots = [m for m in (self.student, self.teacher) if m is not None]
        return gathered([r for m in models for r in related_roots(m, roots)]
                        if self.parallel.sharded else [])

    def _eval_student(self, loader: DataLoader | None, step: int, result: TrainResult) -> None:
        if loader is None:
            return
        metrics = self._evaluate_fn(self.student, loader, f"eval@{step}")
        result.evals.append({"step": step, **metrics})
        shown = [name for name in (self._metric, "loss") if name in metrics]
        log.info("step %d: student eval %s", step,
                 ", ".join(f"{name} {metrics[name]:.4f}" for name in shown))
        if self.writer is not None:
            for name in shown:
                self.writer.add_scalar(f"eval/student/{name}", metrics[name], step)

    def _latest_checkpoint(self):
        return self.checkpoints.latest() if self.checkpoints is not None else None

    def _save_checkpoint(self, step: int, result: TrainResult, position: dict[str, Any],
                         parts: dict[str, Any], evaluated: bool, seconds: float) -> None:
        parts["watch"].check(self._latest_checkpoint())  # never checkpoint after a NaN
        check_finite_weights([*self.student.parameters(), *self.loss.parameters()], step)
        rng = capture_rng()
        # every rank's RNG states (dropout differs per rank); rank 0 alone writes the file
        rank_rng = self.dist.gather_objects(rng) if self.dist.enabled else None
        states = self.parallel.training_state(parts["optimizer"])  # sharded: every rank
        if not self.dist.is_main:
            return
        state = {
            "step": step, **position,
            **states,
            "scheduler": parts["scheduler"].state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng, "total_steps": parts["total_steps"],
            "result": {"last_losses": dict(result.last_losses), "evals": list(result.evals),
                       "train_seconds": seconds},
        }
        if rank_rng is not None:
            state["rank_rng"] = rank_rng
        metric = result.evals[-1][self._metric] if evaluated and result.evals else None
        self.checkpoints.save(step, state, metric)

    def fit(self, train_loader: DataLoader, eval_loader: Any = None,
            desc: str = "distil", resume: dict[str, Any] | None = None,
            evaluate: Callable[[nn.Module, Any, str], dict[str, Any]] | None = None,
            metric: str = "accuracy") -> TrainResult:
        """Runs the training loop.

        Args:
            train_loader: batches with model inputs and ``labels``.
            eval_loader: evaluated every ``eval_every_steps`` steps (or each epoch): batches
                for :meth:`evaluate`, or whatever ``evaluate`` reads.
            desc: label of the progress bar.
            resume: a training state handed to the checkpoint sink by an earlier run with the
                same settings and data; training continues from it exactly.
            evaluate: the task's evaluation, ``(model, eval_loader, desc) -> metrics`` (default
                :meth:`evaluate`: accuracy and loss of a classifier).
            metric: the metric (higher is better) that picks the best checkpoint.

        Returns:
            Steps taken, time, last logged losses and the evaluation history.

        Raises:
            TrainingError: at the first NaN or infinite loss (see
                :mod:`distillkit.engine.nonfinite`); checkpoints written before it are kept.
        """
        s = self.settings
        if s.keep_freed_memory and self.device.type == "cpu":
            keep_freed_memory()  # large per-step tensors are reused, not re-mapped
        self._evaluate_fn, self._metric = evaluate or self.evaluate, metric
        if len(train_loader) == 0:
            raise TrainingError("the training split is empty; check data.train_split")
        total_steps = self.total_steps(train_loader)
        params = [p for p in self.student.parameters() if p.requires_grad]
        params += [p for p in self.loss.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        scheduler = self.scheduler_factory(optimizer, num_training_steps=total_steps)
        watch = NonFiniteWatch()
        parts = {"optimizer": optimizer, "scheduler": scheduler, "total_steps": total_steps,
                 "watch": watch}
        result = TrainResult(steps=0, epochs_completed=0.0, train_seconds=0.0)
        step, micro, epoch, skip, seconds_before = 0, 0, 0, 0, 0.0
        grad_norm = None  # the step's gradient norm before clipping (logged when clipping)
        if resume is not None:
            check_total_steps(resume, total_steps)
            self.parallel.load_training_state(resume, optimizer)
            scheduler.load_state_dict(resume["scheduler"])
            if resume.get("scaler"):
                self.scaler.load_state_dict(resume["scaler"])
            result.last_losses = dict(resume["result"]["last_losses"])
            result.evals = list(resume["result"]["evals"])
            step, micro, epoch = resume["step"], resume["micro"], resume["epoch"]
            skip, seconds_before = resume["batches_in_epoch"], resume["result"]["train_seconds"]
            log.info("resuming at step %d of %d (epoch %d, batch %d)", step, total_steps,
                     epoch, skip)
            if step >= total_steps:  # killed after its last step: nothing left to train
                restore_rng(rank_rng(resume, self.dist))
        log.info("training %d optimizer steps (batch %d%s x accumulation %d) on %s, student %s%s",
                 total_steps, s.batch_size, f" = {self.dist.world_size} processes x "
                 f"{s.batch_size // self.dist.world_size}" if self.dist.enabled else "",
                 s.grad_accum_steps, self.device,
                 f"{self.autocast_dtype} autocast" if self.autocast_dtype else "fp32",
                 f", teacher {self.teacher_dtype or torch.float32}" if self.teacher else "")
        self.student.train()
        optimizer.zero_grad(set_to_none=True)
        bar = tqdm(total=total_steps, initial=step, desc=desc,
                   disable=not s.progress or not self.dist.is_main,
                   dynamic_ncols=True)
        start = time.perf_counter()
        ckpt = self.checkpoints

        def backward(total: torch.Tensor) -> None:
            self.scaler.scale(total / s.grad_accum_steps).backward()

        def save(evaluated: bool, position: dict[str, Any]) -> None:
            seconds = seconds_before + time.perf_counter() - start
            self._save_checkpoint(step, result, position, parts, evaluated, seconds)

        while step < total_steps:
            if resume is not None:  # same permutation as the interrupted epoch, then skip
                epoch_rng = resume["epoch_rng"]
                restore_epoch_rng(train_loader, epoch_rng)
            else:
                epoch_rng = capture_epoch_rng(train_loader) if ckpt is not None else None
            batches = iter(train_loader)
            in_epoch = 0
            if resume is not None:
                for _ in range(skip):
                    next(batches)
                in_epoch = skip
                restore_rng(rank_rng(resume, self.dist))
                resume = None
            for batch in batches:
                in_epoch += 1
                if self.batch_hook is not None:
                    batch = self.batch_hook(batch, micro)
                inputs = model_inputs(batch, self.device)
                batch_on_device = {**inputs, **loss_inputs(batch, self.device)}
                if micro % s.grad_accum_steps == 0:
                    self.loss.set_progress(step, total_steps)
                flags = self._flags()
                teacher_out = self._teacher_outputs(inputs, batch, flags)
                out, weight = self.parallel.forward_backward(
                    inputs, flags, teacher_out, batch_on_device,
                    sync=(micro + 1) % s.grad_accum_steps == 0, autocast=self._autocast(),
                    backward=backward)
                if self.parallel.sharded and self.teacher is not None:
                    release(self.teacher)  # a teacher's root kept for its head: shard it again
                micro += 1
                watch.note(step + 1, out.total, out.terms)  # every micro-batch of the step
                if micro % s.grad_accum_steps:
                    continue
                if s.max_grad_norm is not None:
                    self.scaler.unscale_(optimizer)
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
                self.scaler.step(optimizer)
                self.scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                if step % s.log_every_steps == 0 or step == total_steps:
                    watch.check(self._latest_checkpoint())
                    result.last_losses = self._log(step, out.terms, out.total.detach(),
                                                   scheduler.get_last_lr()[0], weight,
                                                   grad_norm)
                    bar.set_postfix(loss=f"{result.last_losses['total']:.4f}")
                evaluated = bool(s.eval_every_steps and step % s.eval_every_steps == 0
                                 and eval_loader is not None)
                if evaluated:
                    self._eval_student(eval_loader, step, result)
                if ckpt is not None and ckpt.due(step, evaluated):
                    save(evaluated, {"micro": micro, "epoch": epoch,
                                     "batches_in_epoch": in_epoch, "epoch_rng": epoch_rng})
                if self.step_callback is not None:
                    self.step_callback(step)
                if step >= total_steps:
                    break
            else:
                epoch += 1
                if not s.eval_every_steps and step < total_steps and eval_loader is not None:
                    self._eval_student(eval_loader, step, result)
                    if ckpt is not None:  # the next epoch starts from here
                        save(True, {"micro": micro, "epoch": epoch, "batches_in_epoch": 0,
                                    "epoch_rng": capture_epoch_rng(train_loader)})
                continue
            break
        bar.close()
        watch.check(self._latest_checkpoint())
        result.steps = step
        result.epochs_completed = micro / max(len(train_loader), 1)
        result.train_seconds = seconds_before + time.perf_counter() - start
        log.info("trained %d steps in %.1fs", step, result.train_seconds)
        return result
