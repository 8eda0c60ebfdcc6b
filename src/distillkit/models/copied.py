"""Students initialised by copying a subset of the teacher's layers (DistilBERT-style)."""

from __future__ import annotations

import copy

from torch import nn

from distillkit.errors import ConfigError
from distillkit.models.bundle import ModelBundle


def _layer_list(model: nn.Module) -> tuple[nn.Module, str]:
    """The module holding the transformer layers and the attribute name of its ModuleList."""
    base = getattr(model, model.base_model_prefix, model)
    encoder = getattr(base, "encoder", None) or getattr(base, "transformer", None)
    for attr in ("layer", "layers"):
        if encoder is not None and isinstance(getattr(encoder, attr, None), nn.ModuleList):
            return encoder, attr
    raise ConfigError(
        f"cannot copy layers from a {type(model).__name__}: no encoder layer list found; "
        "use a student built from a config (student=bert4l) instead"
    )


INITS = ("pretrained", "finetuned")


def student_from_teacher(layers: list[int], init: str = "pretrained", *, teacher: ModelBundle,
                         labels: list[str]) -> ModelBundle:
    """A student with the teacher's embeddings, head and the chosen encoder layers.

    As in DistilBERT (Sanh et al., 2019), the student is initialised from the teacher by
    taking one layer out of two; here any subset can be chosen (0-based teacher layer
    indices, e.g. ``[0, 2, 4]`` of a 6-layer teacher).

    Args:
        layers: teacher layer indices to keep, in order.
        init: ``pretrained`` copies the teacher's weights from before the teacher stage
            fine-tuned it (DistilBERT's recipe: the student learns the task by distillation);
            ``finetuned`` copies the task-trained teacher (the teacher's task knowledge passed
            on through its weights, then refined by distillation). Without a teacher stage
            both are the same. (``student.init=auto`` is resolved by the run before this is
            called: ``finetuned`` when the loss learns from the teacher, ``pretrained`` when it
            does not, so that ``loss=hard`` trains alone.)
        teacher: the teacher bundle (its tokenizer is shared).
        labels: label names (must match the teacher's head).

    Raises:
        ConfigError: for an empty, unsorted or out-of-range layer list, an unknown init, or a
            teacher without a model (``teacher=offline``).
    """
    if teacher.model is None:
        raise ConfigError(
            f"this student copies the teacher's layers, but the teacher ({teacher.name}) has no "
            "model, only its logits; use a student built from a config (student=bert4l) or a "
            "pretrained one (student=hub)")
    if init not in INITS:
        raise ConfigError(f"student.init='{init}' must be one of {', '.join(INITS)}")
    source = teacher.initial if init == "pretrained" and teacher.initial else teacher
    n = teacher.num_layers
    layers = [int(i) for i in layers]
    if not layers or any(not 0 <= i < n for i in layers) or layers != sorted(set(layers)):
        raise ConfigError(
            f"student.layers={layers} must be increasing, distinct teacher layer indices in "
            f"[0, {n - 1}] (the teacher has {n} layers), e.g. [0, 2, 4]"
        )
    if teacher.model.config.num_labels != len(labels):
        raise ConfigError("the teacher's head does not match the data's labels")
    model = copy.deepcopy(source.model)
    encoder, attr = _layer_list(model)
    setattr(encoder, attr, nn.ModuleList(getattr(encoder, attr)[i] for i in layers))
    model.config.num_hidden_layers = len(layers)
    weights = ("pretrained" if source is not teacher
               else "fine-tuned" if teacher.initial is not None else "as loaded")
    return ModelBundle(model=model, tokenizer=teacher.tokenizer,
                       name=f"{len(layers)} layers {layers} copied from {source.name}, "
                            f"{weights} weights",
                       trained_head=source.trained_head)


def first_layers(model: nn.Module, depth: int) -> nn.Module:
    """A view of ``model`` that runs only its embeddings and first ``depth`` layers.

    The view shares every parameter with ``model`` (nothing is copied, ``model`` is unchanged);
    its hidden states 0..depth and attention maps 1..depth equal the full model's, its logits
    do not. Used for a frozen teacher when no loss reads its logits.

    Returns:
        The view, or ``model`` itself when it has no more than ``depth`` layers or no
        recognisable layer list.
    """
    try:
        encoder, attr = _layer_list(model)
    except ConfigError:
        return model
    layers = getattr(encoder, attr)
    if depth >= len(layers):
        return model

    def shallow(module: nn.Module) -> nn.Module:
        clone = copy.copy(module)
        clone._modules = dict(module._modules)  # own child table; children stay shared
        return clone

    view = shallow(model)
    base_name = model.base_model_prefix if hasattr(model, model.base_model_prefix) else None
    base = shallow(getattr(model, base_name)) if base_name else view
    owner = shallow(encoder)
    setattr(owner, attr, nn.ModuleList(list(layers)[:depth]))
    if base is not view:
        setattr(view, base_name, base)
    for name, child in base._modules.items():
        if child is encoder:
            base._modules[name] = owner
    view.config = copy.deepcopy(model.config)
    view.config.num_hidden_layers = depth
    return view
