"""Teacher and student builders. Each returns a :class:`ModelBundle` (model + tokenizer)."""

from distillkit.models.builders import bert_student, tiny_teacher
from distillkit.models.bundle import ModelBundle, count_parameters
from distillkit.models.compat import check_compatible
from distillkit.models.hf import pretrained_classifier, pretrained_student

__all__ = [
    "ModelBundle",
    "bert_student",
    "check_compatible",
    "count_parameters",
    "pretrained_classifier",
    "pretrained_student",
    "tiny_teacher",
]
