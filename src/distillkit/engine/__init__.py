"""The generic distillation engine: it receives built objects and never imports concrete ones."""

from distillkit.engine.evaluate import evaluate, predict_logits
from distillkit.engine.freezing import freeze_parameters
from distillkit.engine.outputs import frozen
from distillkit.engine.settings import EngineSettings
from distillkit.engine.trainer import Distiller, TrainResult

__all__ = ["Distiller", "EngineSettings", "TrainResult", "evaluate", "freeze_parameters", "frozen",
           "predict_logits"]
