"""A model together with the tokenizer that feeds it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class ModelBundle:
    """A sequence-classification model and its tokenizer.

    Attributes:
        model: a Hugging Face ``PreTrainedModel`` with a classification head; None for an
            offline teacher (``teacher=offline``), which has only its logits in a file.
        tokenizer: the tokenizer whose ids the model expects.
        name: a human-readable description for logs (hub name, path or builder).
        trained_head: whether the classification head was trained on the task (False for a
            fresh head, which the run's teacher stage fine-tunes).
        initial: for a teacher fine-tuned by the teacher stage, the bundle as it was before
            (pretrained weights), which students may be initialised from.
        origin: how the teacher stage produced it: ``as given``, ``fine-tuned`` (trained in
            this run), ``cache`` (a fine-tuned teacher reused from the cache) or ``offline``
            (no model: logits read from a file).
    """

    model: PreTrainedModel | None
    tokenizer: PreTrainedTokenizerBase
    name: str
    trained_head: bool = False
    initial: ModelBundle | None = None
    origin: str = "as given"

    @property
    def num_layers(self) -> int:
        """Number of transformer layers (from the model config; 0 without a model)."""
        return 0 if self.model is None else int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        """Hidden width (from the model config; 0 without a model)."""
        return 0 if self.model is None else int(self.model.config.hidden_size)


def count_parameters(model: nn.Module) -> int:
    """Total number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def update_weights_digest(model: nn.Module, digest: hashlib._Hash) -> None:
    """Feeds every parameter and buffer of ``model`` (names and raw bytes) into ``digest``."""
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
