"""The composite distillation loss and its one weighting schema.

``total = prediction_weight * [alpha * KD(z_s, z_t; T) + (1 - alpha) * CE(z_s, y)]
+ sum over (term, pair) of term.weight * pair.weight * term(student_pair, teacher_pair)``

* ``alpha`` weighs the logit-distillation term against the hard-label cross-entropy, and
  nothing else: ``1 - alpha`` weighs the hard term. ``alpha = 0`` is training without a
  teacher's logits, ``alpha = 1`` is pure logit distillation.
* ``temperature`` (``T``) softens both distributions inside the KD term only; the KD term
  carries its own ``T**2`` factor where its paper asks for one, so changing ``T`` does not
  rescale the balance set by ``alpha``. The hard term always uses ``T = 1``.
* ``prediction_weight`` (default 1) scales the whole prediction-layer part; 0 trains the
  intermediate terms alone.
* Intermediate terms (``loss.intermediate``: hidden-state, attention and gram-matrix terms,
  :mod:`distillkit.losses.intermediate`) run over the resolved layer mapping, each with its own
  ``weight`` times the pair's optional weight; they are not scaled by ``alpha``.
* ``intermediate_phase`` > 0 splits training in two, as TinyBERT does: during that fraction of
  the steps only the intermediate terms train, afterwards only the prediction layer.
* ``intermediate_decay`` (``constant`` | ``linear``) scales every intermediate term by a factor
  that stays 1 (``constant``) or falls linearly from 1 at the first step to 0 at the last
  (``linear``): the intermediate terms guide a randomly initialised student early and hand the
  capacity over to the prediction layer by the end (the terms stop running once it reaches 0).
* ``expertise_weights`` (Meta-KD's domain-expertise weights, Pan et al., 2021, "Meta-KD: A
  Meta Knowledge Distillation Framework for Language Model Compression across Domains")
  weighs every example inside the KD term and every intermediate term by the teacher's
  confidence on the example's gold label, ``w_i = softmax(z_t)_i[y_i]`` (at ``T = 1``; 1 for
  rows without a label): each term becomes a weighted mean over the batch, so the weights
  shift the balance between examples, not the loss scale. The hard term is not weighted.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from distillkit.errors import ConfigError
from distillkit.losses.contract import KDLoss, LossOutput, check_weighting
from distillkit.losses.layers import IntermediateTerms, ProjectionFactory
from distillkit.losses.logits import HardCrossEntropy
from distillkit.losses.mapping import LayerPair

_DECAYS = ("constant", "linear")


class DistillationLoss(KDLoss):
    """Weighted sum of logit distillation, the hard-label loss and intermediate-layer terms.

    Args:
        kd: the distillation term, called as ``kd(student_logits, teacher_logits, temperature)``;
            ``None`` for training without a teacher (then ``alpha`` must be 0).
        hard: the hard-label term, called as ``hard(student_logits, labels)``; defaults to
            cross-entropy.
        temperature: softening temperature ``T`` of the KD term (> 0).
        alpha: weight of the KD term, in ``[0, 1]``; the hard term gets ``1 - alpha``.
        intermediate: intermediate-layer terms by name (bound to the mapping by :meth:`bind`).
        projection: factory ``(student_width, teacher_width) -> nn.Module`` for hidden terms
            when the widths differ.
        prediction_weight: scales the prediction-layer part (KD and hard terms), >= 0.
        intermediate_phase: fraction of the steps, in ``[0, 1)``, that train the intermediate
            terms alone before the prediction-layer phase (0: one phase, every term together).
        intermediate_decay: ``constant`` (the intermediate weights as given) or ``linear``
            (scaled from 1 at the first step down to 0 at the last).
        expertise_weights: weigh the examples of the KD and intermediate terms by the
            teacher's probability of the gold label (Meta-KD's domain-expertise weights).

    Raises:
        ConfigError: for a temperature <= 0, an alpha outside [0, 1], ``alpha > 0`` without
            a KD term, a negative prediction weight, a phase fraction outside [0, 1) or an
            unknown decay.
    """

    def __init__(
        self,
        kd: nn.Module | None = None,
        hard: nn.Module | None = None,
        temperature: float = 1.0,
        alpha: float = 0.5,
        intermediate: Mapping[str, nn.Module] | None = None,
        projection: ProjectionFactory | None = None,
        prediction_weight: float = 1.0,
        intermediate_phase: float = 0.0,
        intermediate_decay: str = "constant",
        expertise_weights: bool = False,
    ) -> None:
        super().__init__()
        check_weighting(temperature, alpha, example_temperature=4)
        if kd is None and alpha > 0:
            raise ConfigError(
                f"loss.alpha={alpha} weighs a distillation term, but this loss has none "
                "(loss.kd is null); use loss=kd, or set loss.alpha=0 to train on labels only"
            )
        if not prediction_weight >= 0:
            raise ConfigError(f"loss.prediction_weight must be >= 0, got {prediction_weight}")
        if not 0.0 <= intermediate_phase < 1.0:
            raise ConfigError(f"loss.intermediate_phase must be in [0, 1), got "
                              f"{intermediate_phase}; 0 trains every term together")
        if intermediate_decay not in _DECAYS:
            raise ConfigError(f"loss.intermediate_decay must be one of {', '.join(_DECAYS)}, got "
                              f"'{intermediate_decay}'")
        self.kd = kd
        self.hard = hard if hard is not None else HardCrossEntropy()
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.prediction_weight = float(prediction_weight)
        self.intermediate = IntermediateTerms(intermediate or {}, projection)
        self.intermediate_phase = float(intermediate_phase)
        self.intermediate_decay = intermediate_decay
        if expertise_weights and kd is None and not intermediate:
            raise ConfigError("loss.expertise_weights=true weighs distillation terms, but this "
                              "loss has none; use loss=kd (or another distilling loss)")
        self.expertise_weights = bool(expertise_weights)
        self._phase = "all"
        self._scale = 1.0

    def bind(self, pairs: list[LayerPair], student_width: int, teacher_width: int) -> None:
        """Binds the intermediate terms to the resolved mapping and builds projections (any
        mapping is accepted; without intermediate terms its pairs go unused)."""
        self.intermediate.bind(pairs, student_width, teacher_width)
        for key, value, off in (("intermediate_phase", self.intermediate_phase, 0.0),
                                ("intermediate_decay", self.intermediate_decay, "constant")):
            if value != off and not self.intermediate.plan:
                raise ConfigError(f"loss.{key}={value} needs intermediate terms and a layer "
                                  f"mapping; set loss.{key}={off}")

    @property
    def takes_mapping(self) -> bool:
        """Whether the loss has intermediate terms to run over the layer mapping."""
        return bool(self.intermediate.terms)

    def describe_layers(self) -> str:
        """The bound intermediate terms and projections in one line (``none`` without)."""
        return self.intermediate.describe()

    def layer_plan(self) -> list[tuple[str, LayerPair, float]]:
        """Every bound ``(term name, pair, weight)`` of the intermediate terms."""
        return list(self.intermediate.plan)

    def layer_terms(self) -> list[str]:
        """The names of the configured intermediate terms."""
        return list(self.intermediate.terms)

    def set_progress(self, step: int, total_steps: int) -> None:
        """Called by the engine before each optimizer step (0-based): switches phases and sets
        the intermediate decay factor."""
        if self.intermediate_phase and self.intermediate.plan:
            first = step < self.intermediate_phase * total_steps
            self._phase = "intermediate" if first else "prediction"
        if self.intermediate_decay == "linear":
            self._scale = max(0.0, 1.0 - step / max(1, total_steps))

    def _uses_prediction(self) -> bool:
        return self.prediction_weight > 0 and self._phase != "intermediate"

    def _uses_intermediate(self) -> bool:
        return bool(self.intermediate.plan) and self._phase != "prediction" and self._scale > 0

    @property
    def needs_teacher(self) -> bool:
        """Whether the forward pass needs teacher outputs at all."""
        return (self.kd is not None and self.alpha > 0) or bool(self.intermediate.plan)

    def teacher_depth(self) -> int | None:
        """The deepest teacher layer any term reads, when no term ever reads the teacher's
        logits (then the teacher's higher layers need not run); None otherwise."""
        logits = self.kd is not None and self.alpha > 0 and self.prediction_weight > 0
        if logits or self.expertise_weights or not self.intermediate.plan:
            return None
        return max(pair.teacher for _, pair, _ in self.intermediate.plan)

    def teacher_features(self) -> dict[str, frozenset[int]]:
        """The teacher layers the intermediate terms read (none without them)."""
        return self.intermediate.teacher_index()

    def required_features(self) -> set[str]:
        """Model outputs this loss reads now (the engine computes nothing else)."""
        features = {"logits"}
        if self._uses_intermediate():
            features |= self.intermediate.features()
        return features

    def forward(
        self,
        student: Mapping[str, torch.Tensor],
        teacher: Mapping[str, torch.Tensor] | None,
        batch: Mapping[str, torch.Tensor],
    ) -> LossOutput:
        """Computes the weighted loss.

        Args:
            student: student outputs (at least ``logits``).
            teacher: teacher outputs, or None when :attr:`needs_teacher` is false.
            batch: the input batch; ``labels`` holds the gold labels.

        Returns:
            The total and the unweighted terms ``kd`` and ``hard``.
        """
        logits = student["logits"]
        terms: dict[str, torch.Tensor] = {}
        total = logits.new_zeros((), dtype=torch.float32)
        if self.needs_teacher and teacher is None:
            raise ValueError("DistillationLoss needs teacher outputs but got None")
        weights = (expertise(teacher["logits"].to(logits.device), batch["labels"])
                   if self.expertise_weights else None)
        if weights is not None:
            terms["expertise_weight"] = weights.mean().detach()
        if self._uses_prediction():
            weight = self.prediction_weight
            if self.alpha < 1.0:
                hard = self.hard(logits, batch["labels"])
                terms["hard"] = hard.detach()
                total = total + weight * (1.0 - self.alpha) * hard
            if self.kd is not None and self.alpha > 0:
                kd = self.kd(logits, teacher["logits"].to(logits.device), self.temperature,
                             weights)
                terms["kd"] = kd.detach()
                total = total + weight * self.alpha * kd
        if self._uses_intermediate():
            value, by_term = self.intermediate(student, teacher, batch["attention_mask"],
                                               weights)
            terms.update(by_term)
            total = total + self._scale * value
        return LossOutput(total=total, terms=terms)


def expertise(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Meta-KD's domain-expertise weight of every example: the teacher's probability of its
    gold label (``T = 1``), detached; 1 for rows without a label (``-100``).

    Args:
        teacher_logits: ``[batch, num_classes]``.
        labels: ``[batch]`` gold label ids (``-100``: hidden).
    """
    probs = torch.softmax(teacher_logits.detach().float(), dim=-1)
    labelled = labels >= 0
    gold = probs.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return torch.where(labelled, gold, torch.ones_like(gold))
