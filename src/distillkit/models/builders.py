"""Models built from a config (random initialisation): the tiny teachers and BERT students."""

from __future__ import annotations

from transformers import (
    BertConfig,
    BertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    PreTrainedModel,
)

from distillkit.errors import ConfigError
from distillkit.models.bundle import ModelBundle
from distillkit.models.tokenizers import TINY_MAX_POSITIONS, TINY_WORDS, tiny_tokenizer

ARCHITECTURES = {"bert": (BertConfig, BertForSequenceClassification),
                 "electra": (ElectraConfig, ElectraForSequenceClassification)}


def _bert_classifier(
    *,
    architecture: str = "bert",
    vocab_size: int,
    num_layers: int,
    hidden_size: int,
    num_heads: int,
    intermediate_size: int,
    labels: list[str],
    max_position_embeddings: int = 512,
    pad_token_id: int = 0,
    dropout: float = 0.1,
) -> PreTrainedModel:
    """A randomly initialised classifier of a BERT-like ``architecture`` (``bert``, ``electra``:
    the same inputs, token type ids included; ELECTRA has no pooler and its own head)."""
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"architecture='{architecture}' is not one of "
                          f"{', '.join(ARCHITECTURES)}")
    if hidden_size % num_heads:
        raise ConfigError(
            f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}; "
            "pick a head count that divides the hidden size"
        )
    config_class, model_class = ARCHITECTURES[architecture]
    extra = {"embedding_size": hidden_size} if architecture == "electra" else {}
    config = config_class(
        **extra,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=pad_token_id,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    return model_class(config)


def tiny_teacher(
    num_layers: int = 2,
    hidden_size: int = 32,
    num_heads: int = 2,
    intermediate_size: int = 64,
    words: list[str] | None = None,
    architecture: str = "bert",
    *,
    labels: list[str],
) -> ModelBundle:
    """A randomly initialised tiny BERT (or ELECTRA) classifier with an offline tokenizer.

    Args:
        num_layers: transformer layers.
        hidden_size: hidden width.
        num_heads: attention heads.
        intermediate_size: feed-forward width.
        words: whole-word vocabulary entries of the tokenizer (default: the generated
            ``data=tiny`` task's words; any other text falls back to characters).
        architecture: ``bert`` or ``electra`` (same tokenizer and inputs, another model).
        labels: label names (supplied by the run from the data).
    """
    tokenizer = tiny_tokenizer(tuple(words) if words is not None else TINY_WORDS)
    model = _bert_classifier(
        architecture=architecture,
        vocab_size=len(tokenizer),
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        intermediate_size=intermediate_size,
        labels=labels,
        max_position_embeddings=TINY_MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
    )
    return ModelBundle(model=model, tokenizer=tokenizer, name=f"tiny-{architecture}-{num_layers}x{hidden_size}")


def bert_student(
    num_layers: int,
    hidden_size: int,
    num_heads: int,
    intermediate_size: int,
    dropout: float = 0.1,
    *,
    teacher: ModelBundle,
    labels: list[str],
) -> ModelBundle:
    """A randomly initialised BERT student that shares the teacher's tokenizer and vocabulary.

    ``bert4l`` is the TinyBERT-4 shape (Jiao et al., 2020): 4 layers, hidden 312, 12 heads,
    intermediate 1200.

    Args:
        num_layers: transformer layers.
        hidden_size: hidden width.
        num_heads: attention heads.
        intermediate_size: feed-forward width.
        dropout: hidden and attention dropout.
        teacher: the teacher bundle (its tokenizer, vocabulary size and position limit are
            reused; an offline teacher's come from its tokenizer).
        labels: label names.
    """
    if teacher.model is not None:
        tconf = teacher.model.config
        vocab_size = int(tconf.vocab_size)
        max_positions = int(getattr(tconf, "max_position_embeddings", 512))
    else:  # an offline teacher has only a tokenizer: size the student from it
        vocab_size = len(teacher.tokenizer)
        limit = int(teacher.tokenizer.model_max_length)
        max_positions = limit if 0 < limit <= 8192 else 512  # HF's "no limit" is ~1e30
    model = _bert_classifier(
        vocab_size=vocab_size,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        intermediate_size=intermediate_size,
        labels=labels,
        max_position_embeddings=max_positions,
        pad_token_id=teacher.tokenizer.pad_token_id or 0,
        dropout=dropout,
    )
    return ModelBundle(
        model=model,
        tokenizer=teacher.tokenizer,
        name=f"bert-{num_layers}L-{hidden_size}H (random init)",
    )
