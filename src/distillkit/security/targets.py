"""What a config may name as code: the allow-list, and how a dotted name is resolved.

A ``_target_`` (or a logging ``()`` / ``class`` factory) is judged by the object it names, not
by how it is spelled: :func:`locate` walks the dotted name segment by segment the way Hydra's
``_locate`` and ``logging.config`` do (attribute first, then import), importing only modules of
the packages the allow-list (or the user's opt-in) names, and refuses a walk through a module
attribute that is not a genuine submodule (``torch.os`` is the module ``os``). The object it
finds is allowed only when it *is* one of the objects listed here (an alias such as
``torch.optim.adamw.AdamW`` is the same object; ``torch.serialization.load`` is not on the list).

The lists are deliberately short: distillkit's own factories that configs name (``conf/`` and
the README), the torch/transformers objects a config may use for the optimizer, the LR
schedule and a projection, Hydra's and its plugins' launchers, sweepers and samplers, and the
logging handlers/formatters Hydra's logging configs use. Anything else needs the user's
opt-in on the command line (:mod:`distillkit.security.safety`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from functools import cache
from importlib import import_module
from types import ModuleType

# Factories a task config (loss, data, models, mapping, trainer) may name.
TASK = (
    # distillkit's own factories and loss terms
    "distillkit.losses.DistillationLoss", "distillkit.losses.SoftTargetCrossEntropy",
    "distillkit.losses.KLDivergence", "distillkit.losses.MSELogits",
    "distillkit.losses.HardCrossEntropy", "distillkit.losses.HiddenMSE",
    "distillkit.losses.HiddenCosine", "distillkit.losses.AttentionMSE",
    "distillkit.losses.AttentionKL", "distillkit.losses.GramMMD",
    "distillkit.losses.mapping.none_mapping", "distillkit.losses.mapping.explicit_mapping",
    "distillkit.losses.mapping.uniform_mapping", "distillkit.losses.mapping.last_mapping",
    "distillkit.data.TextClassificationData", "distillkit.data.local_files",
    "distillkit.data.hub_dataset", "distillkit.data.snli", "distillkit.data.snli_domains",
    "distillkit.data.synthetic_nli",
    "distillkit.models.tiny_teacher", "distillkit.models.bert_student",
    "distillkit.models.student_from_teacher", "distillkit.models.pretrained_classifier",
    "distillkit.models.pretrained_student", "distillkit.models.packaged_classifier",
    "distillkit.models.teacher_ensemble", "distillkit.teachers.offline.offline_teacher",
    "distillkit.engine.schedules.warmup_schedule",
    "distillkit.seq2seq.Seq2SeqData", "distillkit.seq2seq.TokenDistillationLoss",
    "distillkit.seq2seq.StepByStepLoss", "distillkit.seq2seq.hub_seq2seq",
    "distillkit.seq2seq.t5_from_scratch", "distillkit.seq2seq.bert2bert_minilm",
    "distillkit.seq2seq.arith_word_problems",
    "distillkit.tasks.classification.ClassificationTask", "distillkit.tasks.seq2seq.Seq2SeqTask",
    # task=causal_lm (distillkit.causal)
    "distillkit.tasks.causal_lm.CausalLMTask", "distillkit.causal.data.CausalLMData",
    "distillkit.causal.losses.causal_kd", "distillkit.causal.hidden_loss.causal_hidden",
    "distillkit.causal.models.smollm2_teacher",
    "distillkit.causal.models.hub_causal_lm", "distillkit.causal.models.small_llama_student",
    "distillkit.causal.copied.copied_causal_student", "distillkit.causal.tiny.tiny_llama",
    "distillkit.causal.sources.tiny_text", "distillkit.causal.sources.snli_text",
    "distillkit.causal.sources.snli_pairs", "distillkit.causal.sources.files_or_hub",
    # optimizers (trainer.optimizer, a _partial_ called with the parameters)
    "torch.optim.AdamW", "torch.optim.Adam", "torch.optim.SGD", "torch.optim.Adagrad",
    "torch.optim.Adadelta", "torch.optim.Adamax", "torch.optim.RMSprop", "torch.optim.RAdam",
    "torch.optim.NAdam",
    # LR schedules called as (optimizer, num_training_steps=N) with num_warmup_steps given
    "transformers.get_linear_schedule_with_warmup",
    "transformers.get_cosine_schedule_with_warmup",
    "transformers.get_polynomial_decay_schedule_with_warmup",
    # projections of intermediate terms (loss.projection)
    "torch.nn.Linear",
)
# The hydra section's launcher, sweeper and sampler (conf/, Hydra and the plugins it uses).
HYDRA = (
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
    "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    "optuna.samplers.TPESampler", "optuna.samplers.RandomSampler",
    "optuna.samplers.CmaEsSampler", "optuna.samplers.NSGAIISampler",
)
# hydra.callbacks: distillkit's own.
CALLBACKS = ("distillkit.reporting.sweep.SweepSummary", "distillkit.runtime.distributed_hydra.SharedRunDir")
# The ``class`` / ``()`` factories of hydra.job_logging / hydra.hydra_logging.
LOGGING = (
    "logging.StreamHandler", "logging.FileHandler", "logging.NullHandler", "logging.Formatter",
    "logging.Filter", "logging.handlers.RotatingFileHandler",
    "logging.handlers.TimedRotatingFileHandler", "logging.handlers.WatchedFileHandler",
    "colorlog.ColoredFormatter",
)
CONTEXTS = {"task": TASK, "hydra": HYDRA, "callback": CALLBACKS, "logging": LOGGING}
# Loads code or pickles, runs commands: refused under a prefix opt-in (allow_targets=[torch.]);
# only an opt-in of the exact name allows one of these.
DENIED_MODULES = ("torch.hub", "torch.serialization", "torch.jit", "torch.package",
                  "torch.utils.cpp_extension", "torch._ops", "transformers.dynamic_module_utils",
                  "pickle", "_pickle", "marshal", "os", "posix", "nt", "subprocess", "builtins",
                  "importlib", "runpy", "shutil", "code", "pty", "ctypes")
_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class Refusal(Exception):
    """A dotted name that does not name an allowed object; the message says why."""


def locate(path: str, roots: Collection[str]) -> object:
    """The object Hydra (or ``logging.config``) would call for ``path``.

    Walks ``path`` segment by segment as Hydra's ``_locate`` does (attribute first, then
    import), but imports only modules whose top-level package is in ``roots``.

    Raises:
        Refusal: a malformed name, a package outside ``roots``, a name that does not resolve,
            or a walk through a module attribute that is not a genuine submodule.
    """
    parts = path.split(".")
    if not all(_SEGMENT.match(p) for p in parts):
        raise Refusal("it is not a dotted Python name")
    if any(p.startswith("__") for p in parts):
        raise Refusal("it walks through a dunder attribute")
    if parts[0] not in roots:
        raise Refusal("it is not on the allow-list")
    try:
        obj: object = import_module(parts[0])
        for i in range(1, len(parts)):
            name = ".".join(parts[: i + 1])
            try:
                obj = getattr(obj, parts[i])
            except AttributeError:
                if not isinstance(obj, ModuleType):
                    raise
                obj = import_module(name)
            if isinstance(obj, ModuleType) and obj.__name__ != name:
                raise Refusal(f"{name} is the module {obj.__name__}, not a submodule of "
                              f"{'.'.join(parts[:i])}: the name walks through a module "
                              "attribute; name the object by its own module")
    except Refusal:
        raise
    except Exception as exc:  # ImportError, AttributeError, or an import that failed
        raise Refusal(f"it does not resolve ({type(exc).__name__}: "
                      f"{(str(exc).splitlines() or [''])[0]})") from None
    return obj


@cache
def _objects(names: tuple[str, ...]) -> tuple[object, ...]:
    """The objects of ``names`` (ones whose package is not installed are left out)."""
    found = []
    for name in names:
        try:
            found.append(locate(name, {name.split(".")[0]}))
        except Refusal:
            continue
    return tuple(found)


def roots(names: Iterable[str]) -> set[str]:
    """The top-level packages of dotted names (what :func:`locate` may import)."""
    return {n.split(".")[0] for n in names if n}


def listed(obj: object, context: str) -> bool:
    """Whether ``obj`` is one of the objects allowed in ``context`` (task, hydra, callback,
    logging)."""
    return any(obj is allowed for allowed in _objects(CONTEXTS[context]))


def denied(obj: object) -> bool:
    """Whether ``obj`` loads code or pickles or runs commands (:data:`DENIED_MODULES`)."""
    module = getattr(obj, "__module__", None) or getattr(obj, "__name__", "")
    return any(module == m or str(module).startswith(m + ".") for m in DENIED_MODULES)


def distillkit_object(obj: object) -> bool:
    """Whether ``obj`` is defined in distillkit (a factory whose arguments distillkit owns)."""
    return str(getattr(obj, "__module__", "")).split(".")[0] == "distillkit"
