"""A model together with the tokenizer that feeds it."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class ModelBundle:
    """A sequence-classification model and its tokenizer.

    Attributes:
        model: a Hugging Face ``PreTrainedModel`` with a classification head.
        tokenizer: the tokenizer whose ids the model expects.
        name: a human-readable description for logs (hub name, path or builder).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str

    @property
    def num_layers(self) -> int:
        """Number of transformer layers (from the model config)."""
        return int(self.model.config.num_hidden_layers)


def count_parameters(model: nn.Module) -> int:
    """Total number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
