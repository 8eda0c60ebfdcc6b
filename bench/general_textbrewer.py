"""distillkit's general-distillation stage vs TextBrewer's GeneralDistiller on the same work.

One run, the same inputs for both trainers:

1. the run's objects from one distillkit config (``_common.prepare`` with ``general=none``:
   data, the teacher after its stage, the randomly initialised task student, the task loss
   and the task batches) and the general stage's settings from the same config composed with
   the general preset (``general=tinybert`` unless another ``general=...`` is given);
2. the general stage's inputs built exactly as the stage builds them
   (:mod:`distillkit.general.distill`): the teacher it reads (``general_teacher``), a student
   copy with PCA-initialised embeddings, the corpus's first ``general.steps`` length-grouped
   batches (one list, so both trainers see the same batches in the same order) and the bound
   stage loss with its projections (built after the same ``set_seed``);
3. one copy of that student general-distilled by distillkit's engine (``general_distiller``),
   one by TextBrewer's ``GeneralDistiller`` (``intermediate_matches`` from the bound plan:
   ``hidden_mse`` with a ``["linear", d_s, d_t]`` projection and ``attention_mse`` per layer
   pair), with the same AdamW, linear warm-up and decay, gradient clipping and dropout seed;
   steps/s over the steps after the first (the last, where TextBrewer saves its checkpoint, is
   not timed either);
4. each general-distilled encoder put into a fresh copy of the task student and task-distilled
   by distillkit's engine with the run's loss (``loss=mmd`` unless overridden) on the same task
   batches for ``trainer.max_steps``, then evaluated on the test split.

    python bench/general_textbrewer.py                            # tiny models (seconds)
    python bench/general_textbrewer.py --real general.steps=1000  # MiniLM-L6, SNLI, bert4l
    python bench/general_textbrewer.py --real --general-steps 1000 --json general-tb.json

Needs TextBrewer (``pip install -e ".[bench]"``). What cannot be the same: TextBrewer's
``attention_mse`` needs equal head counts (distillkit averages heads when they differ: refused
here), and it runs the teacher's layers above the deepest one the loss reads (distillkit
truncates the teacher; the default uniform mapping reads the last layer, so nothing is cut).
What the bench evens out by hand (a TextBrewer script could do the same): its projections
start from distillkit's initial weights (TextBrewer's own: N(0, 0.02), zero bias; keep them
with ``--textbrewer-projection-init``), and its gradient clipping covers the projections as
distillkit's does (TextBrewer clips ``model_S``'s parameters only: the student is wrapped with
the projections). TextBrewer trains in fp32 as shipped; ``--autocast`` hands it the run's
autocast (its teacher stays fp32). It logs its losses to TensorBoard every step (its own
behaviour), distillkit's stage writes no TensorBoard.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from _common import (
    TINY,
    Setup,
    Timing,
    compose,
    machine,
    prepare,
    textbrewer_version,
    timed_batches,
    train_distillkit,
)
from _textbrewer import textbrewer_matches
from hydra.errors import ConfigCompositionException
from torch import nn
from transformers import set_seed

from distillkit.data.synthetic import synthetic_nli
from distillkit.engine import EngineSettings, evaluate
from distillkit.engine.schedules import warmup_schedule
from distillkit.errors import ConfigError, DistillkitError
from distillkit.general.corpus import CorpusBatches, load_texts
from distillkit.general.distill import (
    bound_loss,
    corpus_ids,
    general_distiller,
    general_teacher,
    spec_of,
)
from distillkit.general.embeddings import pca_embeddings
from distillkit.general.settings import GeneralSettings
from distillkit.models import ModelBundle
from distillkit.runtime.io import write_json

log = logging.getLogger("general_textbrewer")
# the tiny mode: textbrewer_compare's tiny models, a short stage on a generated corpus
TINY_BASE = [*TINY, "trainer=debug", "student.hidden_size=16"]
TINY_GENERAL = ["general.steps=12", "general.batch_size=16", "general.max_length=32"]


@dataclass
class GeneralWork:
    """The general stage's inputs, as the stage builds them; trainers get copies.

    Attributes:
        teacher: the teacher the stage reads (``general.teacher``).
        student: the task student's model with the stage's embedding initialisation.
        loss: the stage's loss, bound, projections at their initial weights.
        batches: the stage's first ``settings.steps`` corpus batches, in order.
        settings: the ``general`` section.
        engine: the run's loop settings (the stage's seed).
        embeddings: what the embedding initialisation did.
        texts: distinct corpus texts.
    """

    teacher: ModelBundle
    student: nn.Module
    loss: Any
    batches: list[dict[str, torch.Tensor]]
    settings: GeneralSettings
    engine: EngineSettings
    embeddings: str
    texts: int

    def teacher_copy(self) -> ModelBundle:
        """The teacher with its own model copy (distillkit casts the teacher in place)."""
        return dataclasses.replace(self.teacher, model=copy.deepcopy(self.teacher.model))


def is_general(override: str) -> bool:
    """Whether a Hydra override sets the ``general`` group or one of its keys."""
    key = override.lstrip("+~").split("=", 1)[0]
    return key == "general" or key.startswith("general.")


def tiny_corpus(directory: Path) -> Path:
    """A small generated text file (one sentence a line) on the tiny tokenizer's words."""
    data = synthetic_nli(n_train=600, n_validation=0, n_test=0, seed=7)["train"]
    path = directory / "corpus.txt"
    path.write_text("\n".join([*data["premise"], *data["hypothesis"]]) + "\n")
    return path


def general_settings(overrides: list[str]) -> tuple[GeneralSettings, dict[str, Any]]:
    """The ``general`` section of the config composed from ``overrides``, checked."""
    spec = spec_of(compose(overrides).general)
    settings = GeneralSettings.from_config(spec)
    if not settings.enabled:
        raise ConfigError("the general preset is off (general=none); use general=tinybert")
    if settings.steps < 3:
        raise ConfigError(f"general.steps must be at least 3 here (the first and last steps are "
                          f"not timed), got {settings.steps}")
    return settings, spec


def general_work(setup: Setup, settings: GeneralSettings, spec: dict[str, Any]) -> GeneralWork:
    """Builds the stage's inputs in the order ``general_distillation`` does."""
    built = setup.built
    source = general_teacher(built["teacher"], settings.teacher)
    engine = setup.settings if settings.seed is None else \
        dataclasses.replace(setup.settings, seed=settings.seed)
    student = copy.deepcopy(built["student"].model)
    set_seed(engine.seed)
    embeddings = (pca_embeddings(student, source.model) if settings.embeddings == "pca"
                  else "random")
    texts = load_texts(settings.corpus, settings.text_column, settings.max_texts)
    loss = bound_loss(spec, source, dataclasses.replace(built["student"], model=student))
    corpus = CorpusBatches(corpus_ids(source, texts, settings), settings.batch_size,
                           source.tokenizer.pad_token_id or 0, engine.seed)
    batches: list[dict[str, torch.Tensor]] = []
    while len(batches) < settings.steps:  # a new (reshuffled) pass when one is used up
        batches += [b for _, b in zip(range(settings.steps - len(batches)), corpus,
                                      strict=False)]
    return GeneralWork(source, student, loss, batches, settings, engine, embeddings,
                       len(texts))


def train_general_distillkit(work: GeneralWork) -> tuple[nn.Module, Timing]:
    """A copy of the student general-distilled by the stage's own engine setup."""
    student, loss = copy.deepcopy(work.student), copy.deepcopy(work.loss)
    steps = work.settings.steps
    wrapped, tokens = timed_batches(work.batches, 1, steps - 2, 1,
                                    work.engine.resolve_device())
    distiller = general_distiller(work.teacher_copy(), student, loss, work.settings,
                                  work.engine)
    set_seed(work.engine.seed)
    start = time.perf_counter()
    distiller.fit(wrapped, desc="general distillation (distillkit)")
    return student, Timing(wrapped.seconds, steps - 2, tokens,
                           total_seconds=time.perf_counter() - start)


class _WithProjections(nn.Module):
    """The student, owning TextBrewer's projections too: TextBrewer clips the gradients of its
    ``model_S``'s parameters, so this way the projections are clipped with the student as in
    distillkit's engine. Calls go to the student."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.projections = nn.ModuleList()

    def forward(self, **inputs: Any) -> Any:
        return self.student(**inputs)


def _adaptor(batch: dict, out: Any) -> dict:
    """TextBrewer's view of a model's outputs: every layer's hidden states and attention
    maps, and the attention mask (no logits: the stage has no prediction term)."""
    return {"hidden": list(out.hidden_states), "attention": list(out.attentions),
            "inputs_mask": batch["attention_mask"]}


def train_general_textbrewer(work: GeneralWork, autocast: bool,
                             own_projection_init: bool) -> tuple[nn.Module, Timing]:
    """A copy of the student general-distilled by TextBrewer's ``GeneralDistiller``."""
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    s, engine = work.settings, work.engine
    student, loss = copy.deepcopy(work.student), copy.deepcopy(work.loss)
    teacher = work.teacher_copy().model
    device = engine.resolve_device()
    dtype = engine.autocast_dtype(device) if autocast else None
    matches = textbrewer_matches(loss, int(student.config.hidden_size),
                                 int(teacher.config.hidden_size))
    wrapped, tokens = timed_batches(work.batches, 1, s.steps - 2, 1, device)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="distillkit-bench-tb-") as out_dir:
        model = _WithProjections(student).to(device)
        teacher.to(device).eval().requires_grad_(False)
        distiller = GeneralDistiller(
            TrainingConfig(device=str(device), output_dir=out_dir, log_dir=out_dir,
                           ckpt_steps=10**9),
            DistillationConfig(intermediate_matches=matches), teacher, model, _adaptor,
            _adaptor)
        for (_, pair, _), proj in zip(loss.intermediate.plan, distiller.projs, strict=True):
            if proj is None:
                continue
            if not own_projection_init:
                proj.load_state_dict(loss.intermediate.projections[pair.label()].state_dict())
            model.projections.append(proj)
        optimizer = torch.optim.AdamW(student.parameters(), lr=s.lr,
                                      weight_decay=s.weight_decay)
        schedule = partial(warmup_schedule, name="linear", warmup_ratio=s.warmup_ratio)
        context = (torch.autocast(device.type, dtype=dtype) if dtype is not None
                   else contextlib.nullcontext())
        set_seed(engine.seed)
        with distiller, context:
            distiller.train(optimizer, wrapped, num_steps=s.steps,
                            scheduler_class=lambda optimizer, **kw: schedule(optimizer, **kw),
                            scheduler_args={"num_training_steps": s.steps},
                            max_grad_norm=engine.max_grad_norm or -1.0,
                            output_hidden_states=True, output_attentions=True)
        distiller.tb_writer.close()
    return student, Timing(wrapped.seconds, s.steps - 2, tokens,
                           total_seconds=time.perf_counter() - start)


def task_accuracy(setup: Setup, encoder: nn.Module) -> float:
    """Test accuracy of a fresh task student with ``encoder``'s weights after the run's task
    distillation (distillkit's engine, the run's loss, batches and steps)."""
    built, settings = setup.built, setup.settings
    student = copy.deepcopy(built["student"].model)
    student.base_model.load_state_dict(encoder.base_model.state_dict())
    train_distillkit(setup, student, built["teacher"].model, copy.deepcopy(built["loss"]),
                     setup.batches, 0, settings.max_steps - 1)
    data = built["data"]
    test = data.loader("test" if data.has_split("test") else "eval", settings.eval_batch_size)
    device = settings.resolve_device()
    metrics = evaluate(student, test, device, settings.autocast_dtype(device), progress=False)
    return float(metrics["accuracy"])


def max_difference(a: nn.Module, b: nn.Module) -> float:
    """Largest absolute difference between two encoders' weights."""
    other = b.base_model.state_dict()
    return max(float((v.float() - other[k].float()).abs().max())
               for k, v in a.base_model.state_dict().items() if v.is_floating_point())


def main() -> None:
    """Runs the comparison; a bad config or input ends it with one ``error:`` line (exit 2)."""
    try:
        run()
    except (DistillkitError, ConfigCompositionException) as exc:
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)  # noqa: T201 - the one-line failure
        raise SystemExit(2) from None


def run() -> None:
    """Runs both general stages, the task distillation of both, and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (general.* too)")
    parser.add_argument("--real", action="store_true",
                        help="the default teacher and SNLI with student=bert4l")
    parser.add_argument("--general-steps", type=int, default=None,
                        help="shortcut for general.steps=N")
    parser.add_argument("--autocast", action="store_true",
                        help="hand TextBrewer the run's autocast (default: fp32, as shipped)")
    parser.add_argument("--textbrewer-projection-init", action="store_true",
                        help="keep TextBrewer's own projection initialisation")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if textbrewer_version() is None:
        raise ConfigError('textbrewer is not installed: pip install -e ".[bench]"')
    user_general = [o for o in args.overrides if is_general(o)]
    user_task = [o for o in args.overrides if not is_general(o)]
    if args.general_steps is not None:
        user_general.append(f"general.steps={args.general_steps}")
    base = ["loss=mmd", *(["student=bert4l"] if args.real else TINY_BASE)]
    with tempfile.TemporaryDirectory(prefix="distillkit-bench-general-") as tmp:
        preset = ["general=tinybert"]
        if not args.real:  # a short stage on a generated corpus
            preset += [*TINY_GENERAL, f"general.corpus={tiny_corpus(Path(tmp))}"]
        settings, spec = general_settings([*base, *user_task, *preset, *user_general])
        setup = prepare([*base, *user_task, "general=none"])
        result = compare(setup, settings, spec, args)
    result["overrides"] = {"task": [*base, *user_task], "general": [*preset, *user_general]}
    print(report(result))  # noqa: T201 - the benchmark's report
    if args.json is not None:
        write_json(args.json, result)


def compare(setup: Setup, settings: GeneralSettings, spec: dict[str, Any],
            args: argparse.Namespace) -> dict[str, Any]:
    """Both general stages, then the task distillation of both encoders."""
    work = general_work(setup, settings, spec)
    teacher, student = work.teacher.model, work.student
    if int(student.config.num_attention_heads) != int(teacher.config.num_attention_heads) \
            and any(name.startswith("attention") for name, _, _ in work.loss.intermediate.plan):
        raise ConfigError(f"TextBrewer's attention_mse needs equal head counts (student "
                          f"{student.config.num_attention_heads}, teacher "
                          f"{teacher.config.num_attention_heads}); set student.num_heads="
                          f"{teacher.config.num_attention_heads}")
    log.info("general stage: %d steps x %d texts of %d, terms: %s, embeddings %s",
             settings.steps, settings.batch_size, work.texts, work.loss.describe_layers(),
             work.embeddings)
    encoder_a, timing_a = train_general_distillkit(work)
    encoder_b, timing_b = train_general_textbrewer(work, args.autocast,
                                                   args.textbrewer_projection_init)
    rows = []
    for name, encoder, timing in (("distillkit", encoder_a, timing_a),
                                  ("textbrewer", encoder_b, timing_b)):
        rows.append({"trainer": name, "general_steps_per_second": timing.steps_per_second,
                     "general_timed_steps": timing.steps,
                     "general_seconds": round(timing.total_seconds, 2),
                     "task_test_accuracy": task_accuracy(setup, encoder)})
    device = setup.settings.resolve_device()
    dtype = setup.settings.autocast_dtype(device)
    return {
        "general_steps": settings.steps, "general_batch_size": settings.batch_size,
        "task_steps": setup.settings.max_steps, "task_batch_size": setup.settings.batch_size,
        "texts": work.texts, "embeddings": work.embeddings,
        "terms": work.loss.describe_layers(),
        "precision": {"distillkit": str(dtype or "fp32"),
                      "textbrewer": str(dtype or "fp32") if args.autocast else "fp32"},
        "projection_init": "textbrewer" if args.textbrewer_projection_init else "distillkit",
        "encoder_max_abs_difference": max_difference(encoder_a, encoder_b),
        "rows": rows,
        "speed_ratio": rows[0]["general_steps_per_second"] / rows[1]["general_steps_per_second"],
        "machine": machine(),
    }


def report(result: dict[str, Any]) -> str:
    """The comparison as a small text table."""
    header = f"{'trainer':12s} {'general steps/s':>16s} {'test acc after task':>20s}"
    lines = [f"general stage: {result['general_steps']} steps x {result['general_batch_size']} "
             f"texts ({result['texts']} distinct), {result['terms']}, embeddings "
             f"{result['embeddings']}; precision distillkit {result['precision']['distillkit']}"
             f", textbrewer {result['precision']['textbrewer']}",
             f"task stage: {result['task_steps']} steps x {result['task_batch_size']}, "
             f"overrides {' '.join(result['overrides']['task'])} | "
             f"{' '.join(result['overrides']['general'])}",
             f"torch {result['machine']['torch']}, textbrewer {result['machine']['textbrewer']}, "
             f"threads {result['machine']['threads']}",
             header, "-" * len(header)]
    lines += [f"{r['trainer']:12s} {r['general_steps_per_second']:16.3f} "
              f"{r['task_test_accuracy']:20.4f}" for r in result["rows"]]
    lines.append(f"speed ratio distillkit/textbrewer (general stage): "
                 f"{result['speed_ratio']:.2f}x")
    lines.append(f"largest |difference| between the two general-distilled encoders: "
                 f"{result['encoder_max_abs_difference']:.3g}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
