"""Checks that a teacher and a student can be distilled together."""

from __future__ import annotations

from distillkit.errors import ModelError
from distillkit.models.bundle import ModelBundle


def check_compatible(teacher: ModelBundle, student: ModelBundle) -> None:
    """Refuses teacher/student pairs that would silently train on garbage.

    Checks that both read the same token ids (same vocabulary), that the student's embedding
    table covers the tokenizer, and that both predict the same number of labels.

    Raises:
        ModelError: naming the mismatch and how to fix it.
    """
    if student.tokenizer is not teacher.tokenizer:
        t_vocab, s_vocab = teacher.tokenizer.get_vocab(), student.tokenizer.get_vocab()
        if t_vocab != s_vocab:
            differing = sorted(
                tok for tok in set(t_vocab) ^ set(s_vocab) | {
                    tok for tok in set(t_vocab) & set(s_vocab) if t_vocab[tok] != s_vocab[tok]
                }
            )[:5]
            raise ModelError(
                f"vocabulary mismatch: teacher '{teacher.name}' ({len(t_vocab)} tokens) and "
                f"student '{student.name}' ({len(s_vocab)} tokens) map tokens to different ids "
                f"(e.g. {differing}); logit distillation needs one tokenizer. Use a student "
                "built from the teacher's tokenizer (student=bert4l, student=tiny) or a "
                "pretrained student from the same model family"
            )
    needed = len(teacher.tokenizer)
    have = int(student.model.config.vocab_size)
    if have < needed:
        raise ModelError(
            f"student '{student.name}' has {have} embedding rows but the tokenizer has "
            f"{needed} tokens; build the student with the teacher's vocab size"
        )
    if teacher.model is None:  # offline teacher: its file's label count is checked on reading
        return
    t_labels, s_labels = teacher.model.config.num_labels, student.model.config.num_labels
    if t_labels != s_labels:
        raise ModelError(
            f"label-count mismatch: teacher '{teacher.name}' predicts {t_labels} labels, "
            f"student '{student.name}' {s_labels}; both must use the data's label list"
        )
