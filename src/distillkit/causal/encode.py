"""One example of causal-LM data as token ids: plain text, a prompt/response pair, or a chat.

Every example becomes an :class:`Encoded`: its ``input_ids``, ``labels`` aligned with them
(``-100`` where nothing is learnt: prompt tokens, user/system turns) and ``prompt_length``
(the tokens before the last response: what an on-policy step would sample from).

* ``text``: every token is learnt (``prompt_length`` 0); the tokenizer's EOS token ends it;
* ``pairs``: ``prompt`` then ``separator + response`` then EOS; only the response and its EOS
  are learnt. With ``chat_template=true`` a pair is a two-turn chat instead;
* ``chat``: a ``messages`` list (``{"role", "content"}``) rendered by the tokenizer's own chat
  template (``apply_chat_template``, as the model defines it); the tokens of every assistant
  turn are learnt, found as the difference between the conversation rendered up to the turn's
  start (with the generation prompt) and up to its end.

Bad rows raise :class:`~distillkit.errors.DataError` naming the split, the row (counted from 0)
and the column, with a fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from distillkit.errors import DataError

FORMATS = ("text", "pairs", "chat")
IGNORE = -100


@dataclass
class Encoded:
    """One tokenised example (see the module docstring)."""

    input_ids: list[int]
    labels: list[int]
    prompt_length: int


def _where(split: str, row: int, column: str) -> str:
    return f"split '{split}' row {row}, column '{column}'"


def _text(value: Any, split: str, row: int, column: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{_where(split, row, column)}: expected text, got "
                        f"{type(value).__name__} {value!r}; write it as a quoted string")
    if not value.strip():
        raise DataError(f"{_where(split, row, column)} is empty; fill it or remove the row")
    return value


def _ids(tokenizer: PreTrainedTokenizerBase, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _eos(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]


def encode_text(tokenizer: PreTrainedTokenizerBase, text: Any, split: str, row: int,
                column: str) -> Encoded:
    """Plain text: every token learnt."""
    ids = _ids(tokenizer, _text(text, split, row, column), True) + _eos(tokenizer)
    return Encoded(ids, list(ids), 0)


def encode_pair(tokenizer: PreTrainedTokenizerBase, prompt: Any, response: Any,
                separator: str, split: str, row: int, columns: tuple[str, str]) -> Encoded:
    """``prompt`` + ``separator + response`` + EOS; the response and EOS learnt."""
    head = _ids(tokenizer, _text(prompt, split, row, columns[0]), True)
    tail = _ids(tokenizer, separator + _text(response, split, row, columns[1]), False)
    tail += _eos(tokenizer)
    return Encoded(head + tail, [IGNORE] * len(head) + tail, len(head))


def _check_messages(messages: Any, split: str, row: int, column: str) -> list[dict]:
    where = _where(split, row, column)
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: expected a non-empty list of messages "
                        '[{"role": "user", "content": ...}, {"role": "assistant", ...}], got '
                        f"{type(messages).__name__}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise DataError(f"{where}: message {i} is not an object with text 'role' and "
                            f"'content' ({message!r}); write it as "
                            '{"role": "user", "content": "..."}')
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant turn, so there is nothing "
                        'to learn; add a {"role": "assistant", "content": ...} message or '
                        "remove the row")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], prompt: bool) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True,
                                              add_generation_prompt=prompt))


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: Any, split: str, row: int,
                column: str) -> Encoded:
    """A conversation through the tokenizer's chat template; assistant turns learnt.

    Raises:
        DataError: a malformed messages list, or one without an assistant turn.
    """
    messages = _check_messages(messages, split, row, column)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    messages = messages[:last + 1]  # turns after the last answer teach nothing
    ids = _render(tokenizer, messages, prompt=False)
    labels = [IGNORE] * len(ids)
    prompt_length = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _common(_render(tokenizer, messages[:i], prompt=True), ids) if i else 0
        end = _common(_render(tokenizer, messages[:i + 1], prompt=False), ids)
        labels[start:end] = ids[start:end]
        prompt_length = start
    return Encoded(ids, labels, prompt_length)
