"""Seq2seq teachers and students: T5 configs from scratch, BERT2BERT, any hub seq2seq model.

Every builder returns a :class:`~distillkit.models.ModelBundle` whose model is an
``AutoModelForSeq2SeqLM``-style model (``T5ForConditionalGeneration``,
``EncoderDecoderModel``, BART, Marian, ...) with ``pad_token_id``, ``eos_token_id`` and
``decoder_start_token_id`` set for its tokenizer. Students are sized from their teacher's
tokenizer (``teacher=...``), so both models always share one vocabulary.

Tokenizers without the hub (``tokenizer`` key of the from-scratch teachers):

* ``arith``: an uncased WordPiece vocabulary of the generated arithmetic task's words (every
  number 0-999 one token; any other lower-case text falls back to characters), ~1,200 entries:
  softmaxes 25x cheaper than BERT's 30,522, which is what makes CPU runs short;
* ``minilm6``: the packaged all-MiniLM-L6-v2 WordPiece (30,522 entries, BERT uncased);
* any hub name or local directory (``AutoTokenizer``).

BERT-style tokenizers have no end-of-sequence token: ``[SEP]`` ends targets and ``[CLS]``
starts the decoder.
"""

from __future__ import annotations

import logging
import tempfile

from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    EncoderDecoderModel,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
)

from distillkit.errors import ConfigError, ModelError
from distillkit.models import ModelBundle
from distillkit.models.hf import _not_loaded
from distillkit.models.tokenizers import tiny_tokenizer
from distillkit.runtime.assets import asset_path
from distillkit.seq2seq.arith import WORDS

log = logging.getLogger(__name__)


# Seq2seq models take no segment ids: BERT vocabularies' tokenizers must not produce them, or
# ``model.generate(**tokenizer(text))`` on the exported model fails.
INPUT_NAMES = ["input_ids", "attention_mask"]


def seq2seq_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """``arith`` (the task's small WordPiece), ``minilm6`` (packaged) or a hub name/path."""
    if name == "arith":
        with tempfile.TemporaryDirectory() as tmp:
            tiny_tokenizer(WORDS).save_pretrained(tmp)
            return AutoTokenizer.from_pretrained(tmp, model_input_names=INPUT_NAMES)
    path = str(asset_path("minilm6")) if name == "minilm6" else name
    try:
        return AutoTokenizer.from_pretrained(path, model_input_names=INPUT_NAMES)
    except Exception as exc:  # noqa: BLE001 - hub/network/file errors become one line
        raise _not_loaded("teacher.tokenizer", name, exc) from exc


def special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """``pad_token_id``, ``eos_token_id`` (``[SEP]`` for BERT vocabularies) and
    ``decoder_start_token_id`` (``[CLS]`` for BERT vocabularies, else the pad token, as T5)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None \
        else tokenizer.sep_token_id
    if eos is None:
        raise ModelError("the tokenizer has neither an eos nor a sep token to end targets; "
                         "pick a seq2seq tokenizer (teacher.tokenizer=arith|minilm6|<hub name>)")
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else pad
    return {"pad_token_id": int(pad), "eos_token_id": int(eos),
            "decoder_start_token_id": int(start)}


def t5_from_scratch(
    num_layers: int = 2,
    num_decoder_layers: int | None = None,
    d_model: int = 64,
    d_ff: int = 256,
    num_heads: int = 4,
    d_kv: int | None = None,
    dropout: float = 0.1,
    tokenizer: str = "arith",
    *,
    teacher: ModelBundle | None = None,
) -> ModelBundle:
    """A randomly initialised T5 (``T5ForConditionalGeneration``) built from a config.

    Args:
        num_layers: encoder layers.
        num_decoder_layers: decoder layers (None: ``num_layers``).
        d_model: hidden width.
        d_ff: feed-forward width.
        num_heads: attention heads.
        d_kv: width per head (None: ``d_model // num_heads``).
        dropout: dropout rate.
        tokenizer: as a teacher, its tokenizer (``arith``, ``minilm6`` or a hub name/path);
            as a student the teacher's is used and this is ignored.
        teacher: the teacher bundle when built as a student (shares its tokenizer).
    """
    if d_kv is None:
        if d_model % num_heads:
            raise ConfigError(f"d_model={d_model} is not divisible by num_heads={num_heads}; "
                              "pick a head count that divides it, or set d_kv")
        d_kv = d_model // num_heads
    tok = teacher.tokenizer if teacher is not None else seq2seq_tokenizer(tokenizer)
    vocab = len(tok) if teacher is None or teacher.model is None \
        else int(teacher.model.config.get_text_config(decoder=True).vocab_size)
    config = T5Config(vocab_size=vocab, d_model=d_model, d_kv=d_kv, d_ff=d_ff,
                      num_layers=num_layers, num_decoder_layers=num_decoder_layers,
                      num_heads=num_heads, dropout_rate=dropout, feed_forward_proj="relu",
                      **special_ids(tok))
    model = T5ForConditionalGeneration(config)
    layers = f"{num_layers}+{num_decoder_layers or num_layers}"
    return ModelBundle(model=model, tokenizer=tok, name=f"t5-{layers}L-{d_model}d (scratch)")


def bert2bert_minilm(asset: str = "minilm6", *, teacher: ModelBundle | None = None
                     ) -> ModelBundle:
    """A BERT2BERT ``EncoderDecoderModel`` warm-started from the packaged all-MiniLM-L6-v2.

    Encoder and decoder both start from the MiniLM weights (Rothe et al., 2020, "Leveraging
    Pre-trained Checkpoints for Sequence Generation Tasks"); the decoder's cross-attention is
    new, so the teacher stage trains it on the task. Tokenizer: MiniLM's WordPiece.
    """
    del teacher  # a teacher option: it is never built as a student of another model
    path = str(asset_path(asset))
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(path, path)
    tok = AutoTokenizer.from_pretrained(path, model_input_names=INPUT_NAMES)
    ids = special_ids(tok)
    for key, value in ids.items():
        setattr(model.config, key, value)
        setattr(model.generation_config, key, value)
    model.config.vocab_size = model.config.decoder.vocab_size
    return ModelBundle(model=model, tokenizer=tok, name=f"bert2bert-{asset}")


def hub_seq2seq(name_or_path: str, revision: str | None = None, *,
                trust_remote_code: bool = False, teacher: ModelBundle | None = None,
                role: str = "teacher") -> ModelBundle:
    """Any ``AutoModelForSeq2SeqLM`` (T5, flan-T5, BART, Marian, ...) by hub name or path.

    Raises:
        ModelError: when it cannot be loaded (no network, unknown name), with the fix.
    """
    role = "student" if teacher is not None else role
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path, **kwargs)
        tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub/network/file errors become one line
        raise _not_loaded(role, name_or_path, exc) from exc
    if model.config.decoder_start_token_id is None:
        model.config.decoder_start_token_id = special_ids(tok)["decoder_start_token_id"]
    return ModelBundle(model=model, tokenizer=tok, name=name_or_path)


def decoder_start(model) -> int:
    """The model's decoder start token id (T5/BART/Marian/EncoderDecoder configs)."""
    start = getattr(model.config, "decoder_start_token_id", None)
    if start is None:
        start = getattr(model.generation_config, "decoder_start_token_id", None)
    if start is None:
        raise ModelError(f"{type(model).__name__} has no decoder_start_token_id; set it in "
                         "its config")
    return int(start)


def vocab_size(model) -> int:
    """Size of the model's output vocabulary."""
    return int(model.config.get_text_config(decoder=True).vocab_size)
