"""A small offline WordPiece tokenizer for tests and the tiny generated setup."""

from __future__ import annotations

import string
import tempfile
from functools import lru_cache
from pathlib import Path

from transformers import BertTokenizerFast, PreTrainedTokenizerBase

TINY_MAX_POSITIONS = 128
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Whole-word entries of the tiny tokenizer: the words of the generated `data=tiny` task.
TINY_WORDS: tuple[str, ...] = (
    "a", "the", "man", "woman", "dog", "cat", "child", "girl", "boy", "bird", "is", "are",
    "runs", "sits", "eats", "plays", "sleeps", "reads", "walks", "jumps", "in", "on", "park",
    "house", "street", "garden", "beach", "room", "red", "blue", "big", "small", "happy", "old",
    "yes", "true", "indeed", "surely", "no", "not", "never", "false", "maybe", "perhaps",
    "might", "possibly",
)


def tiny_vocab(words: tuple[str, ...] = ()) -> list[str]:
    """Vocabulary: special tokens, ``words``, then characters and their ``##`` continuations.

    Any lower-case ASCII text tokenises without ``[UNK]`` (it falls back to characters); the
    listed words are single tokens.
    """
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = SPECIAL_TOKENS + list(words) + chars + [f"##{c}" for c in chars]
    seen: set[str] = set()
    return [t for t in vocab if not (t in seen or seen.add(t))]


@lru_cache(maxsize=8)
def tiny_tokenizer(words: tuple[str, ...] = TINY_WORDS) -> PreTrainedTokenizerBase:
    """Builds an uncased BERT WordPiece tokenizer over :func:`tiny_vocab` without any download."""
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(tiny_vocab(words)) + "\n", encoding="utf-8")
        # 128: the tiny models' position limit (so a student sized from the tokenizer alone,
        # as with an offline teacher, gets the same shape as one sized from the tiny teacher)
        return BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True,
                                 model_max_length=TINY_MAX_POSITIONS)
