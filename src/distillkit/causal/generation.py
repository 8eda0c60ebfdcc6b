"""Continuing prompts with a causal LM, for on-policy distillation and sequence-level KD.

Both ways of training on generated responses go through :func:`continue_prompts`: prompts
left-padded into batches, ``model.generate``, each continuation cut after its first EOS token.

* On-policy (GKD, Agarwal et al., 2024, "On-Policy Distillation of Language Models: Learning
  from Self-Generated Mistakes"): the student samples (``do_sample``, ``temperature``, no
  top-k/top-p truncation) from the batch's prompts (:mod:`distillkit.causal.on_policy`);
* sequence-level KD (Kim & Rush, 2016, "Sequence-Level Knowledge Distillation"): the teacher
  decodes greedily (or with beam search) once per training prompt
  (:mod:`distillkit.causal.sequence_kd`).

:class:`CausalGeneration` holds the settings (``loss.generation``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from distillkit.errors import ConfigError, known_keys


@dataclass
class CausalGeneration:
    """How responses are generated (``loss.generation``).

    Attributes:
        max_new_tokens: longest response, in tokens.
        temperature: the student's sampling temperature (on-policy batches).
        num_beams: the teacher's beam size for sequence-level KD (1: greedy).
        batch_size: prompts per ``generate`` call (sequence-level KD).
    """

    max_new_tokens: int = 32
    temperature: float = 1.0
    num_beams: int = 1
    batch_size: int = 16

    @classmethod
    def from_config(cls, values: dict | None, key: str = "loss.generation") -> CausalGeneration:
        """Builds the settings, refusing unknown keys and impossible values."""
        settings = cls(**known_keys(cls, values, key))
        for name in ("max_new_tokens", "num_beams", "batch_size"):
            if not int(getattr(settings, name)) >= 1:
                raise ConfigError(f"{key}.{name} must be >= 1, got {getattr(settings, name)}")
        if not float(settings.temperature) > 0:
            raise ConfigError(f"{key}.temperature must be > 0, got {settings.temperature}; "
                              "1.0 samples from the student's own distribution")
        return settings

    def as_dict(self) -> dict:
        return asdict(self)


def stop_ids(model: nn.Module, tokenizer) -> set[int]:
    """The token ids that end a response: the tokenizer's EOS and the model's generation EOS."""
    ids = set()
    config = model.generation_config
    for value in (tokenizer.eos_token_id, None if config is None else config.eos_token_id):
        if value is None:
            continue
        ids.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return ids


def pad_id(tokenizer) -> int:
    """The id generation pads with (the pad token, else EOS, else 0)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


@torch.inference_mode()
def continue_prompts(model: nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                     pad: int, stops: set[int], device: torch.device, sample: bool = False,
                     temperature: float = 1.0, num_beams: int = 1,
                     batch_size: int | None = None) -> list[list[int]]:
    """Each prompt's continuation: its new token ids up to and including the first stop id.

    Args:
        model: a Hugging Face causal LM (its ``generate``).
        prompts: token ids, at least one per prompt.
        max_new_tokens: most tokens added per prompt.
        pad: the id left padding uses (masked out).
        stops: ids that end a continuation (kept as its last token).
        device: where the model runs.
        sample: sample (``temperature``, no top-k or top-p truncation) instead of decoding
            greedily or with beams.
        temperature: the sampling temperature.
        num_beams: beam size when not sampling.
        batch_size: prompts per ``generate`` call (None: all at once).

    Returns:
        Per prompt, in order, its continuation (never empty).
    """
    was_training = model.training
    model.eval()
    size = batch_size or max(len(prompts), 1)
    options = ({"do_sample": True, "temperature": float(temperature), "top_k": 0, "top_p": 1.0}
               if sample else {"do_sample": False, "num_beams": int(num_beams)})
    out: list[list[int]] = []
    try:
        for start in range(0, len(prompts), size):
            chunk = [list(p) for p in prompts[start:start + size]]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, prompt in enumerate(chunk):  # left padding: every prompt ends at `width`
                ids[row, width - len(prompt):] = torch.tensor(prompt)
                mask[row, width - len(prompt):] = 1
            sequences = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       max_new_tokens=int(max_new_tokens), pad_token_id=pad,
                                       synced_gpus=False, **options)  # never a collective
            for new in sequences[:, width:].tolist():
                cut = next((i + 1 for i, t in enumerate(new) if t in stops), len(new))
                out.append(new[:cut] or new[:1])
    finally:
        model.train(was_training)
    return out
