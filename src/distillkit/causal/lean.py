"""The causal LM as the training loop runs it: last hidden states and the output layer, no
full-vocabulary logits.

A Hugging Face causal LM's forward pass multiplies every position's last hidden state by the
output layer: ``[batch, seq, vocab]`` logits (49152 columns for SmolLM2), most of a small
model's activation memory. :class:`LeanCausalLM` wraps the model and returns what the chunked
token loss (:mod:`distillkit.causal.token_loss`) needs instead:

* ``hidden_states_last``: the decoder's output after its final norm, ``[batch, seq, hidden]``;
* ``lm_head``: the output layer itself (an ``nn.Module``; the loss applies it chunk by chunk).

The engine stays generic: it calls the wrapper like any model, hands the student's dict to the
loss and passes a module value of the teacher's outputs through as it is
(:func:`distillkit.engine.outputs.plain_outputs`). The wrapper holds the model as its only
child, ``model``, so it shares every parameter with it: exporting the wrapped model
(``save_pretrained``) saves what was trained, and checkpoints of the loop hold the wrapper's
state dict (the model's keys under ``model.``), which a resumed run loads into a wrapper again.

Sharded with FSDP (``trainer.sharding=fsdp``), the wrapper is the root that holds the
embeddings, final norm and output layer; as a
:class:`~distillkit.engine.sharding.HeadAfterForward` it keeps them gathered after its forward
pass, so the loss applies the real output layer (not freed shards) and its gradient is
reduce-scattered with the rest in the backward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from distillkit.engine.sharding import HeadAfterForward


class LeanCausalLM(nn.Module, HeadAfterForward):
    """A causal LM whose forward pass returns its last hidden states and its output layer.

    Args:
        model: a Hugging Face causal LM (``get_decoder()`` returns the decoder stack with its
            final norm, ``get_output_embeddings()`` the output layer).
    """

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False,
                **_: Any) -> dict[str, Any]:
        """``{"hidden_states_last", "lm_head"}`` (plus ``hidden_states`` / ``attentions``
        when asked for); other batch entries (row ids, prompt lengths) are ignored."""
        out = self.model.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        result: dict[str, Any] = {"hidden_states_last": out.last_hidden_state,
                                  "lm_head": self.model.get_output_embeddings()}
        if output_hidden_states:
            result["hidden_states"] = out.hidden_states
        if output_attentions:
            result["attentions"] = out.attentions
        return result
