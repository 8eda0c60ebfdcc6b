"""Layer mappings: uniform / last / explicit resolution, edge cases and errors."""

from __future__ import annotations

import pytest

from distillkit.errors import ConfigError
from distillkit.losses.mapping import (
    LayerPair,
    explicit_mapping,
    last_mapping,
    none_mapping,
    uniform_mapping,
)


def _pairs(pairs):
    return [(p.student, p.teacher) for p in pairs]


@pytest.mark.parametrize(("teacher", "student", "expected"), [
    (12, 4, [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]),
    (6, 4, [(0, 0), (1, 2), (2, 3), (3, 5), (4, 6)]),  # 1.5 -> 2 and 4.5 -> 5: half-up
    (6, 3, [(0, 0), (1, 2), (2, 4), (3, 6)]),
    (4, 4, [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]),
    (2, 4, [(0, 0), (1, 1), (2, 1), (3, 2), (4, 2)]),  # a deeper student reuses teacher layers
])
def test_uniform_includes_embeddings_and_last(teacher, student, expected):
    assert _pairs(uniform_mapping(teacher_layers=teacher, student_layers=student)) == expected


def test_last_k_aligns_from_the_top():
    assert _pairs(last_mapping(k=2, teacher_layers=12, student_layers=4)) == [(3, 11), (4, 12)]
    assert _pairs(last_mapping(teacher_layers=6, student_layers=3)) == [(3, 6)]
    with pytest.raises(ConfigError, match=r"mapping.k=5 must be in \[1, 4\]"):
        last_mapping(k=5, teacher_layers=12, student_layers=4)


def test_none_is_empty():
    assert none_mapping(teacher_layers=6, student_layers=3) == []


def test_explicit_short_and_long_forms():
    pairs = explicit_mapping(
        [[0, 0], {"student": 4, "teacher": 6, "loss": "attention_kl", "weight": 2.0,
                  "feature": "attention"}], teacher_layers=6, student_layers=4)
    assert pairs == [LayerPair(0, 0), LayerPair(4, 6, "attention_kl", 2.0, "attention")]
    assert pairs[1].as_dict() == {"student": 4, "teacher": 6, "loss": "attention_kl",
                                  "weight": 2.0, "feature": "attention"}


@pytest.mark.parametrize(("pairs", "message"), [
    ([[0, 7]], r"pair 0 \(student 0, teacher 7\) is out of range.*teacher indices in \[0, 6\]"),
    ([[0, 0], [5, 1]], r"pair 1 \(student 5, teacher 1\).*student indices must be in \[0, 4\]"),
    ([[-1, 0]], r"out of range"),
    ([[1, 2, 3]], r"pairs\[0\] = \[1, 2, 3\] is malformed"),
    (["1-2"], r"malformed"),
    ([{"student": 1}], r"needs integer keys student and teacher"),
    ([{"student": 1, "teacher": 2, "layer": 3}], r"unknown keys: \['layer'\]"),
    ([[1.5, 2]], r"pairs\[0\].student = 1.5 must be an integer"),
    ([{"student": 0, "teacher": 0, "feature": "attention"}], r"attention maps exist for layers"),
    ([{"student": 1, "teacher": 1, "feature": "logits"}], r"feature 'logits' is not one of"),
    ([{"student": 1, "teacher": 1, "weight": -1}], r"weight must be >= 0"),
    ([], r"non-empty mapping.pairs"),
])
def test_explicit_errors_name_the_pair_and_range(pairs, message):
    with pytest.raises(ConfigError, match=message):
        explicit_mapping(pairs, teacher_layers=6, student_layers=4)
