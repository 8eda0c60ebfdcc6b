"""Several teachers as one (``teacher=ensemble``; TextBrewer's MultiTeacherDistiller).

The members are ordinary teacher bundles (any architecture) that read the same token ids and
predict the same labels, in the same order. Their logits are combined into one teacher's:
with the weights ``w_i`` normalised to sum to 1 (equal when none are given),

* ``mean_logits`` (default): ``z = sum_i w_i * z_i``, the weighted mean of the members' raw
  logits (TextBrewer's average of the teachers' logits);
* ``mean_probs``: ``z = log(sum_i w_i * softmax(z_i))``, the log of the weighted mean of the
  members' probabilities: a logit vector whose softmax is the mixture of the members'
  predictions.

Everything downstream treats ``z`` as the teacher's logits: the KD term softens it with its own
temperature (``softmax(z / T)``), the teacher's accuracy is ``argmax z``. Intermediate-layer
terms read one member, ``intermediate_teacher``: the ensemble reports its hidden states and
attention maps, its layer count and width (the layer mapping resolves against them), and a
student built from the teacher is built from it (its tokenizer and vocabulary; ``copy3`` copies
its layers). A member of weight 0 is never run for logits; it can serve the features alone.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from distillkit.errors import ConfigError, ModelError
from distillkit.models.bundle import ModelBundle
from distillkit.models.compat import vocab_difference

COMBINES = ("mean_logits", "mean_probs")


def normalised_weights(names: Sequence[str], weights: Any) -> dict[str, float]:
    """Each member's weight, summing to 1.

    Args:
        names: the member names, in order.
        weights: None (equal weights), a list in member order, or a ``{name: weight}`` dict
            (members left out weigh 0).

    Raises:
        ConfigError: for a wrong count, an unknown name, a negative or non-finite weight, or
            weights that sum to 0.
    """
    if weights is None:
        raw = dict.fromkeys(names, 1.0)
    elif isinstance(weights, Mapping):
        unknown = sorted(set(map(str, weights)) - set(names))
        if unknown:
            raise ConfigError(f"teacher.weights names {unknown}, which are not members; the "
                              f"members are {', '.join(names)}")
        raw = {name: float(weights.get(name, 0.0)) for name in names}
    else:
        values = [float(w) for w in weights]
        if len(values) != len(names):
            raise ConfigError(f"teacher.weights has {len(values)} values for {len(names)} "
                              f"members ({', '.join(names)}); give one per member, in order")
        raw = dict(zip(names, values, strict=True))
    if any(not (math.isfinite(w) and w >= 0) for w in raw.values()) or not sum(raw.values()) > 0:
        raise ConfigError(f"teacher.weights={raw} must be finite, >= 0 and not all 0")
    total = sum(raw.values())
    return {name: w / total for name, w in raw.items()}


def combine_logits(logits: Sequence[torch.Tensor], weights: Sequence[float],
                   combine: str = "mean_logits") -> torch.Tensor:
    """The ensemble's logits from its members' (see the module docstring), in float32.

    Args:
        logits: one ``[..., labels]`` tensor per member.
        weights: one weight per member, summing to 1.
        combine: ``mean_logits`` or ``mean_probs``.
    """
    if combine not in COMBINES:
        raise ConfigError(f"teacher.combine='{combine}' is not one of {', '.join(COMBINES)}")
    stacked = torch.stack([z.float() for z in logits])
    w = torch.tensor(list(weights), dtype=torch.float32, device=stacked.device)
    w = w.view(-1, *([1] * (stacked.dim() - 1)))
    if combine == "mean_logits":
        return (w * stacked).sum(0)
    return torch.logsumexp(torch.log(w) + torch.log_softmax(stacked, dim=-1), dim=0)


class TeacherEnsemble(nn.Module):
    """The members' models as one frozen teacher: ``forward`` returns the combined logits and
    the hidden states / attention maps of the intermediate member.

    Args:
        members: each member's model, by name.
        weights: each member's weight (summing to 1).
        combine: ``mean_logits`` or ``mean_probs``.
        intermediate: the member whose features (and ``config``) the ensemble reports.
    """

    def __init__(self, members: Mapping[str, nn.Module], weights: Mapping[str, float],
                 combine: str, intermediate: str) -> None:
        super().__init__()
        self.members = nn.ModuleDict(dict(members))
        self.weights = dict(weights)
        self.combine = combine
        self.intermediate = intermediate
        # each member gets only the inputs its forward takes (DistilBERT: no token_type_ids)
        self._accepts = {name: _parameters(model) for name, model in members.items()}

    @property
    def config(self):
        """The intermediate member's config (layer count, width, vocabulary, labels)."""
        return self.members[self.intermediate].config

    def forward(self, output_hidden_states: bool = False, output_attentions: bool = False,
                **inputs: torch.Tensor) -> SequenceClassifierOutput:
        """Runs every member of weight > 0 (and the intermediate one) on ``inputs``."""
        logits, weights, features = [], [], None
        for name, model in self.members.items():
            chosen = name == self.intermediate
            if self.weights[name] == 0 and not (chosen and (output_hidden_states
                                                            or output_attentions)):
                continue
            accepts = self._accepts[name]
            args = {k: v for k, v in inputs.items() if accepts is None or k in accepts}
            flags = ({"output_hidden_states": output_hidden_states,
                      "output_attentions": output_attentions} if chosen else {})
            out = model(**args, **flags)
            if chosen:
                features = out
            if self.weights[name] > 0:
                logits.append(out.logits)
                weights.append(self.weights[name])
        return SequenceClassifierOutput(
            logits=combine_logits(logits, weights, self.combine),
            hidden_states=features.hidden_states if output_hidden_states else None,
            attentions=features.attentions if output_attentions else None)


def _parameters(model: nn.Module) -> frozenset[str] | None:
    """The keyword inputs ``model.forward`` takes (None: any, it has ``**kwargs``)."""
    params = inspect.signature(model.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


@dataclass
class EnsembleTeacher(ModelBundle):
    """A teacher bundle whose ``model`` is a :class:`TeacherEnsemble`.

    Attributes:
        members: the members' bundles, by name (``name`` of the bundle: its model).
        weights: each member's weight, summing to 1.
        combine: ``mean_logits`` or ``mean_probs``.
        intermediate: the name of the member the intermediate terms read.
    """

    members: dict[str, ModelBundle] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    combine: str = "mean_logits"
    intermediate: str = ""

    @property
    def basis(self) -> ModelBundle:
        """The intermediate member: the bundle a student built from the teacher starts from."""
        return self.members[self.intermediate]

    def describe(self) -> dict[str, Any]:
        """The ensemble's settings, for logs and ``metrics.json``."""
        return {"combine": self.combine, "intermediate_teacher": self.intermediate,
                "weights": dict(self.weights),
                "members": {name: b.name for name, b in self.members.items()}}


def _check_member(name: str, member: ModelBundle, basis: ModelBundle, basis_name: str,
                  labels: list[str]) -> None:
    if member.model is None:
        raise ConfigError(f"teacher.members.{name} ({member.name}) has no model; an ensemble "
                          "member must be a model teacher (teacher=offline cannot be one)")
    config = member.model.config
    names = [str(config.id2label.get(i, "")) for i in range(config.num_labels)]
    if config.num_labels != len(labels) or names != list(labels):
        raise ConfigError(
            f"label mismatch: teacher.members.{name} ({member.name}) predicts "
            f"{config.num_labels} labels {names}, the data (and the student) {len(labels)} "
            f"{list(labels)}; every member must predict the data's labels in the data's order "
            "(use a checkpoint trained on this task, a plain encoder, or fix data.labels)")
    differing = vocab_difference(basis.tokenizer, member.tokenizer)
    if differing:
        raise ModelError(
            f"vocabulary mismatch: teacher.members.{name} ({member.name}) and "
            f"teacher.members.{basis_name} ({basis.name}) map tokens to different ids (e.g. "
            f"{differing}); the members of an ensemble read one tokenisation of the data: "
            "use members that share a tokenizer (vocabulary)")


def teacher_ensemble(members: Mapping[str, ModelBundle], weights: Any = None,
                     combine: str = "mean_logits", intermediate_teacher: str | None = None,
                     *, labels: list[str]) -> EnsembleTeacher:
    """Combines built teacher bundles into one teacher (see the module docstring).

    Args:
        members: the members' bundles, by name, in order.
        weights: None (equal), a list in member order or a ``{name: weight}`` dict.
        combine: ``mean_logits`` or ``mean_probs``.
        intermediate_teacher: the member whose hidden states and attention maps the
            intermediate terms read (None: the first member).
        labels: the data's label names, in id order.

    Raises:
        ConfigError: for no members, an unknown member name or combine rule, bad weights, a
            member without a model or whose labels differ from the data's.
        ModelError: for a member whose vocabulary differs from the intermediate member's.
    """
    names = [str(n) for n in members]
    if not names:
        raise ConfigError("teacher.members is empty; an ensemble needs at least one member")
    if combine not in COMBINES:
        raise ConfigError(f"teacher.combine='{combine}' is not one of {', '.join(COMBINES)}")
    chosen = names[0] if intermediate_teacher is None else str(intermediate_teacher)
    if chosen not in names:
        raise ConfigError(f"teacher.intermediate_teacher='{chosen}' is not a member; the "
                          f"members are {', '.join(names)}")
    bundles = {str(n): b for n, b in members.items()}
    for name, member in bundles.items():
        _check_member(name, member, bundles[chosen], chosen, labels)
    norm = normalised_weights(names, weights)
    model = TeacherEnsemble({n: b.model for n, b in bundles.items()}, norm, combine, chosen)
    label = ", ".join(f"{n}={b.name} ({norm[n]:.3g})" for n, b in bundles.items())
    return EnsembleTeacher(
        model=model, tokenizer=bundles[chosen].tokenizer, name=f"ensemble[{combine}: {label}]",
        trained_head=all(b.trained_head for b in bundles.values()),
        origin=", ".join(f"{n}: {b.origin}" for n, b in bundles.items()),
        members=bundles, weights=norm, combine=combine, intermediate=chosen)
