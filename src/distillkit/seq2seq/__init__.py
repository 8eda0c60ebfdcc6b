"""Seq2seq distillation (``task=seq2seq``): word-level KD, sequence-level KD, step by step.

Models (:mod:`.models`), data and the generated arithmetic task (:mod:`.data`,
:mod:`.arith`), losses (:mod:`.losses`), the cached teacher stages (:mod:`.teacher_stage`,
:mod:`.generation`), evaluation by generation (:mod:`.evaluate`) and the run graph
(:mod:`.run`).
"""

from distillkit.seq2seq.arith import arith_word_problems
from distillkit.seq2seq.data import Seq2SeqData
from distillkit.seq2seq.losses import StepByStepLoss, TokenDistillationLoss
from distillkit.seq2seq.models import bert2bert_minilm, hub_seq2seq, t5_from_scratch

__all__ = [
    "Seq2SeqData",
    "StepByStepLoss",
    "TokenDistillationLoss",
    "arith_word_problems",
    "bert2bert_minilm",
    "hub_seq2seq",
    "t5_from_scratch",
]
