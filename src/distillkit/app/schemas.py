"""Typed schemas for the most-overridden config groups, registered in Hydra's ConfigStore.

Each option file of ``loss/``, ``trainer/``, ``data/`` and ``general/`` starts from its schema
(``defaults: [<group>_schema, _self_]``), and the top-level ``export`` section from
``export_schema``, so a typo'd key (``loss.temprature``) or a wrong type
(``loss.alpha=high``) fails at compose time with a message naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional  # noqa: UP035 - OmegaConf needs typing generics

from hydra.core.config_store import ConfigStore

from distillkit.engine.settings import EngineSettings
from distillkit.general.settings import GeneralSettings


@dataclass
class LossSchema:
    """``total = prediction_weight * [alpha * kd(T) + (1 - alpha) * hard] + intermediate``.

    See :mod:`distillkit.losses.composite` for the one weighting schema.
    """

    _target_: str = "distillkit.losses.DistillationLoss"
    temperature: float = 1.0
    alpha: float = 0.5
    kd: Any = None
    hard: Any = None
    intermediate: Any = None  # name -> term ({_target_, weight}), over the layer mapping
    projection: Any = None  # partial (student_width, teacher_width) -> module
    prediction_weight: float = 1.0
    intermediate_phase: float = 0.0
    intermediate_decay: str = "constant"  # constant | linear (intermediate weights 1 -> 0)
    expertise_weights: bool = False  # Meta-KD: weigh examples by the teacher's gold-label prob.


@dataclass
class TrainerSchema(EngineSettings):
    """Loop settings plus the optimizer and LR schedule (both ``_partial_`` factories).

    ``teacher_cache``: logit-only losses read the teacher's logits from a disk cache computed
    once per teacher + data + preprocessing (``<cache>/teacher_outputs/``) instead of running
    the teacher every step; layer-wise losses read the teacher's hidden states and attention
    maps from a feature cache (``<cache>/teacher_features/``) stored as
    ``feature_cache_dtype`` (fp32 | fp16 | bf16 | int8), unless it would exceed
    ``feature_cache_max_gb`` (then the teacher runs live; 0 turns the feature cache off).
    See distillkit.teachers.features.

    ``teacher_topk`` (task=causal_lm): 0 runs the dense teacher live every step; ``k`` >= 1
    caches, in one teacher pass, its ``k`` most likely next tokens per training token (their
    log-probabilities stored as ``teacher_topk_dtype``, fp16 | fp32, plus the remaining mass;
    ``<cache>/teacher_topk/``) and the loop reads them instead; ``teacher_topk_samples`` m > 0
    stores m draws from the teacher's other tokens instead of their total mass (unbiased
    forward-KL targets). See distillkit.causal.targets.

    ``checkpoint_every_steps``: write a resumable checkpoint to ``<run>/checkpoints/`` every N
    optimizer steps (and after each evaluation); null: no checkpoints. ``keep_checkpoints``:
    how many of the newest to keep (the best one is kept as well). See distillkit.runtime.checkpoint.

    ``freeze``: parameter-name patterns of the student kept at their initial values
    (distillkit.engine.freeze_parameters); empty: the whole student trains.
    """

    teacher_cache: bool = True
    feature_cache_dtype: str = "fp16"
    feature_cache_max_gb: float = 16.0
    teacher_topk: int = 0
    teacher_topk_dtype: str = "fp16"
    teacher_topk_samples: int = 0
    freeze: List[str] = field(default_factory=list)  # noqa: UP006
    checkpoint_every_steps: Optional[int] = None  # noqa: UP045
    keep_checkpoints: int = 2

    optimizer: Any = field(default_factory=lambda: {
        "_target_": "torch.optim.AdamW", "_partial_": True, "lr": 5e-5, "weight_decay": 0.01})
    scheduler: Any = field(default_factory=lambda: {
        "_target_": "distillkit.engine.schedules.warmup_schedule", "_partial_": True,
        "name": "linear", "warmup_ratio": 0.1})


@dataclass
class DataSchema:
    """Keys of :class:`distillkit.data.TextClassificationData`."""

    _target_: str = "distillkit.data.TextClassificationData"
    source: Any = None
    text_column: str = "text"
    text_pair_column: Optional[str] = None  # noqa: UP045
    label_column: str = "label"
    labels: Optional[List[str]] = None  # noqa: UP006, UP045
    drop_labels: List[str] = field(default_factory=list)  # noqa: UP006
    train_split: str = "train"
    eval_split: str = "validation"
    test_split: Optional[str] = None  # noqa: UP045
    max_length: int = 128
    max_train_samples: Optional[int] = None  # noqa: UP045
    max_eval_samples: Optional[int] = None  # noqa: UP045
    transfer_split: Optional[str] = None  # noqa: UP045
    max_transfer_samples: Optional[int] = None  # noqa: UP045
    id_column: Optional[str] = None  # noqa: UP045 - null: row index within the split
    domain_column: Optional[str] = None  # noqa: UP045 - multi-domain data (Meta-KD)
    domain: Optional[str] = None  # noqa: UP045 - target domain: every split keeps its rows
    # Splits the source may lack (data=files; distillkit.data.splits, docs/own-data.md):
    validation_fraction: float = 0.0  # no eval split: carve this share of train (0: error)
    split_seed: int = 0  # seed of that stratified carving (not trainer.seed)
    optional_test: bool = False  # no test split: the final evaluation is on the eval split
    # bad data (distillkit.data.checks): local files' text encoding; drop empty texts (else
    # refused with their rows)
    encoding: str = "utf-8"
    drop_empty: bool = False


@dataclass
class Seq2SeqLossSchema:
    """Word-level / sequence-level KD for ``task=seq2seq``
    (:class:`distillkit.seq2seq.TokenDistillationLoss`):
    ``total = alpha * T^2 * KD + (1 - alpha) * CE`` per target token; ``sequence_kd`` (null:
    none) holds the seq-KD stage's generation settings."""

    _target_: str = "distillkit.seq2seq.TokenDistillationLoss"
    temperature: float = 1.0
    alpha: float = 0.5
    kd: Any = None
    sequence_kd: Any = None  # {num_beams, n_best, max_new_tokens, batch_size, mix_original}


@dataclass
class StepByStepSchema:
    """Distilling step by step (:class:`distillkit.seq2seq.StepByStepLoss`):
    ``total = alpha * label_loss + (1 - alpha) * rationale_loss``."""

    _target_: str = "distillkit.seq2seq.StepByStepLoss"
    alpha: float = 0.5
    label_prefix: str = "predict: "
    rationale_prefix: str = "explain: "
    label_type: str = "gt"  # gt | llm
    rationale_source: str = "data"  # data | teacher


@dataclass
class Seq2SeqDataSchema:
    """Keys of :class:`distillkit.seq2seq.Seq2SeqData` (``task=seq2seq``), plus
    ``eval_num_beams`` (beam size of the final evaluation's generation)."""

    _target_: str = "distillkit.seq2seq.Seq2SeqData"
    source: Any = None
    source_column: str = "source"
    target_column: str = "target"
    rationale_column: Optional[str] = None  # noqa: UP045
    llm_label_column: Optional[str] = None  # noqa: UP045
    llm_rationale_column: Optional[str] = None  # noqa: UP045
    source_prefix: str = ""
    train_split: str = "train"
    eval_split: str = "validation"
    test_split: Optional[str] = None  # noqa: UP045
    max_source_length: int = 128
    max_target_length: int = 64
    max_train_samples: Optional[int] = None  # noqa: UP045
    max_eval_samples: Optional[int] = None  # noqa: UP045
    metric: str = "exact_match"  # exact_match | bleu | chrf
    eval_num_beams: int = 1
    encoding: str = "utf-8"  # local files' text encoding (distillkit.data.checks)


@dataclass
class CausalGenerationSchema:
    """``loss.generation`` of ``task=causal_lm`` (:class:`distillkit.causal.generation.
    CausalGeneration`): how on-policy (``loss.lmbda``) and seq-KD (``loss.seq_kd``) responses
    are generated."""

    max_new_tokens: int = 32
    temperature: float = 1.0  # the student's sampling temperature (on-policy batches)
    num_beams: int = 1  # the teacher's decoding for seq_kd (1: greedy)
    batch_size: int = 16  # prompts per generate call (seq_kd)


@dataclass
class CausalLossSchema:
    """Token-level KD of a causal LM (``task=causal_lm``, :func:`distillkit.causal.losses.
    causal_kd`): ``total = alpha * scale(T) * D + (1 - alpha) * CE`` per learnt token."""

    _target_: str = "distillkit.causal.losses.causal_kd"
    divergence: str = "fkl"  # fkl | rkl | jsd | tvd | skl | srkl
    temperature: float = 1.0
    alpha: float = 0.5
    beta: float = 0.5  # generalised JSD's mixture (divergence=jsd)
    skew: float = 0.1  # skew KL / skew reverse KL's mixture (skl, srkl)
    chunk_tokens: int = 256  # tokens per chunk of the loss (memory against speed)
    lmbda: float = 0.0  # GKD: share of batches on the student's own samples (0: off)
    seq_kd: bool = False  # sequence-level KD: train on the teacher's decoded responses
    generation: CausalGenerationSchema = field(default_factory=lambda: CausalGenerationSchema())


@dataclass
class CausalHiddenLossSchema(CausalLossSchema):
    """``loss=causal_hidden`` (:func:`distillkit.causal.hidden_loss.causal_hidden`): the token
    loss plus ``hidden_weight`` * a hidden-state MSE over the layer mapping."""

    _target_: str = "distillkit.causal.hidden_loss.causal_hidden"
    hidden_weight: float = 1.0  # weight of the hidden-state term (0: none)
    projection: Any = None  # partial (student_width, teacher_width) -> module


@dataclass
class CausalDataSchema:
    """Keys of :class:`distillkit.causal.data.CausalLMData` (``task=causal_lm``)."""

    _target_: str = "distillkit.causal.data.CausalLMData"
    source: Any = None
    format: str = "text"  # text | pairs | chat
    text_column: str = "text"
    prompt_column: str = "prompt"
    response_column: str = "response"
    messages_column: str = "messages"
    separator: str = " "
    chat_template: bool = False  # format=pairs through the tokenizer's chat template
    train_split: str = "train"
    eval_split: str = "validation"
    test_split: Optional[str] = "test"  # noqa: UP045
    max_length: int = 128
    max_train_examples: Optional[int] = None  # noqa: UP045
    max_eval_examples: Optional[int] = None  # noqa: UP045
    validation_fraction: float = 0.1
    split_seed: int = 0
    num_generations: int = 8  # held-out prompts both models answer (generations.jsonl)
    max_new_tokens: int = 32
    encoding: str = "utf-8"  # local files' text encoding (distillkit.data.checks)


@dataclass
class ExportSchema:
    """The ``export`` section: what ``mode=export_logits`` writes (distillkit.teachers.export).

    ``split``: a split role (train, eval, test, transfer) or a split name of the data;
    ``path``: the file (null: ``<run dir>/teacher_logits_<split>.<ext>``); ``format``: tsv or
    parquet (null: from the extension of ``path``; tsv without one); ``overwrite``: replace an
    existing file at ``path`` (false: refused before any teacher work).
    """

    split: str = "train"
    path: Optional[str] = None  # noqa: UP045
    format: Optional[str] = None  # noqa: UP045
    overwrite: bool = False


def register_schemas() -> None:
    """Stores the schemas as ``<group>/<group>_schema`` (idempotent), and ``export_schema``
    (the typed top-level ``export`` section)."""
    cs = ConfigStore.instance()
    cs.store(name="export_schema", node=ExportSchema, package="export")
    cs.store(group="loss", name="loss_schema", node=LossSchema)
    cs.store(group="trainer", name="trainer_schema", node=TrainerSchema)
    cs.store(group="data", name="data_schema", node=DataSchema)
    cs.store(group="general", name="general_schema", node=GeneralSettings)
    cs.store(group="loss", name="seq2seq_loss_schema", node=Seq2SeqLossSchema)
    cs.store(group="loss", name="step_by_step_schema", node=StepByStepSchema)
    cs.store(group="data", name="seq2seq_data_schema", node=Seq2SeqDataSchema)
    cs.store(group="loss", name="causal_loss_schema", node=CausalLossSchema)
    cs.store(group="loss", name="causal_hidden_loss_schema", node=CausalHiddenLossSchema)
    cs.store(group="data", name="causal_data_schema", node=CausalDataSchema)
