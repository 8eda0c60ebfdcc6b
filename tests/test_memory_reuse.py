"""CPU training keeps freed memory for reuse (distillkit.runtime.memory)."""

from __future__ import annotations

import subprocess
import sys
from functools import partial

import pytest
import torch

from distillkit.data import TextClassificationData, synthetic_nli
from distillkit.engine import Distiller, EngineSettings
from distillkit.engine import trainer as trainer_module
from distillkit.engine.schedules import warmup_schedule
from distillkit.losses import DistillationLoss
from distillkit.models import bert_student, tiny_teacher

# allocates and frees a BERT-vocabulary embedding gradient (36 MiB) a few times, then counts
# the page faults of five more rounds, before and after keep_freed_memory()
_FAULTS = """
import resource, torch
from distillkit.runtime.memory import keep_freed_memory

def faults():
    for _ in range(20):  # with the setting, the heap grows to hold it in the first rounds
        x = torch.zeros(30522, 312); del x
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        x = torch.zeros(30522, 312); del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

before = faults()
applied = keep_freed_memory()
print(before, int(applied), faults())
"""


def test_a_freed_large_tensor_is_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True,
                         check=True)
    before, applied, after = (int(v) for v in out.stdout.split())
    if not applied:
        pytest.skip("the C library is not glibc (or refuses the setting)")
    # 36 MiB is 9,300 pages: glibc maps it afresh for every allocation by default
    assert before > 5 * 9000, "control: each allocation should have been mapped afresh"
    assert after < 9000, f"{after} page faults for five re-allocations after the setting"


@pytest.mark.parametrize("keep", [True, False])
def test_training_on_the_cpu_applies_the_setting(monkeypatch, keep):
    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: calls.append(1))
    labels = ["entailment", "neutral", "contradiction"]
    data = TextClassificationData(partial(synthetic_nli, n_train=32, n_validation=8, n_test=0),
                                  text_column="premise", text_pair_column="hypothesis",
                                  labels=labels, max_length=16)
    teacher = tiny_teacher(labels=labels)
    data.tokenize(teacher.tokenizer)
    student = bert_student(1, 16, 2, 32, teacher=teacher, labels=labels).model
    settings = EngineSettings(batch_size=16, max_steps=1, progress=False, device="cpu",
                              keep_freed_memory=keep)
    Distiller(student, None, DistillationLoss(kd=None, alpha=0.0),
              partial(torch.optim.AdamW, lr=1e-3), partial(warmup_schedule, name="constant"),
              settings).fit(data.loader("train", 16))
    assert calls == ([1] if keep else [])
