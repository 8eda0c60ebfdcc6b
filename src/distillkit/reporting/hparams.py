"""A run's hyperparameters and final metrics for TensorBoard's HParams tab.

Each run (each sweep job) writes one HParams session into its ``tb/`` directory, so
``tensorboard --logdir <sweep-dir>`` lists every job in the HParams tab with the same columns:
the common knobs (config-group choices, temperature, alpha, learning rate, steps, batch size,
seed) plus every key overridden on the command line, against the final metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from distillkit.reporting.record import headline
from distillkit.reporting.report import IGNORED_OVERRIDES

# Keys every run reports, so jobs of different sweeps line up in the HParams table.
COMMON_KEYS = ("loss.temperature", "loss.alpha", "trainer.optimizer.lr", "trainer.max_steps",
               "trainer.epochs", "trainer.batch_size", "trainer.seed")
GROUPS = ("teacher", "student", "loss", "data", "trainer", "experiment")


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The config keys set by Hydra task overrides (``+k=v``, ``~k`` and ``hydra.*`` aside)."""
    keys = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if "=" in item and not key.startswith("hydra.") and key not in IGNORED_OVERRIDES:
            keys.append(key)
    return keys


def _scalar(value: Any) -> bool | int | float | str:
    if isinstance(value, bool | int | float | str):
        return value
    return "null" if value is None else str(value)


def hparams_of(cfg: DictConfig, overrides: Iterable[str] = (),
               choices: Mapping[str, Any] | None = None) -> dict[str, bool | int | float | str]:
    """The run's hyperparameters as flat ``{key: scalar}``.

    Args:
        cfg: the run config.
        overrides: Hydra task overrides (every overridden key is reported with its value).
        choices: the config-group options picked (``teacher``, ``student``, ``loss``, ...).
    """
    out: dict[str, bool | int | float | str] = {}
    for group in GROUPS:
        if choices and choices.get(group) is not None:
            out[group] = str(choices[group])
    for key in (*COMMON_KEYS, *override_keys(overrides)):
        if key in GROUPS and key in out:
            continue  # a group choice, already reported by name
        if choices and "@" in key and choices.get(key) is not None:
            out[key] = str(choices[key])  # an option at a package (teacher@teacher.members.x)
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, DictConfig | list) or OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        out[key] = _scalar(value)
    return out


def final_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics shown against the hyperparameters (tags under ``hparams/``)."""
    metric = headline(metrics)
    values = {
        f"hparams/student_{metric}": metrics["student"][metric],
        f"hparams/teacher_{metric}": metrics["teacher"][metric],
        "hparams/retention": metrics["retention"],
        "hparams/student_loss": metrics["student"].get("loss"),
        "hparams/objective": metrics["objective"]["value"],
    }
    total = metrics.get("train", {}).get("last_losses", {}).get("total")
    if total is not None:
        values["hparams/train_loss"] = total
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


def log_hparams(writer: SummaryWriter, hparams: dict[str, Any], metrics: Mapping[str, Any],
                step: int) -> None:
    """Writes one HParams session (hyperparameters + final metrics) into ``writer``'s run."""
    values = final_metrics(metrics)
    experiment, start, end = hparams_summary(hparams, values)
    for summary in (experiment, start, end):
        writer.file_writer.add_summary(summary, step)
    for tag, value in values.items():
        writer.add_scalar(tag, value, step)
    writer.flush()
