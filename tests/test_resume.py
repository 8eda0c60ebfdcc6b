"""A run killed with SIGKILL mid-training resumes from its last checkpoint (resume=auto) and
ends with exactly the metrics of a run that was never interrupted."""

from __future__ import annotations

import json
import signal

import pytest

from distillkit.app.reproduce import compare
from distillkit.run import KILL_AT_STEP_ENV
from tests.conftest import TINY_RUN, run_cli

pytestmark = pytest.mark.e2e
# 512 training pairs / batch 32 = 16 batches per epoch; evaluations every 5 steps (debug).
# Checkpoints at 5, 6, 10, 12, 15, 18, 20, 22; the kill after step 19 loses step 19 and the
# resume continues from step 18, in the second epoch, with dropout on.
RUN = [*TINY_RUN, "trainer.max_steps=22", "trainer.checkpoint_every_steps=6",
       "trainer.keep_checkpoints=1", "export_student=false"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("dk-cache")


def test_sigkilled_run_resumes_to_the_same_metrics(tmp_path, cache):
    env = {"DISTILLKIT_CACHE": str(cache)}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = run_cli([*RUN, f"hydra.run.dir={straight}"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    proc = run_cli([*RUN, f"hydra.run.dir={killed}"], cwd=tmp_path,
                   env={**env, KILL_AT_STEP_ENV: "19"})
    assert proc.returncode == -signal.SIGKILL, (proc.stdout + proc.stderr)[-3000:]
    assert not (killed / "metrics.json").exists()
    kept = sorted(p.name for p in (killed / "checkpoints").glob("step-*.pt"))
    assert kept[-1] == "step-00000018.pt" and len(kept) <= 2  # newest 1 + the best
    assert not list((killed / "checkpoints").glob(".*.tmp"))

    proc = run_cli([*RUN, f"hydra.run.dir={killed}", "resume=auto"], cwd=tmp_path, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "resuming at step 18 of 22 (epoch 1, batch 2)" in out
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert compare(a, b) == []
    assert b["student"]["accuracy"] == a["student"]["accuracy"]
    assert b["train"]["last_losses"] == pytest.approx(a["train"]["last_losses"], abs=1e-6)
    assert [e["step"] for e in b["train"]["evals"]] == [5, 10, 15, 20]
    assert b["resumed_from"]["step"] == 18 and "resumed_from" not in a


def test_resume_from_a_path_without_checkpoints_fails_clearly(tmp_path, cache):
    proc = run_cli([*RUN, f"resume={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'r'}"],
                   cwd=tmp_path, env={"DISTILLKIT_CACHE": str(cache)})
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and "no checkpoint there" in errors[0]
    assert "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "r" / "error.json").read_text())["type"] == "CheckpointError"
