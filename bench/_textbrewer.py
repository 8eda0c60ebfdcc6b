"""TextBrewer's side of the bench scripts: its ``GeneralDistiller`` trained on the same
teacher, matches, batches, optimizer, LR schedule, clipping and precision as distillkit's run
(``speed.py`` cases e/f, ``textbrewer_compare.py``, ``general_textbrewer.py``).

Run as ``python bench/<script>.py``: ``bench/`` is on ``sys.path``, so this imports
``_common`` as a top-level module.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch
from _common import PeakMemory, Setup, Timing, timed_batches
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import set_seed

from distillkit.losses import HardCrossEntropy


def textbrewer_matches(loss: Any, student_width: int, teacher_width: int) -> list[dict]:
    """TextBrewer ``intermediate_matches`` equivalent to distillkit's resolved term plan.

    ``hidden_mse`` gets a linear projection when the widths differ (as distillkit's does);
    ``mmd`` compares each pair's gram matrix with itself (``layer_T: [t, t]``);
    ``attention_mse`` is TextBrewer's masked ``attention_mse`` on the attention maps (its
    adaptor's ``attention`` list holds layers 1..L at 0..L-1; equal head counts needed).
    """
    matches = []
    for name, pair, weight in loss.intermediate.plan:
        if name == "hidden_mse":
            match = {"layer_T": pair.teacher, "layer_S": pair.student, "feature": "hidden",
                     "loss": "hidden_mse", "weight": weight}
            if student_width != teacher_width:
                match["proj"] = ["linear", student_width, teacher_width]
            matches.append(match)
        elif name == "attention_mse":
            matches.append({"layer_T": pair.teacher - 1, "layer_S": pair.student - 1,
                            "feature": "attention", "loss": "attention_mse", "weight": weight})
        elif name == "mmd":
            matches.append({"layer_T": [pair.teacher] * 2, "layer_S": [pair.student] * 2,
                            "feature": "hidden", "loss": "mmd", "weight": weight})
        else:
            raise SystemExit(f"no TextBrewer equivalent wired here for term {name}")
    return matches


def default_implementation(optimizer_cfg: Any) -> Any:
    """The run's optimizer config with its implementation choice (``fused``, ``foreach``)
    removed: the same optimizer and hyperparameters in the implementation torch picks by
    default, i.e. what ``torch.optim.AdamW(params, lr=..., weight_decay=...)`` in a user's
    script gives (on a CPU, the per-parameter loop)."""
    cfg = OmegaConf.to_container(optimizer_cfg, resolve=True)
    for key in ("fused", "foreach"):
        cfg.pop(key, None)
    return OmegaConf.create(cfg)


def train_textbrewer(setup: Setup, student: torch.nn.Module, batches: Sequence[dict],
                     warmup: int, steps: int, autocast: bool = False) -> Timing:
    """Trains ``student`` with TextBrewer's ``GeneralDistiller`` on ``batches``.

    Same teacher, matches (:func:`textbrewer_matches`), LR schedule, gradient clipping and
    accumulation as the distillkit run of ``setup``; TextBrewer logs its losses to
    TensorBoard every step (its own behaviour with a ``log_dir``). TextBrewer leaves the
    optimizer and the precision to the user's script. As shipped (``autocast=False``) it
    trains in fp32 with an fp32 teacher (it has no bf16 option; its mixed precision is apex
    fp16, GPU only), and the optimizer is the run's (AdamW, same lr and weight decay) in
    torch's default implementation (:func:`default_implementation`). With ``autocast`` it is
    handed everything distillkit's run has that a TextBrewer script could set by hand: the
    run's ``torch.autocast`` (teacher weights still fp32) and the run's optimizer exactly as
    configured (``fused``). Its KD term has no T² factor, so ``kd_loss_weight = alpha * T²``.
    Runs ``warmup + steps + 1`` optimizer steps and times ``steps``.
    """
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    s = setup.settings
    loss, teacher = setup.built["loss"], setup.built["teacher"].model
    device = s.resolve_device()
    dtype = s.autocast_dtype(device) if autocast else None
    teacher = copy.deepcopy(teacher)  # fp32, whatever another case did to the shared one
    hard = HardCrossEntropy()
    total = warmup + steps + 1
    wrapped, tokens = timed_batches(
        [{k: v for k, v in b.items() if k != "teacher_logits"} for b in batches],
        warmup, steps, s.grad_accum_steps, device)

    def adaptor(batch: dict, out: Any) -> dict:
        outputs = {"logits": out.logits, "hidden": list(out.hidden_states),
                   "inputs_mask": batch["attention_mask"],
                   "losses": [hard(out.logits, batch["labels"])]}
        if out.attentions is not None:
            outputs["attention"] = list(out.attentions)
        return outputs

    t = loss.temperature
    matches = textbrewer_matches(loss, int(student.config.hidden_size),
                                 int(teacher.config.hidden_size))
    distill_cfg = DistillationConfig(
        temperature=t, kd_loss_type="ce", kd_loss_weight=loss.alpha * t * t,
        hard_label_weight=1.0 - loss.alpha, intermediate_matches=matches)
    set_seed(s.seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="distillkit-bench-tb-") as out_dir, \
            PeakMemory() as memory:
        student.to(device)
        teacher.to(device).eval().requires_grad_(False)
        train_cfg = TrainingConfig(device=str(device), output_dir=out_dir, log_dir=out_dir,
                                   ckpt_steps=10**9,
                                   gradient_accumulation_steps=s.grad_accum_steps)
        distiller = GeneralDistiller(train_cfg, distill_cfg, teacher, student, adaptor, adaptor)
        optimizer_cfg = setup.cfg.trainer.optimizer
        if not autocast:
            optimizer_cfg = default_implementation(optimizer_cfg)
        optimizer = instantiate(optimizer_cfg)(student.parameters())
        sched = instantiate(setup.cfg.trainer.scheduler)
        autocast = (torch.autocast(device.type, dtype=dtype) if dtype is not None
                    else contextlib.nullcontext())
        with distiller, autocast:
            distiller.train(optimizer, wrapped, num_steps=total,
                            scheduler_class=lambda optimizer, **kw: sched(optimizer, **kw),
                            scheduler_args={"num_training_steps": total},
                            max_grad_norm=s.max_grad_norm or -1.0, output_hidden_states=True,
                            output_attentions=any(m["feature"] == "attention" for m in matches))
        distiller.tb_writer.close()
    return Timing(wrapped.seconds, steps, tokens, memory, time.perf_counter() - start)
