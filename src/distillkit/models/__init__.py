"""Teacher and student builders. Each returns a :class:`ModelBundle` (model + tokenizer)."""

from distillkit.models.builders import bert_student, tiny_teacher
from distillkit.models.bundle import ModelBundle, count_parameters, update_weights_digest
from distillkit.models.compat import check_compatible
from distillkit.models.copied import first_layers, student_from_teacher
from distillkit.models.ensemble import (
    EnsembleTeacher,
    TeacherEnsemble,
    combine_logits,
    teacher_ensemble,
)
from distillkit.models.hf import packaged_classifier, pretrained_classifier, pretrained_student

__all__ = [
    "EnsembleTeacher",
    "ModelBundle",
    "TeacherEnsemble",
    "bert_student",
    "check_compatible",
    "combine_logits",
    "count_parameters",
    "first_layers",
    "packaged_classifier",
    "pretrained_classifier",
    "pretrained_student",
    "student_from_teacher",
    "teacher_ensemble",
    "tiny_teacher",
    "update_weights_digest",
]
