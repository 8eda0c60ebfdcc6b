"""Aligning the teacher's and the student's vocabularies for token-level KD.

Token-level KD compares two distributions entry by entry, so both models must score the same
tokens in the same order. Two cases are common:

* The same tokenizer, but output layers padded to different sizes (49152 rows against 49153 or
  49216, a multiple of 64 for speed). The rows beyond the tokenizer's length never name a token:
  :func:`align_vocab` returns the shared size, and the caller keeps the first ``size`` rows of
  each side (``logits[..., :size]``, ``lm_head.weight[:size]``), with one warning line.
* Different tokenizers (other tokens, or another order): no alignment by truncation exists;
  :func:`align_vocab` refuses with one :class:`~distillkit.errors.ModelError` line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from distillkit.errors import ModelError

log = logging.getLogger(__name__)

_FIX = ("token-level KD needs one tokenizer: build the student on the teacher's tokenizer "
        "(e.g. student=smollm2_copy)")


def _length(vocab: Mapping[str, int] | int) -> int:
    if isinstance(vocab, int):
        return vocab
    return max(vocab.values(), default=-1) + 1


def _first_difference(student: Mapping[str, int], teacher: Mapping[str, int]) -> str:
    for token in sorted(set(student) | set(teacher), key=lambda t: (teacher.get(t, 1 << 62), t)):
        if student.get(token) != teacher.get(token):
            return (f"token {token!r} is id {teacher.get(token)} for the teacher, "
                    f"{student.get(token)} for the student")
    return "no token differs"


def align_vocab(student_rows: int, teacher_rows: int, student_vocab: Mapping[str, int] | int,
                teacher_vocab: Mapping[str, int] | int) -> int:
    """The vocabulary size both sides of the KD loss use.

    Args:
        student_rows: rows of the student's output layer (its logits' last dim).
        teacher_rows: rows of the teacher's output layer.
        student_vocab: the student tokenizer's ``get_vocab()`` (token -> id), or its length
            (``len(tokenizer)``) when only lengths are known.
        teacher_vocab: the same for the teacher's tokenizer.

    Returns:
        The shared size: the tokenizer's length is covered by both layers, and the caller keeps
        the first ``size`` rows of each side. Logs one warning when a side drops padding rows.

    Raises:
        ModelError: when the tokenizers differ (contents or lengths), or an output layer has
            fewer rows than the tokenizer has tokens.
    """
    s_len, t_len = _length(student_vocab), _length(teacher_vocab)
    sizes = f"teacher vocab {teacher_rows} rows / {t_len} tokens, student {student_rows} rows / " \
            f"{s_len} tokens"
    if s_len != t_len:
        raise ModelError(f"teacher and student tokenizers differ ({sizes}); {_FIX}")
    if not isinstance(student_vocab, int) and not isinstance(teacher_vocab, int) \
            and dict(student_vocab) != dict(teacher_vocab):
        raise ModelError(f"teacher and student tokenizers differ ({sizes}; "
                         f"{_first_difference(student_vocab, teacher_vocab)}); {_FIX}")
    if min(student_rows, teacher_rows) < t_len:
        raise ModelError(f"an output layer is smaller than the tokenizer ({sizes}); the model "
                         "does not match its tokenizer: load the tokenizer saved with it")
    shared = min(student_rows, teacher_rows)
    if student_rows != teacher_rows:
        larger = "teacher" if teacher_rows > student_rows else "student"
        log.warning("%s output layer has %d rows, the other %d; rows from %d on are padding "
                    "beyond the tokenizer's %d tokens: the KD loss uses the first %d",
                    larger, max(student_rows, teacher_rows), shared, shared, t_len, shared)
    return shared
