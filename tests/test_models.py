"""Model builders and teacher/student compatibility checks."""

from __future__ import annotations

import pytest

from distillkit.errors import ConfigError, ModelError
from distillkit.models import ModelBundle, bert_student, check_compatible, tiny_teacher
from distillkit.models.tokenizers import tiny_tokenizer

LABELS = ["a", "b", "c"]


def test_bert4l_shape_uses_teacher_vocab():
    teacher = tiny_teacher(labels=LABELS)
    student = bert_student(4, 312, 12, 1200, teacher=teacher, labels=LABELS)
    cfg = student.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
            cfg.intermediate_size) == (4, 312, 12, 1200)
    assert cfg.vocab_size == teacher.model.config.vocab_size
    assert student.tokenizer is teacher.tokenizer
    assert cfg.id2label == {0: "a", 1: "b", 2: "c"}
    check_compatible(teacher, student)


def test_vocab_mismatch_detected():
    teacher = tiny_teacher(labels=LABELS)
    other_tok = tiny_tokenizer(("zebra", "quokka"))
    other = tiny_teacher(words=["zebra", "quokka"], labels=LABELS)
    assert other.tokenizer is other_tok
    with pytest.raises(ModelError, match="vocabulary mismatch.*tokenizer"):
        check_compatible(teacher, ModelBundle(other.model, other.tokenizer, "other"))


def test_label_count_mismatch_detected():
    teacher = tiny_teacher(labels=LABELS)
    student = bert_student(2, 32, 2, 64, teacher=teacher, labels=["x", "y"])
    with pytest.raises(ModelError, match="label-count mismatch"):
        check_compatible(teacher, student)


def test_heads_must_divide_hidden():
    with pytest.raises(ConfigError, match="not divisible"):
        tiny_teacher(hidden_size=30, num_heads=4, labels=LABELS)
