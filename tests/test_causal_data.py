"""Causal-LM data (task=causal_lm): response-only labels for pairs and chats, the next-token
batch, row ids and prompt lengths, the eval split carved from train, and bad rows refused."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset, DatasetDict

from distillkit.causal.data import PROMPT_LENGTH, ROW, CausalLMData
from distillkit.causal.tiny import tiny_causal_tokenizer
from distillkit.errors import ConfigError, DataError

TOK = tiny_causal_tokenizer()


def ids(text: str) -> list[int]:
    """The tiny tokenizer is word-level: one id per word or punctuation mark."""
    vocab = TOK.get_vocab()
    return [vocab[w] for w in text.split()]


EOS = ids("<|im_end|>")[0]


def data_of(rows: list[dict], **kwargs) -> CausalLMData:
    splits = DatasetDict({"train": Dataset.from_list(rows), "validation": Dataset.from_list(rows)})
    data = CausalLMData(lambda: splits, **kwargs)
    data.tokenize(TOK)
    return data


def test_pairs_learn_the_response_and_eos_only():
    data = data_of([{"prompt": "where is the dog ?", "response": "in the park ."}],
                   format="pairs", test_split=None)
    ex = data.encoded["train"][0]
    assert ex.input_ids == ids("where is the dog ? in the park .") + [EOS]
    assert ex.labels == [-100] * 5 + ids("in the park .") + [EOS]
    assert ex.prompt_length == 5


def test_chat_learns_every_assistant_turn_through_the_template():
    messages = [{"role": "system", "content": "answer"},
                {"role": "user", "content": "where is the dog ?"},
                {"role": "assistant", "content": "in the park ."},
                {"role": "user", "content": "and the cat ?"},
                {"role": "assistant", "content": "in the house ."}]
    data = data_of([{"messages": messages}], format="chat", test_split=None)
    ex = data.encoded["train"][0]
    # ChatML as the tiny template renders it: <|im_start|>role content <|im_end|> per turn
    text = ("<|im_start|> system answer <|im_end|> <|im_start|> user where is the dog ? "
            "<|im_end|> <|im_start|> assistant in the park . <|im_end|> <|im_start|> user and "
            "the cat ? <|im_end|> <|im_start|> assistant in the house . <|im_end|>")
    assert ex.input_ids == ids(text)
    learnt = [t for t, y in zip(ex.input_ids, ex.labels, strict=True) if y != -100]
    assert learnt == ids("in the park . <|im_end|> in the house . <|im_end|>")
    assert ex.input_ids[ex.prompt_length - 2:ex.prompt_length] == ids("<|im_start|> assistant")
    assert ex.input_ids[ex.prompt_length:] == ids("in the house . <|im_end|>")


def test_pairs_with_chat_template_render_a_user_and_an_assistant_turn():
    data = data_of([{"prompt": "where is the dog ?", "response": "in the park ."}],
                   format="pairs", chat_template=True, test_split=None)
    ex = data.encoded["train"][0]
    learnt = [t for t, y in zip(ex.input_ids, ex.labels, strict=True) if y != -100]
    assert learnt == ids("in the park . <|im_end|>")
    assert ex.input_ids[:3] == ids("<|im_start|> user where")


def test_text_learns_every_token_and_batches_are_shifted_and_padded():
    data = data_of([{"text": "the dog runs ."}, {"text": "a cat sits in the house ."}],
                   format="text", test_split=None)
    batch = next(iter(data.loader("train", batch_size=2)))
    first = ids("the dog runs .") + [EOS]
    assert batch["input_ids"][0, :5].tolist() == first
    assert batch["attention_mask"][0].tolist() == [1] * 5 + [0] * 3
    # position t predicts token t + 1; the last real position and padding predict nothing
    assert batch["labels"][0].tolist() == first[1:] + [-100] * 4
    assert batch["labels"][1].tolist() == (ids("a cat sits in the house .") + [EOS])[1:] + [-100]
    assert batch[PROMPT_LENGTH].tolist() == [0, 0]
    assert batch[ROW].tolist() == [0, 1]
    assert data.row_ids("train") == ["train/0", "train/1"]


def test_prompt_lengths_and_rows_follow_a_shuffled_batch():
    rows = [{"prompt": "the " * (i + 1), "response": "dog ."} for i in range(6)]
    data = data_of(rows, format="pairs", test_split=None)
    batch = next(iter(data.loader("train", batch_size=6, shuffle=True, seed=3)))
    assert sorted(batch[ROW].tolist()) == list(range(6)) and batch[ROW].tolist() != list(range(6))
    assert batch[PROMPT_LENGTH].tolist() == [r + 1 for r in batch[ROW].tolist()]


def test_max_length_cuts_and_drops_examples_with_nothing_to_learn(caplog):
    rows = [{"prompt": "the dog", "response": "runs ."}, {"prompt": "the " * 10, "response": "a"}]
    data = data_of(rows, format="pairs", test_split=None, max_length=4)
    assert len(data.encoded["train"]) == 1
    assert data.encoded["train"][0].input_ids == ids("the dog runs .")
    assert "nothing to learn" in caplog.text


def test_eval_split_is_carved_from_train_when_absent():
    rows = [{"text": f"the dog runs {i} ."} for i in range(10)]
    data = CausalLMData(lambda: DatasetDict({"train": Dataset.from_list(rows)}),
                        validation_fraction=0.2, split_seed=1)
    data.tokenize(TOK)
    assert len(data.encoded["train"]) == 8 and len(data.encoded["eval"]) == 2
    assert not data.has_split("test")
    seen = {tuple(e.input_ids) for role in ("train", "eval") for e in data.encoded[role]}
    assert len(seen) == 10
    ids_ = data.row_ids("train") + data.row_ids("eval")
    assert sorted(ids_, key=lambda r: int(r.split("/")[1])) == [f"train/{i}" for i in range(10)]
    assert data.encoded["eval"][0].input_ids[3] == ids(data.row_ids("eval")[0].split("/")[1])[0]


@pytest.mark.parametrize(("fmt", "row", "phrases"), [
    ("text", {"text": "   "}, ["split 'train' row 0", "column 'text'", "is empty"]),
    ("text", {"text": 3}, ["row 0", "column 'text'", "expected text"]),
    ("text", {"body": "the dog"}, ["column 'text' (data.text_column)", "body",
                                   "data.text_column"]),
    ("chat", {"messages": [{"role": "user", "content": "where is the dog ?"}]},
     ["row 0", "no assistant turn", "add a"]),
    ("chat", {"messages": "the dog"}, ["row 0", "list of messages"]),
    ("chat", {"messages": [{"role": "user"}]}, ["row 0", "message 0", "'content'"]),
])
def test_bad_rows_name_split_row_and_column(fmt, row, phrases):
    splits = DatasetDict({"train": Dataset.from_list([row]),
                          "validation": Dataset.from_list([row])})
    data = CausalLMData(lambda: splits, format=fmt)
    with pytest.raises(DataError) as err:
        data.tokenize(TOK)
    message = str(err.value)
    assert all(p in message for p in phrases), message


def test_a_carved_eval_row_is_named_by_its_row_in_train():
    rows = [{"text": f"the dog runs {i} ."} for i in range(10)]
    rows[7]["text"] = " "
    data = CausalLMData(lambda: DatasetDict({"train": Dataset.from_list(rows)}),
                        validation_fraction=0.5, split_seed=0)
    with pytest.raises(DataError, match="split 'train' row 7,"):
        data.tokenize(TOK)


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="data.format='csv'"):
        CausalLMData(lambda: None, format="csv")
    with pytest.raises(ConfigError, match="max_length"):
        CausalLMData(lambda: None, max_length=1)


def test_batch_keys_for_the_loss_never_reach_the_model():
    from distillkit.engine.evaluate import model_inputs
    data = data_of([{"text": "the dog runs ."}], format="text", test_split=None)
    batch = next(iter(data.loader("train", batch_size=1)))
    assert set(model_inputs(batch, torch.device("cpu"))) == {"input_ids", "attention_mask"}


def test_files_or_hub_reads_files_or_a_hub_name(tmp_path, monkeypatch):
    from distillkit.causal import sources

    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "the dog runs ."}\n')
    assert sources.files_or_hub(train=str(train))["train"]["text"] == ["the dog runs ."]
    asked = []
    monkeypatch.setattr(sources, "hub_dataset", lambda *a: asked.append(a) or DatasetDict())
    sources.files_or_hub(hub="wikitext", hub_config="wikitext-2-raw-v1")
    assert asked == [("wikitext", "wikitext-2-raw-v1", None)]
    with pytest.raises(DataError, match="set data.source.train=<file>.*data.source.hub="):
        sources.files_or_hub()
    with pytest.raises(DataError, match="not both"):
        sources.files_or_hub(train=str(train), hub="wikitext")


@pytest.mark.parametrize("shuffle", [True, False])
def test_sharded_loaders_split_each_global_batch_of_the_one_process_loader(shuffle):
    """``shard=(rank, 2)``: every global batch of the one-process loader (same seed) split
    into two disjoint halves; with shuffling a last batch smaller than the ranks is skipped."""
    rows = [{"prompt": "where is the dog ?", "response": "the dog sits in the park ."}] * 13
    data = data_of(rows, format="pairs")
    one = [b[ROW].tolist() for b in data.loader("train", 4, shuffle=shuffle, seed=5)]
    ranks = [[b[ROW].tolist() for b in data.loader("train", 4, shuffle=shuffle, seed=5,
                                                    shard=(r, 2))] for r in (0, 1)]
    kept = one[:-1] if shuffle else one  # 13 rows: a last global batch of 1
    assert len(ranks[0]) == len(kept) and len(ranks[1]) == (len(kept) if shuffle else 3)
    for i, batch in enumerate(kept):
        halves = [ranks[0][i], ranks[1][i] if i < len(ranks[1]) else []]
        assert sorted(halves[0] + halves[1]) == sorted(batch)
        assert not set(halves[0]) & set(halves[1])
        assert len(halves[0]) == (len(batch) + 1) // 2


def test_causal_training_batches_are_each_ranks_share():
    """CausalLMTask.train_loader hands the loader the run's shard."""
    from types import SimpleNamespace

    from distillkit.runtime.distributed import DistEnv
    from distillkit.tasks.causal_lm import CausalLMTask

    rows = [{"prompt": "where is the dog ?", "response": "the dog sits ."}] * 8
    task = CausalLMTask("causal_lm", {"distil": []})
    sizes = {}
    for world in (1, 2):
        ctx = SimpleNamespace(data=data_of(rows, format="pairs"), details={},
                              cached_logits=False,
                              settings=SimpleNamespace(batch_size=4, seed=0),
                              dist=DistEnv(rank=0, world_size=world, enabled=world > 1))
        sizes[world] = [len(b[ROW]) for b in task.train_loader(ctx)]
    assert sizes == {1: [4, 4], 2: [2, 2]}
