"""The student's embedding tables initialised from the teacher's, by PCA.

When the student shares the teacher's vocabulary but is narrower, its word embeddings start as
the teacher's projected onto their top ``d_student`` principal components (centred); the same
projection maps the teacher's position and token-type tables, which are added to the word
embeddings before the embedding LayerNorm. A student as wide as the teacher gets the tables
copied. Whether this helps is measured in ``docs/general-distillation.md``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)
_TABLES = ("position_embeddings.weight", "token_type_embeddings.weight")


def _tables(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's position and token-type tables (sharing the parameters' storage), keyed by
    the table's name (``position_embeddings.weight``, ...)."""
    return {suffix: value for name, value in model.state_dict().items()
            for suffix in _TABLES if name.endswith(suffix)}


@torch.no_grad()
def pca_embeddings(student: nn.Module, teacher: nn.Module) -> str:
    """Initialises ``student``'s embedding tables from ``teacher``'s (in place).

    Returns:
        What was done, for the log and the record: ``pca (<variance>% of the variance)``,
        ``copied``, or ``random (<why>)`` when the tables cannot be mapped.
    """
    s_words = student.get_input_embeddings().weight
    t_words = teacher.get_input_embeddings().weight
    if s_words.shape[0] != t_words.shape[0]:
        return (f"random (student vocabulary {s_words.shape[0]} != teacher vocabulary "
                f"{t_words.shape[0]})")
    d_s, d_t = s_words.shape[1], t_words.shape[1]
    if d_s > d_t:
        return f"random (student width {d_s} > teacher width {d_t})"
    words = t_words.detach().float().cpu()
    mean = words.mean(0)
    if d_s == d_t:
        basis, kept = torch.eye(d_t), 1.0
    else:
        _, values, vh = torch.linalg.svd(words - mean, full_matrices=False)
        basis = vh[:d_s].T  # [d_t, d_s]: the top d_s principal directions
        kept = float(values[:d_s].pow(2).sum() / values.pow(2).sum())
    s_words.copy_(((words - mean) @ basis).to(s_words.dtype))
    mapped = ["word"]
    teacher_tables = _tables(teacher)
    for name, table in _tables(student).items():
        source = teacher_tables.get(name)
        if source is None or source.shape[1] != d_t or table.shape[0] > source.shape[0]:
            continue
        table.copy_((source[:table.shape[0]].float().cpu() @ basis).to(table.dtype))
        mapped.append(name.split("_embeddings")[0])
    what = "copied" if d_s == d_t else f"pca ({100 * kept:.1f}% of the variance)"
    log.info("student embeddings (%s) initialised from the teacher's: %s", ", ".join(mapped),
             what)
    return what
