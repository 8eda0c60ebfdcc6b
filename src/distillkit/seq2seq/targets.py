"""The seq2seq teacher-target stages: the teacher's generations, computed once and cached.

* step by step (Hsieh et al., 2023, "Distilling Step-by-Step!"): rationales and/or labels the
  teacher generates for the train split, when the data does not carry them;
* sequence-level KD (Kim & Rush, 2016): the teacher decodes the train split and its outputs
  become the student's targets (written to ``<run>/seqkd/train.{src,tgt,scores}``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from distillkit.engine import EngineSettings
from distillkit.models import ModelBundle
from distillkit.seq2seq.data import Seq2SeqData
from distillkit.seq2seq.generation import GenerationSettings, cached_generations, write_parallel
from distillkit.seq2seq.losses import StepByStepLoss, TokenDistillationLoss

log = logging.getLogger(__name__)


def step_by_step_targets(loss: StepByStepLoss, data: Seq2SeqData, teacher: ModelBundle,
                  engine: EngineSettings, stages: dict) -> str:
    """Sets the student's two tasks; generates rationales/labels with the teacher if asked."""
    has_llm = data.columns["llm_label_column"] is not None
    label_key = "llm_label_column" if loss.label_type == "llm" and has_llm else "target_column"
    rationale_key = "llm_rationale_column" if loss.label_type == "llm" else "rationale_column"
    generate_labels = loss.label_type == "llm" and not has_llm
    if loss.rationale_source == "data" and not generate_labels:
        data.use_step_by_step(loss.label_prefix, loss.rationale_prefix, label_key,
                              rationale_key)
        return "file"
    log.info("teacher generates rationales/labels")
    device = engine.resolve_device()
    settings = GenerationSettings(num_beams=1, max_new_tokens=data.max_target_length,
                                  batch_size=engine.eval_batch_size)
    given: dict[str, list[str]] = {}
    for what, prefix, wanted in (("rationales", loss.rationale_prefix,
                                  loss.rationale_source == "teacher"),
                                 ("labels", loss.label_prefix, generate_labels)):
        if wanted:
            ids = data.encode_sources(data.sources("train", prefix))
            texts, _, origin, _ = cached_generations(
                teacher, ids, settings, device, engine.teacher_dtype(device),
                f"train {what}", engine.progress)
            given[what] = [t[0] for t in texts]
            stages[f"teacher_{what}"] = origin
    data.use_step_by_step(loss.label_prefix, loss.rationale_prefix, label_key, rationale_key,
                          rationales=given.get("rationales"), labels=given.get("labels"))
    return "cache" if all(stages.get(f"teacher_{w}") == "cache" for w in given) \
        else "computed"


def sequence_kd_targets(loss: TokenDistillationLoss, data: Seq2SeqData, teacher: ModelBundle,
                        engine: EngineSettings, out_dir: Path, stages: dict) -> str:
    """The seq-KD stage: the teacher decodes the train split; its outputs become the targets."""
    settings = GenerationSettings.from_config(loss.sequence_kd, "loss.sequence_kd")
    log.info("sequence-level KD: the teacher decodes the train split")
    device = engine.resolve_device()
    sources = [parts[0][0] for parts in data.parts["train"]]
    texts, scores, origin, path = cached_generations(
        teacher, data.encode_sources(sources), settings, device, engine.teacher_dtype(device),
        "train (seq-KD)", engine.progress)
    files = write_parallel(out_dir / "seqkd", "train", sources, texts, scores)
    data.replace_targets("train", texts, settings.mix_original)
    stages["sequence_kd"] = {"generations": origin, "cache": str(path), **files,
                             "pairs": data.num_parts("train"), **vars(settings)}
    return origin
