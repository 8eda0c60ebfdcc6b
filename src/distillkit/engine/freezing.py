"""Parameters kept fixed while a model trains (``teacher.finetune_settings.freeze``,
``trainer.freeze``).

A frozen parameter gets no gradient and no optimizer state, and autograd runs no backward pass
through a frozen bottom of the network (nothing below it needs a gradient): freezing a model's
word embeddings saves the update of its largest matrix, freezing its lowest layers saves their
backward pass too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn

from distillkit.errors import ConfigError

log = logging.getLogger(__name__)


def freeze_parameters(model: nn.Module, patterns: Sequence[str], where: str) -> int:
    """Turns off ``requires_grad`` for every parameter whose name matches a pattern.

    Args:
        model: the model about to train.
        patterns: shell-style patterns over ``model.named_parameters()`` names, e.g.
            ``bert.embeddings.*`` or ``bert.encoder.layer.[01].*``.
        where: the config key the patterns come from (for messages).

    Returns:
        How many parameter values were frozen.

    Raises:
        ConfigError: a pattern matches no parameter, or every parameter would be frozen.
    """
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(fnmatchcase(name, pattern) for name in names):
            examples = ", ".join(names[:3] + names[-2:])
            raise ConfigError(f"{where}: pattern {pattern!r} matches no parameter of the model "
                              f"(its parameter names look like: {examples})")
    params = dict(model.named_parameters())
    chosen = {n for n in params if any(fnmatchcase(n, pattern) for pattern in patterns)}
    trainable = sum(p.numel() for n, p in params.items() if n not in chosen and p.requires_grad)
    if trainable == 0:
        raise ConfigError(f"{where}: {list(patterns)} freezes every parameter; nothing would train")
    count = 0
    for name in chosen:
        params[name].requires_grad_(False)
        count += params[name].numel()
    log.info("%s: %s parameters frozen, %s trained", where, f"{count:,}", f"{trainable:,}")
    return count
