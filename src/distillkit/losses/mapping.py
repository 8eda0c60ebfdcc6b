"""Layer mappings between student and teacher layers, resolved against the real layer counts.

A mapping option (``conf/mapping/*.yaml``) is a partial function called once the models are
built: ``mapping(teacher_layers=L_T, student_layers=L_S) -> list[LayerPair]``. Indices follow
the models' ``hidden_states`` outputs: 0 is the embedding output, ``L`` the last layer. A pair
used by an attention term means the attention maps of those layers (1..L; pairs at index 0 are
skipped by attention terms).

* ``none``: no pairs (prediction-layer distillation only).
* ``uniform``: student ``s`` ↔ teacher ``round(s * L_T / L_S)`` for ``s = 0..L_S`` (embeddings and
  last layer included; 12→4 gives 0-0, 1-3, 2-6, 3-9, 4-12 as student-teacher pairs).
* ``last``: the last ``k`` layers of each model, aligned from the top.
* ``explicit``: a list of pairs, each optionally with its own loss term, weight and feature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from distillkit.errors import ConfigError

FEATURES = ("hidden", "attention")


@dataclass(frozen=True)
class LayerPair:
    """One student-teacher layer pair.

    Attributes:
        student: student hidden-state index (0 = embeddings, L_S = last layer).
        teacher: teacher hidden-state index (0 = embeddings, L_T = last layer).
        loss: name of the one intermediate loss term for this pair (None: every term of the
            loss whose feature matches).
        weight: multiplies the term(s) on this pair (None: 1).
        feature: ``hidden`` or ``attention`` to restrict the pair to terms on that feature
            (None: all features).
    """

    student: int
    teacher: int
    loss: str | None = None
    weight: float | None = None
    feature: str | None = None

    def label(self) -> str:
        """Short name for logs and TensorBoard: ``s<student>-t<teacher>``."""
        return f"s{self.student}-t{self.teacher}"

    def as_dict(self) -> dict[str, Any]:
        """The pair without unset fields (for ``mapping.json``)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def _check_counts(teacher_layers: int, student_layers: int) -> None:
    if teacher_layers < 1 or student_layers < 1:
        raise ConfigError(f"layer mapping needs models with layers, got teacher {teacher_layers}"
                          f" and student {student_layers}")


def validate_pairs(pairs: Sequence[LayerPair], *, teacher_layers: int,
                   student_layers: int) -> list[LayerPair]:
    """Checks every pair against the layer counts; returns the pairs.

    Raises:
        ConfigError: naming the first out-of-range or malformed pair and the valid ranges.
    """
    for i, pair in enumerate(pairs):
        where = f"mapping pair {i} (student {pair.student}, teacher {pair.teacher})"
        if not (0 <= pair.student <= student_layers and 0 <= pair.teacher <= teacher_layers):
            raise ConfigError(
                f"{where} is out of range: student indices must be in [0, {student_layers}] "
                f"and teacher indices in [0, {teacher_layers}] (0 = embeddings, L = last layer); "
                "fix mapping.pairs, or use mapping=uniform"
            )
        if pair.feature is not None and pair.feature not in FEATURES:
            raise ConfigError(f"{where}: feature '{pair.feature}' is not one of "
                              f"{', '.join(FEATURES)}")
        if pair.feature == "attention" and (pair.student == 0 or pair.teacher == 0):
            raise ConfigError(f"{where}: attention maps exist for layers 1..L only; index 0 is "
                              f"the embedding output")
        if pair.weight is not None and not pair.weight >= 0:
            raise ConfigError(f"{where}: weight must be >= 0, got {pair.weight}")
    return list(pairs)


def none_mapping(*, teacher_layers: int, student_layers: int) -> list[LayerPair]:
    """No intermediate-layer pairs: prediction-layer distillation only."""
    return []


def uniform_mapping(*, teacher_layers: int, student_layers: int) -> list[LayerPair]:
    """Student layer ``s`` ↔ teacher layer ``round(s * L_T / L_S)``, embeddings and last included."""
    _check_counts(teacher_layers, student_layers)
    # half-up rounding (Python's round() would send 4.5 to 4)
    pairs = [LayerPair(s, math.floor(s * teacher_layers / student_layers + 0.5))
             for s in range(student_layers + 1)]
    return validate_pairs(pairs, teacher_layers=teacher_layers, student_layers=student_layers)


def last_mapping(k: int = 1, *, teacher_layers: int, student_layers: int) -> list[LayerPair]:
    """The last ``k`` layers of student and teacher, aligned from the top."""
    _check_counts(teacher_layers, student_layers)
    if not 1 <= k <= min(teacher_layers, student_layers):
        raise ConfigError(f"mapping.k={k} must be in [1, {min(teacher_layers, student_layers)}] "
                          f"(the smaller model's layer count)")
    pairs = [LayerPair(student_layers - i, teacher_layers - i) for i in reversed(range(k))]
    return validate_pairs(pairs, teacher_layers=teacher_layers, student_layers=student_layers)


def _parse_pair(i: int, item: Any) -> LayerPair:
    if isinstance(item, Mapping):
        unknown = sorted(set(item) - {"student", "teacher", "loss", "weight", "feature"})
        if unknown or "student" not in item or "teacher" not in item:
            raise ConfigError(
                f"mapping.pairs[{i}] = {dict(item)} is malformed: it needs integer keys student "
                f"and teacher, optionally loss, weight and feature"
                + (f" (unknown keys: {unknown})" if unknown else "")
            )
        values = dict(item)
    elif isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2:
        values = {"student": item[0], "teacher": item[1]}
    else:
        raise ConfigError(f"mapping.pairs[{i}] = {item!r} is malformed: write [student, teacher] "
                          f"or {{student: S, teacher: T, loss: ..., weight: ..., feature: ...}}")
    for key in ("student", "teacher"):
        if isinstance(values[key], bool) or not isinstance(values[key], int):
            raise ConfigError(f"mapping.pairs[{i}].{key} = {values[key]!r} must be an integer")
    return LayerPair(**values)


def explicit_mapping(pairs: Sequence[Any], *, teacher_layers: int,
                     student_layers: int) -> list[LayerPair]:
    """The pairs as listed (``[student, teacher]`` or a mapping with optional loss/weight/feature)."""
    _check_counts(teacher_layers, student_layers)
    if not pairs:
        raise ConfigError("mapping=explicit needs a non-empty mapping.pairs list, e.g. "
                          "mapping.pairs='[[0,0],[2,6]]'")
    parsed = [_parse_pair(i, item) for i, item in enumerate(pairs)]
    return validate_pairs(parsed, teacher_layers=teacher_layers, student_layers=student_layers)
