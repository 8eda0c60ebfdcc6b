"""The run record: one schema of ``metrics.json`` for every task.

Read by ``distillkit report`` and the sweep summary (:mod:`distillkit.reporting.report`),
``distillkit reproduce`` and the HParams session (:mod:`distillkit.reporting.hparams`)::

    schema       2
    task         classification | seq2seq
    metric       the headline metric (higher is better): accuracy, exact_match, bleu, chrf
    teacher      {metric name: value, ..., loss, examples, seconds}  (values null: no teacher
                 model, teacher=offline)
    student      the same for the student
    retention    student / teacher on the headline metric
    objective    {name: final_<metric> | validation_<metric>, value}: what a sweeper maximises
    stages       {stage name: origin}: computed, cache, file, fine-tuned, resumed, skipped, ...
    stage_seconds {stage name: wall seconds}
    train        {steps, epochs, seconds, last_losses, evals}
    teacher_features  the feature cache of a layer-wise loss: {source (cache | computed |
                 live), reason, dtype, hidden_layers, attention_layers, tokens, bytes,
                 bytes_per_token, splits, seconds, logits} (when the loss reads features)
    general      the general stage's {origin, key, path, embeddings, texts, steps, seconds,
                 last_losses} (when it ran)
    ...          the task's own fields (params, eval_split, splits, inference, ensemble, ...)
"""

from __future__ import annotations

from typing import Any

SCHEMA = 2


def headline(metrics: dict[str, Any]) -> str:
    """The headline metric's name of a ``metrics.json`` (``accuracy`` for records written
    before the schema named it)."""
    return str(metrics.get("metric", "accuracy"))


def run_record(ctx: Any, stages: dict[str, Any]) -> dict[str, Any]:
    """The record of the run in ``ctx`` (a :class:`~distillkit.pipeline.RunContext` after its
    evaluate stage), with the stages' origins ``stages``."""
    task, ev = ctx.task, ctx.evaluation
    metric = task.metric(ctx)
    kind = task.objective(ctx.cfg, metric)
    chosen = ev.validation if kind == "validation" and ev.validation is not None else ev.student
    record: dict[str, Any] = {"schema": SCHEMA, "task": task.name, "metric": metric}
    record.update(task.record(ctx))
    record["stages"] = stages
    record["stage_seconds"] = dict(ctx.stage_seconds)
    record["objective"] = {"name": f"{kind}_{metric}", "value": chosen[metric]}
    if ctx.general is not None:
        record["general"] = ctx.general.record()
    if "teacher_features" in ctx.details:
        record["teacher_features"] = ctx.details["teacher_features"]
    if "resumed_from" in ctx.details:
        record["resumed_from"] = ctx.details["resumed_from"]
    if ctx.dist.enabled:
        record["distributed"] = ctx.dist.summary(ctx.settings.batch_size)
    return record
