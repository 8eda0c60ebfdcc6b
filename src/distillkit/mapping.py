"""Layer mappings between student and teacher hidden states.

A mapping option is a partial function resolved when the models are built:
``mapping(teacher_layers=L_T, student_layers=L_S) -> list[tuple[int, int]]`` of
``(student_index, teacher_index)`` hidden-state pairs (index 0 = embeddings, L = last layer).
"""

from __future__ import annotations


def none_mapping(*, teacher_layers: int, student_layers: int) -> list[tuple[int, int]]:
    """No intermediate-layer pairs: prediction-layer distillation only."""
    return []
