"""Intermediate terms applied over the resolved layer mapping, with automatic projections.

:class:`IntermediateTerms` holds the configured terms (``loss.intermediate``), is bound to the
mapping and the model widths once the models are built (:meth:`IntermediateTerms.bind`), and
then computes every term over its pairs. When student and teacher widths differ, a trainable
projection (``loss.projection``, ``nn.Linear`` by default) maps the student's hidden states of
each pair to the teacher width. The projections are parameters of the loss: the optimizer trains
them with the student, checkpoints hold them, the exported student does not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from distillkit.errors import ConfigError
from distillkit.losses.mapping import LayerPair

ProjectionFactory = Callable[[int, int], nn.Module]
_FEATURE_OUTPUT = {"hidden": "hidden_states", "attention": "attentions"}


def _applies(term: nn.Module, pair: LayerPair) -> bool:
    if pair.feature not in (None, term.feature):
        return False
    # attention maps exist for layers 1..L; index 0 (embeddings) has none
    return term.feature != "attention" or (pair.student > 0 and pair.teacher > 0)


class IntermediateTerms(nn.Module):
    """Weighted intermediate terms over layer pairs.

    Args:
        terms: term name → term module (``feature``, ``needs_projection``, ``weight``).
        projection: ``factory(student_width, teacher_width)`` for differing widths.
    """

    def __init__(self, terms: Mapping[str, nn.Module],
                 projection: ProjectionFactory | None = None) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(dict(terms))
        self.projection_factory = projection
        self.projections = nn.ModuleDict()
        self.plan: list[tuple[str, LayerPair, float]] = []
        self._widths = (0, 0)

    def bind(self, pairs: Sequence[LayerPair], student_width: int, teacher_width: int) -> None:
        """Decides which term runs on which pair and builds the projections.

        Raises:
            ConfigError: a pair names an unknown term or one that cannot apply to it, there are
                terms but no pairs, or widths differ with no projection configured.
        """
        plan = []
        for pair in pairs:
            if pair.loss is not None:
                if pair.loss not in self.terms:
                    raise ConfigError(
                        f"mapping pair {pair.label()} names loss '{pair.loss}', which this loss "
                        f"does not have; its intermediate terms: {', '.join(self.terms) or 'none'}")
                if not _applies(self.terms[pair.loss], pair):
                    raise ConfigError(
                        f"mapping pair {pair.label()}: term '{pair.loss}' works on "
                        f"{self.terms[pair.loss].feature} features at layers "
                        f"{'1..L' if self.terms[pair.loss].feature == 'attention' else '0..L'}")
                names = [pair.loss]
            else:
                names = [n for n, t in self.terms.items() if _applies(t, pair)]
            factor = 1.0 if pair.weight is None else float(pair.weight)
            plan += [(n, pair, self.terms[n].weight * factor) for n in names]
        if self.terms and not plan:
            raise ConfigError(
                f"the loss has intermediate terms ({', '.join(self.terms)}) but the layer "
                f"mapping gives them no pairs; choose a mapping, e.g. mapping=uniform")
        self.projections = nn.ModuleDict()
        if student_width != teacher_width:
            for name, pair, _ in plan:
                if self.terms[name].needs_projection and pair.label() not in self.projections:
                    if self.projection_factory is None:
                        raise ConfigError(
                            f"term '{name}' compares hidden states of width {student_width} "
                            f"(student) and {teacher_width} (teacher); set loss.projection, "
                            f"e.g. loss.projection._target_=torch.nn.Linear")
                    self.projections[pair.label()] = self.projection_factory(student_width,
                                                                             teacher_width)
        self.plan = plan
        self._widths = (student_width, teacher_width)

    def describe(self) -> str:
        """One line naming every (term, pair, weight) and the projections, for the run log."""
        if not self.plan:
            return "none"
        sw, tw = self._widths
        terms = ", ".join(f"{n}@{p.label()} x{w:g}" for n, p, w in self.plan)
        proj = ", ".join(f"{k} {sw}->{tw}" for k in self.projections) or "none"
        return f"{terms}; projections: {proj}"

    def features(self) -> set[str]:
        """Model outputs the bound terms read (``hidden_states``, ``attentions``)."""
        return {_FEATURE_OUTPUT[self.terms[name].feature] for name, _, _ in self.plan}

    def teacher_index(self) -> dict[str, frozenset[int]]:
        """Per teacher output (``hidden_states``, ``attentions``), the tuple indices the
        planned terms read (attention maps of layer ``l`` sit at index ``l - 1``)."""
        index: dict[str, set[int]] = {}
        for name, pair, _ in self.plan:
            feature = self.terms[name].feature
            at = pair.teacher - 1 if feature == "attention" else pair.teacher
            index.setdefault(_FEATURE_OUTPUT[feature], set()).add(at)
        return {k: frozenset(v) for k, v in index.items()}

    def _side(self, name: str, pair: LayerPair, student: Mapping, teacher: Mapping):
        term = self.terms[name]
        if term.feature == "attention":
            return (student["attentions"][pair.student - 1],
                    teacher["attentions"][pair.teacher - 1])
        s = student["hidden_states"][pair.student]
        if term.needs_projection and pair.label() in self.projections:
            s = self.projections[pair.label()](s)
        return s, teacher["hidden_states"][pair.teacher]

    def forward(self, student: Mapping, teacher: Mapping, mask: torch.Tensor,
                weights: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted sum of every planned term, and each term's weighted sum for logging.

        ``weights`` (``[batch]``, optional) weigh the examples inside every term (see
        :mod:`distillkit.losses.intermediate`).
        """
        by_term: dict[str, torch.Tensor] = {}
        for name, pair, weight in self.plan:
            s, t = self._side(name, pair, student, teacher)
            value = weight * self.terms[name](s, t, mask, weights)
            by_term[name] = by_term[name] + value if name in by_term else value
        total = sum(by_term.values()) if by_term else mask.new_zeros((), dtype=torch.float32)
        return total, {k: v.detach() for k, v in by_term.items()}
