"""On-policy batches for generalised knowledge distillation (GKD; Agarwal et al., 2024,
"On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes").

With ``loss.lmbda`` > 0, that fraction of the training batches is replaced, just before its
step, by the responses the student itself samples from the batch's prompts
(:func:`~distillkit.causal.generation.continue_prompts`: ``loss.generation.temperature``,
``loss.generation.max_new_tokens``, no top-k/top-p truncation); the live teacher scores them
and the loss's divergence is taken on the sampled tokens. The cross-entropy term is dropped on
those batches (its labels would be the student's own samples): they carry
:data:`~distillkit.causal.token_loss.ON_POLICY`.

A prompt is the example's tokens before its last response (``loss_prompt_length``), or for
plain text its first half. Which batches are on-policy is a function of the run's seed and the
batch's position in the run (not of a random stream), so a resumed run picks the same ones;
the sampling itself draws from the global RNG the checkpoint restores.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from distillkit.causal.data import PROMPT_LENGTH, ROW, prompt_end
from distillkit.causal.encode import IGNORE, Encoded
from distillkit.causal.generation import CausalGeneration, continue_prompts
from distillkit.causal.token_loss import ON_POLICY


class OnPolicyBatches:
    """The engine's batch hook (``hook(batch, micro) -> batch``) of a GKD run.

    Args:
        model: the student (a Hugging Face causal LM; the same parameters the loop trains).
        collate: the data's collator of ``(row, Encoded)`` pairs (right padding, shifted labels).
        lmbda: the share of batches made on-policy, in ``[0, 1]``.
        generation: sampling settings.
        pad: the id prompts are left-padded with for generation.
        stops: ids that end a response.
        seed: the run's seed.
        device: where the student samples.
        weights: a context in which the student's full weights are at hand (a sharded
            student's are gathered: :meth:`~distillkit.engine.Distiller.full_weights`); each
            rank samples for its own share of the batch, without collectives.
    """

    def __init__(self, model: nn.Module, collate: Callable[[list], dict], lmbda: float,
                 generation: CausalGeneration, pad: int, stops: set[int], seed: int,
                 device: torch.device,
                 weights: Callable[[], AbstractContextManager] = nullcontext) -> None:
        self.model, self.collate, self.lmbda = model, collate, float(lmbda)
        self.generation, self.pad, self.stops = generation, pad, stops
        self.seed, self.device, self.weights = int(seed), device, weights

    def chosen(self, micro: int) -> bool:
        """Whether micro-batch ``micro`` (0-based over the run) is on-policy."""
        return random.Random(f"gkd/{self.seed}/{micro}").random() < self.lmbda

    def __call__(self, batch: dict, micro: int) -> dict:
        if not self.chosen(micro):
            return batch
        prompts = []
        for ids, mask, length in zip(batch["input_ids"], batch["attention_mask"],
                                     batch[PROMPT_LENGTH], strict=True):
            real = ids[mask.bool()].tolist()
            prompts.append(real[:prompt_end(length, len(real))])
        g = self.generation
        with self.weights():
            responses = continue_prompts(self.model, prompts, max_new_tokens=g.max_new_tokens,
                                         pad=self.pad, stops=self.stops, device=self.device,
                                         sample=True, temperature=g.temperature)
        examples = [(int(row), Encoded(p + r, [IGNORE] * len(p) + r, len(p)))
                    for row, p, r in zip(batch[ROW].tolist(), prompts, responses, strict=True)]
        out = self.collate(examples)
        out[ON_POLICY] = torch.ones(len(examples), dtype=torch.bool)
        return out
