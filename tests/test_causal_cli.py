"""task=causal_lm through the real CLI: the tiny experiment end to end, a chat run from local
files with a saved teacher, bad data files and mixed options as one error line."""

from __future__ import annotations

import csv
import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from tests.conftest import one_error_line, run_cli

pytestmark = pytest.mark.e2e

FAST = ["trainer.max_steps=4", "trainer.eval_every_steps=2", "trainer.progress=false"]
CHAT = [{"role": "user", "content": "where is the dog ?"},
        {"role": "assistant", "content": "the dog sits in the park ."}]


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("causal")
    run_dir = tmp / "run"
    _ok(run_cli(["experiment=tiny_causal_lm", *FAST, f"hydra.run.dir={run_dir}"], cwd=tmp))
    return run_dir


def test_tiny_experiment_records_both_models_and_exports_a_loadable_student(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["task"] == "causal_lm" and metrics["metric"] == "neg_perplexity"
    for who in ("teacher", "student"):
        m = metrics[who]
        assert m["perplexity"] > 1 and m["neg_perplexity"] == -m["perplexity"]
        assert m["params"] > 0 and m["generation_tokens_per_second"] > 0
        assert m["tokens"] == metrics["data"]["tokens"]["test"] > 0
    assert 0 <= metrics["student"]["agreement"] <= 1 and metrics["student"]["kl"] > 0
    assert metrics["params"]["teacher"] > metrics["params"]["student"]
    assert metrics["stages"]["teacher"] == "as given"
    assert metrics["stages"]["teacher_targets"] == "skipped"
    assert set(metrics["train"]["last_losses"]) == {"kd", "hard", "total"}
    assert [e["step"] for e in metrics["train"]["evals"]] == [2, 4]
    assert metrics["objective"] == {"name": "final_neg_perplexity",
                                    "value": metrics["student"]["neg_perplexity"]}
    rows = [json.loads(line) for line in (tiny_run / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 4  # data.num_generations of data=tiny_causal
    assert all(set(r) == {"prompt", "reference", "teacher", "student"} for r in rows)
    assert rows[0]["prompt"].startswith("where is")
    model = AutoModelForCausalLM.from_pretrained(tiny_run / "student")
    tokenizer = AutoTokenizer.from_pretrained(tiny_run / "student")
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 16
    generate = pipeline("text-generation", model=model, tokenizer=tokenizer)
    out = generate("where is the dog ?", max_new_tokens=3, do_sample=False)
    assert out[0]["generated_text"].startswith("where is the dog ?")


def test_chat_files_with_a_saved_teacher_and_cross_entropy_alone(tiny_run, tmp_path):
    rows = [{"messages": [CHAT[0], {**CHAT[1], "content": f"the dog sits in the park {i} ."}]}
            for i in range(20)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    _ok(run_cli(["task=causal_lm", "teacher=causal_hub",
                 f"teacher.name_or_path={tiny_run / 'student'}", "student=tiny_llama_student",
                 "data=causal_chat", f"data.source.train={train}", "data.num_generations=2",
                 "data.max_new_tokens=4", "loss=causal_ce", *FAST, f"hydra.run.dir={run_dir}"],
                cwd=tmp_path))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data"]["format"] == "chat" and metrics["eval_split"] == "validation"
    assert metrics["data"]["examples"] == {"train": 18, "eval": 2}  # 10% carved from train
    assert set(metrics["train"]["last_losses"]) == {"hard", "total"}  # the teacher never ran
    assert metrics["loss"]["alpha"] == 0.0


BAD_FILES = {
    "malformed": ('{"text": "the dog"}\n{"text": "the cat\n', ["train.jsonl:2",
                                                               "malformed JSON line"]),
    "not_utf8": (b'{"text": "the caf\xe9"}\n', ["train.jsonl", "not valid utf-8",
                                                "data.encoding"]),
    "missing_column": ('{"body": "the dog runs ."}\n' * 4, ["column 'text'", "train.jsonl",
                                                             "data.text_column", "body"]),
    "empty_text": ('{"text": "the dog"}\n{"text": "  "}\n' * 4, ["train.jsonl", "row 1",
                                                                 "column 'text'", "is empty"]),
    "no_assistant": (json.dumps({"messages": [CHAT[0]]}) + "\n", ["train.jsonl", "row 0",
                                                                   "no assistant turn"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_data_file_is_one_error_line(tmp_path, case):
    content, phrases = BAD_FILES[case]
    train = tmp_path / "train.jsonl"
    (train.write_bytes if isinstance(content, bytes) else train.write_text)(content)
    data = "data=causal_chat" if case == "no_assistant" else "data=causal_text"
    proc = run_cli(["task=causal_lm", "teacher=tiny_llama", "student=tiny_llama_student",
                    "loss=causal_kd", data, f"data.source.train={train}",
                    f"data.source.validation={train}", f"hydra.run.dir={tmp_path / 'r'}"],
                   cwd=tmp_path)
    one_error_line(proc.returncode, proc.stdout + proc.stderr, phrases)


@pytest.mark.parametrize(("args", "phrases"), [
    (["experiment=tiny_causal_lm", "data=tiny"],
     ["is a classification option but task=causal_lm", "data=causal_text"]),
    (["teacher=tiny_llama", "student=tiny", "data=tiny"],
     ["teacher (distillkit.causal.tiny.tiny_llama) is a causal_lm option but "
      "task=classification", "add task=causal_lm"]),
])
def test_mixed_task_options_are_one_error_line(tmp_path, args, phrases):
    proc = run_cli([*args, f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    one_error_line(proc.returncode, proc.stdout + proc.stderr, phrases)


def test_a_killed_run_resumes_from_the_wrapped_students_checkpoint(tiny_run, tmp_path):
    """The loop checkpoints the lean wrapper; a run killed after step 3 resumes from step 2's
    checkpoint and ends exactly where the uninterrupted run did."""
    run_dir = tmp_path / "run"
    args = ["experiment=tiny_causal_lm", *FAST, "trainer.checkpoint_every_steps=2",
            f"hydra.run.dir={run_dir}"]
    killed = run_cli(args, cwd=tmp_path, env={"DISTILLKIT_TEST_KILL_AT_STEP": "3"})
    assert killed.returncode != 0 and not (run_dir / "metrics.json").exists()
    _ok(run_cli([*args, "resume=auto"], cwd=tmp_path))
    resumed = json.loads((run_dir / "metrics.json").read_text())
    plain = json.loads((tiny_run / "metrics.json").read_text())
    assert resumed["resumed_from"]["step"] == 2
    assert resumed["student"]["perplexity"] == pytest.approx(plain["student"]["perplexity"],
                                                             rel=1e-5)


def test_cached_top_k_targets_train_like_the_live_teacher_and_serve_later_runs(tiny_run,
                                                                               tmp_path):
    """k = the whole vocabulary (107 tiny tokens) stored in fp32 holds the dense teacher at
    T = 1, so the cached run ends where the live one did; a run with another loss.alpha reads
    the entry without a teacher pass; a smaller k is a new entry and is recorded as sparse."""
    run_dir, again, small = tmp_path / "full", tmp_path / "again", tmp_path / "k4"
    base = ["experiment=tiny_causal_lm", *FAST, "trainer.teacher_topk_dtype=fp32"]
    _ok(run_cli([*base, "trainer.teacher_topk=107", f"hydra.run.dir={run_dir}"], cwd=tmp_path))
    cached = json.loads((run_dir / "metrics.json").read_text())
    plain = json.loads((tiny_run / "metrics.json").read_text())
    assert cached["vocab_size"] == 107
    assert cached["stages"]["teacher_targets"] == {"train": "computed"}
    topk = cached["teacher_topk"]
    assert topk["source"] == "computed" and topk["k"] == 107 and topk["dtype"] == "fp32"
    assert topk["tokens"] > 0 and topk["bytes_per_token"] > 107 * 4  # ids + fp32 values
    assert cached["train"]["last_losses"]["kd"] == pytest.approx(
        plain["train"]["last_losses"]["kd"], rel=1e-4)
    assert cached["student"]["perplexity"] == pytest.approx(plain["student"]["perplexity"],
                                                            rel=1e-4)
    proc = _ok(run_cli([*base, "trainer.teacher_topk=107", "loss.alpha=0.7",
                        f"hydra.run.dir={again}"], cwd=tmp_path))
    reread = json.loads((again / "metrics.json").read_text())
    assert reread["stages"]["teacher_targets"] == {"train": "cache"}
    assert reread["teacher_topk"]["splits"]["train"]["key"] == topk["splits"]["train"]["key"]
    assert reread["teacher_topk"]["seconds"] == 0
    assert "teacher top-k targets read from the cache" in proc.stdout + proc.stderr
    _ok(run_cli([*base, "trainer.teacher_topk=4", f"hydra.run.dir={small}"], cwd=tmp_path))
    sparse = json.loads((small / "metrics.json").read_text())
    assert sparse["teacher_topk"]["source"] == "computed"
    assert sparse["teacher_topk"]["splits"]["train"]["key"] != topk["splits"]["train"]["key"]
    assert sparse["teacher_topk"]["bytes_per_token"] < topk["bytes_per_token"] / 10
    # a sampled tail: another entry, 4 + 4 slots per token, recorded
    sampled_dir = tmp_path / "k4s4"
    _ok(run_cli([*base, "trainer.teacher_topk=4", "trainer.teacher_topk_samples=4",
                 f"hydra.run.dir={sampled_dir}"], cwd=tmp_path))
    sampled = json.loads((sampled_dir / "metrics.json").read_text())["teacher_topk"]
    assert sampled["samples"] == 4 and sampled["k"] == 4 and sparse["teacher_topk"]["samples"] == 0
    assert sampled["splits"]["train"]["key"] != sparse["teacher_topk"]["splits"]["train"]["key"]
    assert sampled["bytes_per_token"] > sparse["teacher_topk"]["bytes_per_token"]


def test_a_loss_the_samples_do_not_suit_reads_the_sampled_entry_as_plain_top_k(tmp_path):
    """Reverse KL on an entry with a sampled tail reads it as plain top-4 targets (the
    samples folded into the rest mass): it trains like the run on a plain top-4 entry, up to
    the fp16 storage of the folded weights; forward KL keeps the samples."""
    base = ["experiment=tiny_causal_lm", *FAST, "trainer.teacher_topk=4"]
    runs = {}
    for name, extra in (("plain", ["loss.divergence=rkl"]),
                        ("folded", ["loss.divergence=rkl", "trainer.teacher_topk_samples=4"]),
                        ("fkl", ["trainer.teacher_topk_samples=4"])):
        proc = _ok(run_cli([*base, *extra, f"hydra.run.dir={tmp_path / name}"], cwd=tmp_path))
        runs[name] = (json.loads((tmp_path / name / "metrics.json").read_text()),
                      proc.stdout + proc.stderr)
    plain, folded, fkl = (runs[n][0] for n in ("plain", "folded", "fkl"))
    assert folded["teacher_topk"]["tail_read"] == "rest mass"
    assert "reads the entry as plain top-4 targets" in runs["folded"][1]
    assert fkl["teacher_topk"]["tail_read"] == "samples" and plain["teacher_topk"]["tail_read"] is None
    assert folded["train"]["last_losses"]["kd"] == pytest.approx(
        plain["train"]["last_losses"]["kd"], rel=1e-2)
    assert folded["student"]["perplexity"] == pytest.approx(plain["student"]["perplexity"],
                                                            rel=1e-3)


@pytest.mark.parametrize(("args", "phrases"), [
    (["experiment=tiny_kd", "trainer.teacher_topk=8"],
     ["trainer.teacher_topk=8", "task=causal_lm"]),
    (["experiment=tiny_causal_lm", "trainer.teacher_topk=8", "trainer.teacher_topk_dtype=int4"],
     ["int4", "fp16"]),
    (["experiment=tiny_causal_lm", "trainer.teacher_topk=500"], ["500", "107"]),
    (["experiment=tiny_causal_lm", "trainer.teacher_topk=100", "trainer.teacher_topk_samples=10"],
     ["100 plus 10 tail samples", "use fewer samples"]),
    (["experiment=tiny_causal_lm", "trainer.teacher_topk=8", "trainer.teacher_topk_samples=-1"],
     ["trainer.teacher_topk_samples must be >= 0"]),
])
def test_bad_top_k_settings_are_one_error_line(tmp_path, args, phrases):
    proc = run_cli([*args, f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    one_error_line(proc.returncode, proc.stdout + proc.stderr, phrases)


def test_on_policy_batches_are_scored_by_the_live_teacher_and_resume_alike(tmp_path):
    """loss.lmbda=0.5 with cached top-k targets: the sampled batches need the live teacher
    (kept), the others read the cache; a run killed after step 3 resumes from step 2's
    checkpoint, draws the same on-policy batches and ends where the uninterrupted run did."""
    args = ["experiment=tiny_causal_lm", *FAST, "loss.lmbda=0.5",
            "loss.generation.max_new_tokens=4", "trainer.teacher_topk=8"]
    plain_dir, run_dir = tmp_path / "plain", tmp_path / "run"
    _ok(run_cli([*args, f"hydra.run.dir={plain_dir}"], cwd=tmp_path))
    plain = json.loads((plain_dir / "metrics.json").read_text())
    assert plain["loss"]["lmbda"] == 0.5 and plain["teacher_topk"]["source"] == "computed"
    assert 0 < plain["on_policy"]["batches"] < plain["on_policy"]["of"] == 4
    assert plain["on_policy"]["generation"]["max_new_tokens"] == 4
    ckpt = [*args, "trainer.checkpoint_every_steps=2", f"hydra.run.dir={run_dir}"]
    killed = run_cli(ckpt, cwd=tmp_path, env={"DISTILLKIT_TEST_KILL_AT_STEP": "3"})
    assert killed.returncode != 0 and not (run_dir / "metrics.json").exists()
    _ok(run_cli([*ckpt, "resume=auto"], cwd=tmp_path))
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["resumed_from"]["step"] == 2
    assert resumed["on_policy"] == plain["on_policy"]
    assert resumed["student"]["perplexity"] == pytest.approx(plain["student"]["perplexity"],
                                                             rel=1e-5)


def test_sequence_kd_trains_on_the_teachers_responses_decoded_once(tmp_path):
    args = ["experiment=tiny_causal_lm", *FAST, "loss.seq_kd=true",
            "loss.generation.max_new_tokens=3"]
    first, second = tmp_path / "a", tmp_path / "b"
    _ok(run_cli([*args, f"hydra.run.dir={first}"], cwd=tmp_path))
    metrics = json.loads((first / "metrics.json").read_text())
    assert metrics["loss"]["seq_kd"] is True
    assert metrics["stages"]["teacher_targets"] == {"sequence_kd": "computed"}
    record = metrics["sequence_kd"]
    assert record["responses"] == metrics["data"]["examples"]["train"]
    assert 1 <= record["mean_response_tokens"] <= 3 and record["num_beams"] == 1
    # the learnt training tokens are now the teacher's responses (<= 3 each)
    assert metrics["data"]["tokens"]["train"] <= 3 * record["responses"]
    rows = [json.loads(line) for line in
            (first / "teacher_responses.jsonl").read_text().splitlines()]
    assert len(rows) == record["responses"] and set(rows[0]) == {"prompt", "data", "teacher"}
    assert rows[0]["prompt"].startswith("where is")
    _ok(run_cli([*args, "loss.alpha=0.2", f"hydra.run.dir={second}"], cwd=tmp_path))
    again = json.loads((second / "metrics.json").read_text())
    assert again["stages"]["teacher_targets"] == {"sequence_kd": "cache"}
    assert again["sequence_kd"]["cache"] == record["cache"]
    assert again["data"]["tokens"] == metrics["data"]["tokens"]


def test_a_sweep_over_temperature_and_beta_summarises_itself(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _ok(run_cli(["-m", "experiment=tiny_causal_lm", "loss=causal_jsd",
                        "loss.temperature=1,2", "loss.beta=0.1,0.9", "trainer.max_steps=2",
                        "trainer.eval_every_steps=2", "trainer.progress=false",
                        "data.num_generations=1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path))
    assert "sweep summary (4 jobs: 4 finished, 0 failed, 0 unfinished)" in proc.stderr + proc.stdout
    rows = list(csv.DictReader((sweep / "summary.csv").read_text().splitlines()))
    assert sorted((r["loss.temperature"], r["loss.beta"]) for r in rows) == [
        ("1", "0.1"), ("1", "0.9"), ("2", "0.1"), ("2", "0.9")]
    for row in rows:
        assert row["status"] == "ok" and float(row["student_neg_perplexity"]) < -1
        assert 0 <= float(row["student_agreement"]) <= 1 and float(row["student_kl"]) > 0
    objectives = [float(r["objective"]) for r in rows]
    assert objectives == sorted(objectives, reverse=True)  # best first
    table = (sweep / "summary.md").read_text()
    assert "| agreement | KL to teacher |" in table and "student -ppl" in table
