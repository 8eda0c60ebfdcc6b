"""Tasks: what a run distils and how it is judged. A :class:`Task` supplies the task-specific
parts of the shared stages (building data and models, the teacher's training and targets, the
evaluation and its headline metric); ``conf/task/<name>.yaml`` picks one and lists its
pipeline. Every task module is imported here, so each task's option prefixes are known when a
run checks its options (:func:`distillkit.tasks.base.check_options`)."""

from distillkit.tasks import causal_lm, classification, seq2seq  # noqa: F401 (registers them)
from distillkit.tasks.base import Task

__all__ = ["Task"]
