"""The ``general`` config section: whether and how the general-distillation stage runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional  # noqa: UP035 - OmegaConf needs typing generics

from distillkit.errors import ConfigError, known_keys

TEACHERS = ("finetuned", "pretrained")
EMBEDDINGS = ("pca", "random")


@dataclass
class GeneralSettings:
    """How the student is distilled on unlabelled text before the task (``conf/general/``).

    Also the typed schema of the ``general`` section (``general_schema``), so a typo'd key
    (``general.step=10``) fails at compose time.

    Attributes:
        enabled: run the stage (``general=none``: off).
        corpus: ``snli`` (the premises and hypotheses of SNLI's 100k training pairs,
            de-duplicated), a local text file or a list of them (``.txt``: one text per line;
            ``.jsonl``/``.json``/``.csv``/``.tsv``: the ``text_column``), or
            ``hub:<dataset>[:<config>]`` (its ``train`` split's ``text_column``).
        text_column: the text column of a table file or hub dataset.
        max_texts: use the first N texts of the corpus (null: all).
        max_length: tokens per text (longer texts are truncated).
        teacher: ``finetuned`` (the teacher as the teacher stage left it) or ``pretrained``
            (as loaded, before any fine-tune).
        embeddings: ``pca`` (the student's word, position and token-type embeddings start as
            the teacher's projected onto their top principal components; needs a shared
            vocabulary) or ``random`` (the student's own initialisation).
        steps: optimizer steps (0: the embedding initialisation alone).
        batch_size: texts per step.
        lr: AdamW learning rate (linear warm-up, then linear decay).
        weight_decay: AdamW weight decay.
        warmup_ratio: warm-up fraction of the steps.
        seed: the stage's own seed (data order, dropout, projections); null: ``trainer.seed``.
        mapping: the layer mapping of the stage's terms (a ``mapping`` group option).
        loss: the stage's loss (intermediate terms only: ``prediction_weight: 0``).
    """

    enabled: bool = False
    corpus: Any = "snli"
    text_column: str = "text"
    max_texts: Optional[int] = None  # noqa: UP045
    max_length: int = 64
    teacher: str = "finetuned"
    embeddings: str = "pca"
    steps: int = 2000
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    seed: Optional[int] = None  # noqa: UP045
    mapping: Any = None
    loss: Any = None

    @classmethod
    def from_config(cls, values: Any) -> GeneralSettings:
        """The settings of a ``general`` section (a dict; None: off), checked.

        Raises:
            ConfigError: an unknown key or a value out of range, naming the key and a fix.
        """
        settings = cls(**known_keys(cls, dict(values or {}), "general"))
        for key, allowed in (("teacher", TEACHERS), ("embeddings", EMBEDDINGS)):
            if getattr(settings, key) not in allowed:
                raise ConfigError(f"general.{key}={getattr(settings, key)!r} is not one of "
                                  f"{', '.join(allowed)}")
        for key, low in (("steps", 0), ("batch_size", 1), ("max_length", 2)):
            if int(getattr(settings, key)) < low:
                raise ConfigError(f"general.{key} must be >= {low}, got {getattr(settings, key)}")
        if settings.max_texts is not None and settings.max_texts < 1:
            raise ConfigError(f"general.max_texts must be >= 1 or null, got {settings.max_texts}")
        if not settings.lr > 0 or not 0 <= settings.warmup_ratio < 1:
            raise ConfigError(f"general.lr must be > 0 and general.warmup_ratio in [0, 1), got "
                              f"{settings.lr} and {settings.warmup_ratio}")
        if settings.enabled and settings.steps > 0 and (settings.loss is None
                                                        or settings.mapping is None):
            raise ConfigError("general.enabled=true needs general.loss and general.mapping; "
                              "pick a preset, e.g. general=tinybert")
        if isinstance(settings.corpus, str):
            settings.corpus = settings.corpus.strip()
        if not settings.corpus:
            raise ConfigError("general.corpus is empty; use general.corpus=snli, a text file, "
                              "or hub:<dataset>[:<config>]")
        return settings

    def key_fields(self) -> dict[str, Any]:
        """The settings that enter the cache key (all; the corpus enters by its texts)."""
        return dataclasses.asdict(self)

