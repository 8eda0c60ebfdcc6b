"""Causal-LM students initialised by copying a subset of the teacher's decoder layers.

Which layers: ``every=k`` keeps ``ceil(n / k)`` of the teacher's ``n`` layers, spread evenly
from the first to the last (positions rounded half up). This is the rule of DistilBERT and
DistilGPT2 (Sanh et al., 2019; the ``extract.py`` script of transformers' distillation example
keeps layers ``[0, 2, 4, 7, 9, 11]`` of 12, which is exactly this rule for ``k = 2``): the
first layer is kept because it is the one that reads the token embeddings, the last because
its output is what the copied final norm and LM head were trained on; layer-pruning studies
of decoder LLMs find the first and the last layers among the most important to keep (Men et
al., 2024, "ShortGPT"; Gromov et al., 2024, "The Unreasonable Ineffectiveness of the Deeper
Layers", who never prune the final layer). For SmolLM2's 30 layers,
``every=2`` keeps ``[0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27, 29]`` and ``every=3``
keeps ``[0, 3, 6, 10, 13, 16, 19, 23, 26, 29]``. ``layers=[...]`` picks any subset instead.
"""

from __future__ import annotations

import copy

from torch import nn

from distillkit.causal.models import CausalBundle
from distillkit.errors import ConfigError


def evenly_spaced_layers(num_layers: int, every: int) -> list[int]:
    """``ceil(num_layers / every)`` layer indices from ``0`` to ``num_layers - 1``, evenly
    spaced, positions rounded half up (``every=1`` keeps them all).

    Raises:
        ConfigError: ``every`` outside ``[1, num_layers - 1]`` (a single layer cannot be both
            the first and the last; name it with ``student.layers``).
    """
    top = max(1, num_layers - 1)
    if not 1 <= every <= top:
        raise ConfigError(
            f"student.every={every} must be between 1 and {top} for a {num_layers}-layer "
            f"teacher (every=k keeps ceil({num_layers}/k) layers, the first and the last "
            "included); to keep one layer, set student.layers=[i] instead")
    kept = -(-num_layers // every)
    if kept == 1:
        return [0]
    # round(j * (n - 1) / (kept - 1)) half up, in integers
    return [(2 * j * (num_layers - 1) + kept - 1) // (2 * (kept - 1)) for j in range(kept)]


def _decoder_layer_list(model: nn.Module, num_layers: int) -> str:
    """The dotted name of the module list holding the ``num_layers`` decoder layers."""
    lists = [name for name, module in model.named_modules()
             if isinstance(module, nn.ModuleList) and len(module) == num_layers]
    if len(lists) > 1:
        lists = [name for name in lists if name.rsplit(".", 1)[-1] in ("layers", "h", "blocks")]
    if len(lists) != 1:
        raise ConfigError(
            f"cannot copy layers from a {type(model).__name__}: no single list of its "
            f"{num_layers} decoder layers was found; use a student built from a config "
            "(small_llama_student) instead")
    return lists[0]


def _chosen_layers(every: int | None, layers: list[int] | None, num_layers: int) -> list[int]:
    if (every is None) == (layers is None):
        raise ConfigError(
            "set exactly one of student.every (keep every k-th teacher layer, the first and "
            "last included) and student.layers (teacher layer indices, e.g. [0, 2, 4])"
            + ("" if every is None else f"; got every={every} and layers={list(layers)}"))
    if every is not None:
        return evenly_spaced_layers(num_layers, int(every))
    chosen = [int(i) for i in layers]
    if not chosen or any(not 0 <= i < num_layers for i in chosen) or chosen != sorted(
            set(chosen)):
        raise ConfigError(
            f"student.layers={chosen} must be increasing, distinct teacher layer indices in "
            f"[0, {num_layers - 1}] (the teacher has {num_layers} layers), e.g. [0, 2, 4]")
    return chosen


def copied_causal_student(
    every: int | None = None,
    layers: list[int] | None = None,
    *,
    teacher: CausalBundle,
) -> CausalBundle:
    """A student of the teacher's architecture and width with fewer decoder layers, each a copy
    of a teacher layer; the embeddings, final norm and LM head are copied too (a tied head
    stays tied), the tokenizer and generation settings are the teacher's.

    The student is a fresh model built from the teacher's config (so its layer numbering, KV
    cache and saved config are those of a ``len(layers)``-layer model) with the teacher's
    weights loaded into it; it shares no tensor with the teacher.

    Args:
        every: keep ``ceil(n / every)`` layers evenly spaced from the first to the last (see
            the module docstring); ``every=1`` copies the whole teacher.
        layers: the teacher layer indices to keep (0-based, increasing), instead of ``every``.
        teacher: the teacher bundle (with a model).

    Raises:
        ConfigError: a teacher without a model, neither or both of ``every``/``layers``, an
            ``every`` out of range, or layer indices that are out of range or not increasing.
    """
    source = teacher.model
    if source is None:
        raise ConfigError(
            f"this student copies the teacher's layers, but the teacher ({teacher.name}) has no "
            "model, only its stored outputs; use a student built from a config "
            "(small_llama_student) instead")
    n = teacher.num_layers
    chosen = _chosen_layers(every, layers, n)
    prefix = _decoder_layer_list(source, n) + "."
    config = copy.deepcopy(source.config)
    config.num_hidden_layers = len(chosen)
    layer_types = config.to_dict().get("layer_types")
    if isinstance(layer_types, list) and len(layer_types) == n:  # per-layer attention kinds
        config.layer_types = [layer_types[i] for i in chosen]
    student = type(source)(config).to(source.dtype)
    position = {t: s for s, t in enumerate(chosen)}
    weights = {}
    for key, tensor in source.state_dict().items():
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            if int(index) in position:
                weights[f"{prefix}{position[int(index)]}.{rest}"] = tensor
        else:
            weights[key] = tensor
    student.load_state_dict(weights, strict=True)
    student.generation_config = copy.deepcopy(source.generation_config)
    return CausalBundle(model=student, tokenizer=teacher.tokenizer,
                        name=f"{len(chosen)} layers {chosen} copied from {teacher.name}",
                        origin="copied")
