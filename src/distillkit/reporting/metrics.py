"""The run's final evaluation of the teacher, its ``metrics.json`` content and log summary.

For an ensemble teacher (``teacher=ensemble``) the teacher's values are the ensemble's (its
combined logits: accuracy, loss, inference time of all members together, the members'
parameters summed), retention is against the ensemble, and ``metrics["ensemble"]`` adds the
combine rule, the weights and each member's own accuracy, loss, parameters and stage origin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from distillkit.engine import Distiller, frozen
from distillkit.models import EnsembleTeacher, ModelBundle, TeacherEnsemble, count_parameters


def evaluate_teacher(distiller: Distiller, teacher: ModelBundle, loader: Any,
                     cached: Callable[[], dict] | None = None
                     ) -> tuple[dict | None, dict[str, dict]]:
    """The teacher as it was distilled from (in its own precision) on ``loader``.

    Args:
        distiller: the run's engine (device, precision, progress).
        teacher: the teacher.
        loader: the final split's batches.
        cached: returns the teacher's evaluation from its output cache
            (:func:`distillkit.teachers.outputs.teacher_evaluation`); None: a live evaluation.

    Returns:
        The teacher's metrics (None without a teacher model: ``teacher=offline``) and, for an
        ensemble, each member's by name (else empty).
    """
    if teacher.model is None:
        return None, {}
    if cached is not None:
        return cached(), {}
    frozen(teacher.model, distiller.device, distiller.teacher_dtype)
    metrics = distiller.evaluate(teacher.model, loader, desc="eval teacher")
    members: dict[str, dict] = {}
    if isinstance(teacher, EnsembleTeacher):
        for name, member in teacher.members.items():
            alone = TeacherEnsemble({name: member.model}, {name: 1.0}, "mean_logits", name)
            members[name] = distiller.evaluate(alone, loader, desc=f"eval teacher {name}")
    return metrics, members


def _ensemble(teacher: EnsembleTeacher, members: dict[str, dict],
              student_accuracy: float) -> dict[str, Any]:
    out = {"combine": teacher.combine, "intermediate_teacher": teacher.intermediate,
           "weights": dict(teacher.weights), "members": {}}
    for name, bundle in teacher.members.items():
        m = members.get(name, {})
        acc = m.get("accuracy")
        out["members"][name] = {
            "model": bundle.name, "origin": bundle.origin, "weight": teacher.weights[name],
            "params": count_parameters(bundle.model), **m,
            "retention": None if acc is None else student_accuracy / acc if acc > 0
            else float("nan")}
    return out


def collect_metrics(teacher: ModelBundle, student: ModelBundle, data: Any, final_role: str,
                    teacher_metrics: dict | None, student_metrics: dict, distiller: Distiller,
                    result: Any, member_metrics: dict[str, dict] | None = None
                    ) -> dict[str, Any]:
    """The run's metrics; without a teacher model (``teacher=offline``) the teacher's values,
    retention and speed-up are null."""
    if teacher_metrics is None:
        teacher_metrics = dict.fromkeys(student_metrics) | {"source": teacher.name}
    t_acc, t_sec = teacher_metrics["accuracy"], teacher_metrics["seconds"]
    s_sec = student_metrics["seconds"]
    metrics = {
        "teacher": teacher_metrics,
        "student": student_metrics,
        "retention": (None if t_acc is None else
                      student_metrics["accuracy"] / t_acc if t_acc > 0 else float("nan")),
        "params": {"teacher": None if teacher.model is None else count_parameters(teacher.model),
                   "student": count_parameters(student.model)},
        "eval_split": data.split_names[final_role],
        # which split played which role; final_role "eval": no test split, the final numbers
        # are validation numbers; carved: the validation split cut from train (data.splits)
        "splits": {**{role: data.split_names[role] for role in ("train", "eval", "test")},
                   "final_role": final_role, "carved": data.carved},
        "inference": {
            "device": str(distiller.device),
            "precision": {"student": str(distiller.autocast_dtype or torch.float32),
                          "teacher": str(distiller.teacher_dtype or torch.float32)},
            "teacher_seconds": None if t_sec is None else round(t_sec, 3),
            "student_seconds": round(s_sec, 3),
            "speedup": None if t_sec is None else t_sec / max(s_sec, 1e-9),
        },
        "train": {"steps": result.steps, "epochs": result.epochs_completed,
                  "seconds": round(result.train_seconds, 3), "last_losses": result.last_losses,
                  "evals": result.evals},
    }
    if data.domain is not None:  # evaluated on one domain's rows
        metrics["domain"] = data.domain
    if isinstance(teacher, EnsembleTeacher):
        metrics["ensemble"] = _ensemble(teacher, member_metrics or {},
                                        student_metrics["accuracy"])
    return metrics


def _members_lines(ensemble: dict[str, Any]) -> list[str]:
    lines = [f"teacher = ensemble of {len(ensemble['members'])} ({ensemble['combine']}; "
             f"intermediate teacher: {ensemble['intermediate_teacher']}):"]
    for name, m in ensemble["members"].items():
        acc = "-" if m.get("accuracy") is None else f"{m['accuracy']:.4f}"
        lines.append(f"  {name}: accuracy {acc}, weight {m['weight']:.3g}, "
                     f"{m['params']:,} parameters, {m['model']}")
    return lines


def _final_split(metrics: dict[str, Any]) -> str:
    """Where the final numbers come from: ``test split`` or, without a test split, e.g.
    ``validation split (carved from train: 10%) - no test split: these are validation
    accuracies``."""
    splits = metrics["splits"]
    name = f"{metrics['eval_split']} split"
    if splits["final_role"] == "test":
        return name
    carved = splits["carved"]
    if carved is not None:
        name += f" (carved from {carved['from']}: {carved['fraction']:.0%})"
    return f"{name} - no test split: these are validation accuracies"


def format_summary(metrics: dict[str, Any]) -> str:
    """The summary table the run logs at its end."""
    t, s = metrics["teacher"], metrics["student"]

    def cell(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)
    rows = [
        ("", "teacher", "student"),
        ("accuracy", cell(t["accuracy"], ".4f"), f"{s['accuracy']:.4f}"),
        ("loss", cell(t["loss"], ".4f"), f"{s['loss']:.4f}"),
        ("parameters", cell(metrics["params"]["teacher"], ","), f"{metrics['params']['student']:,}"),
        ("inference s", cell(t["seconds"], ".1f"), f"{s['seconds']:.1f}"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    where = f"  [{_final_split(metrics)}, {s['examples']} examples]"
    if metrics["retention"] is None:  # teacher=offline
        lines.append(f"teacher: {t.get('source', 'offline logits file')} (no teacher model: "
                     f"no teacher accuracy, retention or speed-up){where}")
        return "\n".join(lines)
    if "ensemble" in metrics:
        lines += _members_lines(metrics["ensemble"])
    lines.append(f"retention (student/teacher accuracy): {metrics['retention']:.4f}{where}")
    inf = metrics["inference"]
    if inf["speedup"] is not None:
        lines.append(f"inference speed-up on the same batches ({inf['device']}): "
                     f"{inf['speedup']:.2f}x")
    if t.get("evaluation") == "cache":
        lines.append("teacher: evaluation read from the teacher-output cache (its inference "
                     "seconds are those measured when it was computed)")
    if "precision" in inf:
        lines.append(f"precision: student {inf['precision']['student']}, teacher "
                     f"{inf['precision']['teacher']}")
    return "\n".join(lines)
