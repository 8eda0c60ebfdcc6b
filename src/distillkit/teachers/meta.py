"""Meta-KD's teacher side: prototype scores and the meta-teacher's training inputs.

Meta-KD (Pan et al., 2021, "Meta-KD: A Meta Knowledge Distillation Framework for Language
Model Compression across Domains") trains one meta-teacher on several domains, weighting each
training example by its *prototype score*: how transferable it is, measured by how close its
embedding lies to the class prototypes (centroids) of the other domains as well as its own.
For example ``i`` of domain ``k`` with label ``m`` and embedding ``h_i``:

``t_i = alpha * cos(h_i, p[k, m]) + (1 - alpha) / (K - 1) * sum_{k' != k} cos(h_i, p[k', m])``

where ``p[k, m]`` is the mean embedding of domain ``k``'s training examples of class ``m`` and
``K`` the number of domains (a missing ``p[k', m]`` is left out of the average; with one domain
``t_i = cos(h_i, p[k, m])``). The embeddings are the pretrained teacher's mean-pooled last
hidden states (before the teacher stage trains it; all-MiniLM-L6-v2 is a sentence encoder
trained for exactly this pooling).

The scores are computed once per encoder + data + ``alpha`` and cached as a ``.npy`` under
``<cache>/prototypes/``: no separate script, no hand-made weight file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from distillkit.data import TextClassificationData
from distillkit.data.sampling import restore_order
from distillkit.engine import EngineSettings
from distillkit.engine.evaluate import model_inputs
from distillkit.errors import ConfigError
from distillkit.losses import MetaTeacherLoss
from distillkit.losses.meta import masked_mean_pool
from distillkit.models import ModelBundle, update_weights_digest
from distillkit.runtime.assets import cache_root
from distillkit.runtime.io import write_file

log = logging.getLogger(__name__)
DOMAIN_CHOICES = ("target", "all")
WEIGHT_CHOICES = ("none", "prototype")


def prototype_scores(embeddings: np.ndarray, labels: np.ndarray, domains: np.ndarray,
                     alpha: float = 0.5) -> np.ndarray:
    """Every example's prototype score (see the module docstring).

    Args:
        embeddings: ``[N, d]`` example embeddings.
        labels: ``[N]`` class ids.
        domains: ``[N]`` domain ids.
        alpha: weight of the example's own domain's prototype, in ``[0, 1]``.

    Returns:
        ``[N]`` float32 scores in ``[-1, 1]``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"teacher.finetune_settings.prototype_alpha must be in [0, 1], got "
                          f"{alpha}")
    h = np.asarray(embeddings, dtype=np.float64)
    h = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
    labels, domains = np.asarray(labels), np.asarray(domains)
    doms, classes = np.unique(domains), np.unique(labels)
    # unit prototypes p[k, m] (NaN where domain k has no example of class m)
    protos = np.full((len(doms), len(classes), h.shape[1]), np.nan)
    for a, k in enumerate(doms):
        for b, m in enumerate(classes):
            rows = (domains == k) & (labels == m)
            if rows.any():
                p = h[rows].mean(0)
                protos[a, b] = p / max(np.linalg.norm(p), 1e-12)
    k_idx, m_idx = np.searchsorted(doms, domains), np.searchsorted(classes, labels)
    cos = np.einsum("nd,knd->nk", h, protos[:, m_idx])  # [N, K]: cos to each domain's p[., m]
    own = cos[np.arange(len(h)), k_idx]
    others = ~np.isnan(cos)  # the other domains' prototypes of the example's class
    others[np.arange(len(h)), k_idx] = False
    count = others.sum(1)
    other_mean = np.where(others, cos, 0.0).sum(1) / np.maximum(count, 1)
    scores = np.where(count > 0, alpha * own + (1.0 - alpha) * other_mean, own)
    return scores.astype(np.float32)


@torch.inference_mode()
def mean_pooled(model: torch.nn.Module, data: TextClassificationData, role: str,
                settings: EngineSettings) -> np.ndarray:
    """The model's last hidden state averaged over real tokens, per example of a split (in
    dataset order), computed under the run's autocast without changing the model."""
    device = settings.resolve_device()
    dtype = settings.autocast_dtype(device)
    was_training = model.training
    model.to(device).eval()
    rows = []
    loader = data.loader(role, settings.eval_batch_size)  # length-sorted batches: less padding
    for batch in loader:
        inputs = model_inputs(batch, device)
        with (torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()):
            hidden = model(**inputs, output_hidden_states=True).hidden_states[-1]
        rows.append(masked_mean_pool(hidden, inputs["attention_mask"]).cpu())
    model.train(was_training)
    return restore_order(loader.batch_sampler, torch.cat(rows).numpy())


def _scores(teacher: ModelBundle, data: TextClassificationData, role: str, alpha: float,
            engine: EngineSettings) -> np.ndarray:
    """Prototype scores of a split's rows, from the cache or computed now and cached."""
    labels = np.asarray(data.tokenized[role]["labels"])
    domains = data.domains(role)
    digest = hashlib.sha256()
    update_weights_digest(teacher.model, digest)
    for ids in data.tokenized[role]["input_ids"]:
        digest.update(np.asarray(ids, dtype=np.int32).tobytes() + b"|")
    digest.update(json.dumps({"labels": labels.tolist(), "domains": domains, "alpha": alpha,
                              "max_length": data.max_length}).encode())
    path = cache_root() / "prototypes" / f"{digest.hexdigest()[:24]}.npy"
    if path.is_file():
        log.info("prototype scores of %d '%s' examples read from cache %s", len(labels), role,
                 path)
        return np.load(path)
    embeddings = mean_pooled(teacher.model, data, role, engine)
    names = sorted(set(domains))
    scores = prototype_scores(embeddings, labels, np.asarray([names.index(d) for d in domains]),
                              alpha)
    if (scores < 0).any():  # a negative weight would train the teacher away from the label
        log.warning("%d prototype scores < 0 set to 0 (sample weights must be >= 0)",
                    int((scores < 0).sum()))
        scores = np.maximum(scores, 0.0)
    write_file(path, lambda fh: np.save(fh, scores))
    log.info("prototype scores of %d '%s' examples computed, cached at %s", len(labels), role,
             path)
    return scores


def training_role(data: TextClassificationData, settings: Any) -> str:
    """The split the teacher stage trains on: ``all_train`` (every domain) for
    ``finetune_settings.domains=all`` when the data has a target domain, else ``train``."""
    return "all_train" if settings.domains == "all" and data.has_split("all_train") else "train"


def stage_inputs(teacher: ModelBundle, data: TextClassificationData, settings: Any,
                 engine: EngineSettings) -> tuple[str, torch.nn.Module, dict[str, list], dict]:
    """What the teacher stage trains on and with, for ``teacher.finetune_settings``.

    Returns:
        The split role (:func:`training_role`), the loss
        (:class:`~distillkit.losses.MetaTeacherLoss`), the extra loss columns of that split
        (``loss_sample_weight``, ``loss_domain``) and a summary for ``finetune.json``.
    """
    role = training_role(data, settings)
    columns: dict[str, list] = {}
    info: dict[str, Any] = {"split": role, "examples": len(data.tokenized[role])}
    names: list[str] = []
    if settings.sample_weights == "prototype" or settings.domain_loss_weight > 0:
        domains = data.domains(role)
        names = sorted(set(domains))
        info["domains"] = {n: domains.count(n) for n in names}
        if settings.domain_loss_weight > 0:
            columns["loss_domain"] = [names.index(d) for d in domains]
        if settings.sample_weights == "prototype":
            scores = _scores(teacher, data, role, settings.prototype_alpha, engine)
            columns["loss_sample_weight"] = scores.tolist()
            info["prototype_scores"] = {
                n: round(float(np.mean([s for s, d in zip(scores, domains, strict=True)
                                        if d == n])), 4) for n in names}
            log.info("mean prototype score per domain: %s", info["prototype_scores"])
    loss = MetaTeacherLoss(int(teacher.model.config.hidden_size), max(len(names), 1),
                           settings.domain_loss_weight)
    return role, loss, columns, info
