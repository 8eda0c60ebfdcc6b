"""A tiny offline word-level tokenizer with a chat template, and tiny Llamas for tests."""

from __future__ import annotations

import string
from functools import lru_cache

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from distillkit.causal.models import CausalBundle, build_llama
from distillkit.errors import ConfigError
from distillkit.models.tokenizers import TINY_MAX_POSITIONS, TINY_WORDS

# SmolLM2's special tokens and roles: unknown/end of text, start and end of a chat turn
UNK, BOS, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
TINY_CAUSAL_WORDS: tuple[str, ...] = TINY_WORDS + (
    "system", "user", "assistant", "what", "where", "who", "does", "do", "and", "of", "to",
    "capital", "france", "paris", "answer", "question",
)
# ChatML, as SmolLM2's template, with the turns separated by spaces (the tokenizer splits on them)
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}" + BOS + "{{ message['role'] }} {{ message['content'] }} "
    + EOS + " {% endfor %}{% if add_generation_prompt %}" + BOS + "assistant {% endif %}"
)


@lru_cache(maxsize=8)
def tiny_causal_tokenizer(words: tuple[str, ...] = TINY_CAUSAL_WORDS) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer built without any download.

    Vocabulary: ``<|endoftext|>`` (unknown), ``<|im_start|>`` (BOS), ``<|im_end|>`` (EOS and
    padding), then ``words``, digits and punctuation; any other word is ``<|endoftext|>``. It
    has a ChatML chat template, so ``apply_chat_template`` works, adds no BOS/EOS itself and,
    like a causal LM's tokenizer, returns no ``token_type_ids``.
    """
    vocab: dict[str, int] = {}
    for token in (UNK, BOS, EOS, *words, *string.digits, *string.punctuation):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(WordLevel(vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=UNK, bos_token=BOS, eos_token=EOS, pad_token=EOS,
        model_max_length=TINY_MAX_POSITIONS, model_input_names=["input_ids", "attention_mask"])
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def tiny_llama(
    num_layers: int = 2,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int | None = None,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    words: list[str] | None = None,
) -> CausalBundle:
    """A randomly initialised tiny Llama with :func:`tiny_causal_tokenizer` (no download).

    Args:
        num_layers: decoder layers.
        hidden_size: hidden width.
        intermediate_size: feed-forward width.
        num_heads: attention heads.
        num_kv_heads: key/value heads.
        vocab_size: output rows; default the tokenizer's length, more adds padding rows (as
            checkpoints padded to a multiple of 64 have).
        tie_word_embeddings: share the input embeddings with the output layer.
        seed: initialisation seed.
        words: whole-word vocabulary (default :data:`TINY_CAUSAL_WORDS`).

    Raises:
        ConfigError: a ``vocab_size`` below the tokenizer's length, or an impossible shape.
    """
    tokenizer = tiny_causal_tokenizer(tuple(words) if words is not None else TINY_CAUSAL_WORDS)
    rows = len(tokenizer) if vocab_size is None else int(vocab_size)
    if rows < len(tokenizer):
        raise ConfigError(f"teacher.vocab_size={rows} is below the tiny tokenizer's "
                          f"{len(tokenizer)} tokens; leave it unset or raise it")
    model = build_llama(
        tokenizer, vocab_size=rows, num_layers=num_layers, hidden_size=hidden_size,
        intermediate_size=intermediate_size, num_heads=num_heads, num_kv_heads=num_kv_heads,
        max_positions=TINY_MAX_POSITIONS, tie_word_embeddings=tie_word_embeddings, seed=seed,
        role="teacher")
    return CausalBundle(model=model, tokenizer=tokenizer,
                        name=f"tiny-llama-{num_layers}x{hidden_size}")
