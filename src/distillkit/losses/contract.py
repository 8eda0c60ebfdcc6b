"""The loss contract: what the run code and the engine may ask of every distillation loss.

Every loss distillkit trains with is a :class:`KDLoss`. The engine
(:class:`~distillkit.engine.Distiller`), the teacher setup
(:func:`~distillkit.teachers.setup.live_teacher`, :func:`~distillkit.teachers.offline.check_offline`)
and the run code call only the members below, never probe a loss for optional attributes; a
loss that needs something else overrides the member that says so. See ``docs/losses.md``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from distillkit.errors import ConfigError
from distillkit.losses.mapping import LayerPair

#: The model outputs a loss may read (keys of the output mapping the engine hands it).
FEATURES = frozenset({"logits", "hidden_states", "attentions"})


@dataclass
class LossOutput:
    """Result of a loss call.

    Attributes:
        total: the scalar to back-propagate.
        terms: every term's unweighted value (detached), keyed by name, for logging.
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def check_weighting(temperature: float, alpha: float, example_temperature: float) -> None:
    """Checks the one weighting schema every loss shares (``loss.temperature`` > 0,
    ``loss.alpha`` in [0, 1]).

    Raises:
        ConfigError: naming the key and a value to try (``example_temperature`` for T).
    """
    if not temperature > 0:
        raise ConfigError(f"loss.temperature must be > 0, got {temperature}; try "
                          f"loss.temperature={example_temperature:g}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"loss.alpha must be in [0, 1], got {alpha}; try loss.alpha=0.5")


class KDLoss(nn.Module, metaclass=abc.ABCMeta):
    """Abstract base of every distillation loss: the contract the run code and the engine use.

    A subclass implements :meth:`forward` and overrides only the members whose default does
    not describe it:

    * :attr:`needs_teacher` (default True): whether :meth:`forward` reads teacher outputs. When
      false, the engine runs no teacher and passes ``teacher=None``; the run builds no teacher
      cache and ignores a transfer split.
    * :meth:`required_features` (default ``{"logits"}``): the model outputs :meth:`forward`
      reads at the current step, out of ``logits``, ``hidden_states`` and ``attentions``
      (:data:`FEATURES`); the engine asks both models for hidden states or attention maps only
      when they are named, and a teacher-logits cache serves only losses reading logits alone.
    * :meth:`teacher_features` (default: none): which teacher layers the loss reads over the
      whole run, ``{"hidden_states": indices, "attentions": indices}`` (indices into the
      model's output tuples); the run caches exactly these (:mod:`distillkit.teachers.features`)
      and then hands the loss a ``teacher`` mapping whose tuples hold only those entries
      (``None`` elsewhere).
    * :meth:`teacher_depth` (default None): the deepest teacher layer read when the loss never
      reads the teacher's logits, so the layers above need not run; None runs the whole
      teacher.
    * :attr:`takes_mapping` (default False) and :meth:`bind`: whether the loss reads
      intermediate layers through a layer mapping, and the call that hands it the resolved
      pairs and the hidden widths once the models are built. The run code calls :meth:`bind`
      for every loss; the default refuses a non-empty mapping with a one-line
      :class:`~distillkit.errors.ConfigError`. Losses with intermediate terms override both.
    * :meth:`set_progress` (default: nothing): the engine calls it before every optimizer step
      with the 0-based step and the run's total step count (phases, decaying weights).
    * :meth:`describe_layers` (default None), :meth:`layer_plan` (default ``[]``) and
      :meth:`layer_terms` (default ``[]``): the intermediate terms for the run log, for
      ``mapping.json``'s ``plan`` and for the checks of a teacher without layers
      (``teacher=offline``).
    * :attr:`sequence_kd` (default None): sequence-level KD settings, set by seq2seq losses
      that train on the teacher's decoded outputs (the run then adds a seq-KD stage).

    :meth:`forward` is called as ``loss(student_out, teacher_out, batch)``: the student's and
    teacher's outputs (mappings holding at least ``logits``, plus the requested features;
    ``teacher_out`` is None when :attr:`needs_teacher` is false) and the batch (``labels``,
    ``attention_mask`` and any ``loss_*`` columns). It returns a :class:`LossOutput`. A loss
    may hold trainable parameters (projections): the optimizer trains them with the student and
    checkpoints keep them.
    """

    #: Sequence-level KD settings (``num_beams``, ``n_best``, ...), or None for no seq-KD stage.
    sequence_kd: Mapping[str, Any] | None = None

    @property
    def needs_teacher(self) -> bool:
        """Whether :meth:`forward` reads teacher outputs (default True)."""
        return True

    def required_features(self) -> set[str]:
        """The model outputs :meth:`forward` reads at the current step (default: logits)."""
        return {"logits"}

    def teacher_features(self) -> dict[str, frozenset[int]]:
        """The teacher's hidden-state and attention indices the loss reads at any step of the
        run (default: none)."""
        return {}

    def teacher_depth(self) -> int | None:
        """The deepest teacher layer read when no teacher logits are read; None (the default):
        the whole teacher runs."""
        return None

    @property
    def takes_mapping(self) -> bool:
        """Whether :meth:`bind` uses layer pairs (default False)."""
        return False

    def bind(self, pairs: Sequence[LayerPair], student_width: int, teacher_width: int) -> None:
        """Receives the resolved layer mapping and the models' hidden widths.

        Args:
            pairs: the layer pairs of the mapping (empty for ``mapping=none``).
            student_width: the student's hidden size.
            teacher_width: the teacher's hidden size.

        Raises:
            ConfigError: by default, for any pair: this loss takes no layer mapping.
        """
        del student_width, teacher_width
        if pairs:
            raise ConfigError(f"loss {type(self).__name__} takes no layer mapping; "
                              "use mapping=none")

    def set_progress(self, step: int, total_steps: int) -> None:
        """Hears the 0-based optimizer step before its update (default: ignored)."""
        del step, total_steps

    def describe_layers(self) -> str | None:
        """One line describing the intermediate terms for the run log (default None: none)."""
        return None

    def layer_plan(self) -> list[tuple[str, LayerPair, float]]:
        """Every bound ``(term name, pair, weight)`` (default: none)."""
        return []

    def layer_terms(self) -> list[str]:
        """The names of the configured intermediate terms (default: none)."""
        return []

    @abc.abstractmethod
    def forward(self, student: Mapping[str, Any], teacher: Mapping[str, Any] | None,
                batch: Mapping[str, torch.Tensor]) -> LossOutput:
        """Computes the loss of one batch.

        Args:
            student: the student's outputs (``logits`` and the requested features).
            teacher: the teacher's outputs, or None when :attr:`needs_teacher` is false.
            batch: the batch (``labels``, ``attention_mask``, ``loss_*`` columns).

        Returns:
            The total to back-propagate and the unweighted terms to log.
        """
