"""Separate a file into ``<stem>.vocals.flac`` and ``<stem>.instrumental.flac``, with a stem cache.

The cache is a folder of entries named by :func:`stem_cache_key` (sha256 of the input file's
bytes, the separator's name and version): each holds ``vocals.flac``, ``instrumental.flac`` and
``entry.json``. An entry is written to a temporary folder and renamed into place, so a crash
never leaves a half entry that would be taken for a hit. Converting the same song again with
another voice or other settings finds its stems there and skips separation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from infer.fsutil import atomic_write_text
from infer.progress import ProgressFn, StopFn, report
from infer.separation.base import Separator
from infer.separation.registry import default_separator, get_separator
from infer.separation.streaming import separate_to_files

log = logging.getLogger(__name__)

CACHE_DIR_ENV_VAR = "TIMBRE_STEM_CACHE_DIR"
HASH_CHUNK_BYTES = 1024 * 1024
VOCALS_SUFFIX = ".vocals.flac"
INSTRUMENTAL_SUFFIX = ".instrumental.flac"
_ENTRY_FILE = "entry.json"
_VOCALS_FILE = "vocals.flac"
_INSTRUMENTAL_FILE = "instrumental.flac"


@dataclass(frozen=True)
class SeparatedFiles:
    """What :func:`separate_file` wrote.

    Attributes:
        vocals: path of ``<stem>.vocals.flac``.
        instrumental: path of ``<stem>.instrumental.flac``.
        sample_rate: their rate (the input's).
        channels: their channel count (the input's, 1 or 2).
        is_cached: the stems came from the cache; no separation ran.
        has_vocals: False when the vocal stem is more than 30 dB below the mix (an instrumental).
    """

    vocals: Path
    instrumental: Path
    sample_rate: int
    channels: int
    is_cached: bool
    has_vocals: bool


@dataclass(frozen=True)
class CacheEntry:
    """One cached pair of stems."""

    key: str
    path: Path
    source_name: str
    separator: str
    size_bytes: int
    created_s: float


def default_cache_dir() -> Path:
    """``$TIMBRE_STEM_CACHE_DIR``, else ``~/.cache/timbre/stems``."""
    override = os.environ.get(CACHE_DIR_ENV_VAR, "").strip()
    return Path(override).expanduser() if override else Path.home() / ".cache" / "timbre" / "stems"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def stem_cache_key(content_sha256: str, separator_name: str, separator_version: str) -> str:
    """Entry name for a file's content hash and a separator: ``<sha256[:32]>-<name>-v<version>``."""
    return f"{content_sha256[:32]}-{separator_name}-v{separator_version}"


def list_stem_cache(cache_dir: str | Path | None = None) -> list[CacheEntry]:
    """Every complete entry in the cache, newest first (half-written temporary folders are skipped)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not root.is_dir():
        return []
    entries = []
    for folder in root.iterdir():
        meta_path = folder / _ENTRY_FILE
        if folder.name.startswith(".") or not meta_path.is_file():
            continue
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            size = sum(item.stat().st_size for item in folder.iterdir() if item.is_file())
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable stem-cache entry %s (%s)", folder, exc)
            continue
        entries.append(
            CacheEntry(
                key=folder.name,
                path=folder,
                source_name=str(meta.get("source_name", "")),
                separator=str(meta.get("separator", "")),
                size_bytes=size,
                created_s=float(meta.get("created_s", 0.0)),
            )
        )
    return sorted(entries, key=lambda entry: entry.created_s, reverse=True)


def clear_stem_cache(cache_dir: str | Path | None = None) -> int:
    """Delete every cache entry (and leftover temporary folders); returns the bytes freed."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not root.is_dir():
        return 0
    freed = 0
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        freed += sum(item.stat().st_size for item in folder.rglob("*") if item.is_file())
        shutil.rmtree(folder)
    log.info("stem cache %s cleared (%d bytes)", root, freed)
    return freed


def _copy_into(source: Path, target: Path) -> None:
    """Copy a file atomically (temporary sibling, then rename)."""
    temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        shutil.copyfile(source, temp)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def _store_in_cache(cache_root: Path, key: str, vocals: Path, instrumental: Path, meta: dict) -> None:
    """Write one entry: a temporary folder renamed into place (a concurrent writer's entry wins)."""
    cache_root.mkdir(parents=True, exist_ok=True)
    temp = cache_root / f".{key}.{secrets.token_hex(6)}.tmp"
    temp.mkdir()
    try:
        shutil.copyfile(vocals, temp / _VOCALS_FILE)
        shutil.copyfile(instrumental, temp / _INSTRUMENTAL_FILE)
        atomic_write_text(temp / _ENTRY_FILE, json.dumps(meta, indent=1))
        try:
            os.replace(temp, cache_root / key)
        except OSError:
            log.info("stem-cache entry %s appeared meanwhile; keeping that one", key)
    finally:
        if temp.exists():
            shutil.rmtree(temp)


def separate_file(
    path: str | Path,
    out_dir: str | Path,
    separator: str | Separator | None = None,
    *,
    cache_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> SeparatedFiles:
    """Write ``out_dir/<stem>.vocals.flac`` and ``<stem>.instrumental.flac`` at the input's rate and layout.

    Args:
        path: any audio file ffmpeg decodes (mono or stereo, any rate).
        out_dir: destination folder (created when missing).
        separator: a name from ``SEPARATORS``, a built separator (for a device or precision of your
            choice, see :func:`~infer.separation.registry.get_separator`), or None for the default.
        cache_dir: stem-cache folder; None uses :func:`default_cache_dir`.
        progress: optional ``progress(fraction, message)``.
        should_stop: optional cancel check; raises ``Cancelled`` when it returns True.

    Returns:
        The paths written and what was found.

    Raises:
        BadAudioError: unreadable, corrupt, empty, silent or multichannel input (nothing is written).
        SeparatorUnavailable / AssetError: the separator or its weights are missing.
        Cancelled: ``should_stop`` returned True (nothing is written).
    """
    source = Path(path).expanduser()
    out = Path(out_dir).expanduser()
    if isinstance(separator, Separator):
        engine = separator
    else:
        engine = get_separator(separator or default_separator())
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = stem_cache_key(file_sha256(source), engine.name, engine.version)
    vocals_path = out / f"{source.stem}{VOCALS_SUFFIX}"
    instrumental_path = out / f"{source.stem}{INSTRUMENTAL_SUFFIX}"
    entry = cache_root / key
    if (entry / _ENTRY_FILE).is_file():
        out.mkdir(parents=True, exist_ok=True)
        _copy_into(entry / _VOCALS_FILE, vocals_path)
        _copy_into(entry / _INSTRUMENTAL_FILE, instrumental_path)
        meta = json.loads((entry / _ENTRY_FILE).read_text(encoding="utf-8"))
        log.info("%s: stems from the cache (%s)", source.name, key)
        report(progress, 1.0, "stems from the cache")
        return SeparatedFiles(
            vocals_path,
            instrumental_path,
            int(meta["sample_rate"]),
            int(meta["channels"]),
            True,
            bool(meta.get("has_vocals", True)),
        )
    found = separate_to_files(
        source, engine, (vocals_path, instrumental_path), progress=progress, should_stop=should_stop
    )
    sample_rate, channels, has_vocals = found.sample_rate, found.channels, found.has_vocals
    meta = {
        "source_name": source.name,
        "separator": engine.name,
        "separator_version": engine.version,
        "sample_rate": sample_rate,
        "channels": channels,
        "has_vocals": has_vocals,
        "created_s": time.time(),
    }
    try:
        _store_in_cache(cache_root, key, vocals_path, instrumental_path, meta)
    except OSError as exc:
        log.warning("could not store the stems of %s in the cache %s: %s", source.name, cache_root, exc)
    report(progress, 1.0, "separated")
    return SeparatedFiles(vocals_path, instrumental_path, sample_rate, channels, False, has_vocals)
