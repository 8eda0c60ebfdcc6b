"""Tasks: what a run distils and how it is judged. A :class:`Task` supplies the task-specific
parts of the shared stages (building data and models, the teacher's training and targets, the
evaluation and its headline metric); ``conf/task/<name>.yaml`` picks one and lists its
pipeline."""

from distillkit.tasks.base import Task

__all__ = ["Task"]
