"""Checks that a teacher and a student can be distilled together."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from distillkit.errors import ModelError
from distillkit.models.bundle import ModelBundle


def vocab_difference(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> list[str]:
    """Up to five tokens that ``a`` and ``b`` map to different ids (or only one of them has);
    empty when both read the same token ids."""
    if a is b:
        return []
    a_vocab, b_vocab = a.get_vocab(), b.get_vocab()
    if a_vocab == b_vocab:
        return []
    return sorted(tok for tok in set(a_vocab) ^ set(b_vocab) | {
        tok for tok in set(a_vocab) & set(b_vocab) if a_vocab[tok] != b_vocab[tok]})[:5]


def check_compatible(teacher: ModelBundle, student: ModelBundle) -> None:
    """Refuses teacher/student pairs that would silently train on garbage.

    Checks that both read the same token ids (same vocabulary), that the student's embedding
    table covers the tokenizer, and that both predict the same number of labels.

    Raises:
        ModelError: naming the mismatch and how to fix it.
    """
    differing = vocab_difference(teacher.tokenizer, student.tokenizer)
    if differing:
        raise ModelError(
            f"vocabulary mismatch: teacher '{teacher.name}' ({len(teacher.tokenizer)} tokens) "
            f"and student '{student.name}' ({len(student.tokenizer)} tokens) map tokens to "
            f"different ids (e.g. {differing}); logit distillation needs one tokenizer. Use a "
            "student built from the teacher's tokenizer (student=bert4l, student=tiny) or a "
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
