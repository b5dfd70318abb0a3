"""Models from a URL: fetch a model zip (or a ``.pth`` and its ``.index``), then import it like a local file.

The transfer is :func:`infer.assets.download.download_url` (``.part`` files resumed with HTTP
Range, a size limit, a short connect deadline so an offline machine fails at once); the checks
are :mod:`infer.library`'s (content-based detection of RVC and Applio layouts, traversal and
size guards, data-only loading). What a download is, is read from its bytes, not its name: a
torch ``.pth`` is itself a zip (with ``<archive>/data.pkl``), a model zip holds a ``.pth``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.parse
import zipfile
from pathlib import Path

from infer.assets.download import download_url
from infer.library import ImportLimits, ModelImportError, import_model_files, import_model_zip
from infer.progress import ProgressFn, StopFn, sub_progress

log = logging.getLogger(__name__)

DOWNLOADS_ENV_VAR = "TIMBRE_DOWNLOAD_DIR"
PICKLE_MAGIC = b"\x80"
"""First byte of a legacy (non-zip) torch pickle."""


def is_url(source: str | os.PathLike[str]) -> bool:
    """True for ``http://`` and ``https://`` addresses."""
    return urllib.parse.urlsplit(str(source)).scheme in ("http", "https")


def default_download_dir() -> Path:
    """``$TIMBRE_DOWNLOAD_DIR``, else ``~/.cache/timbre/downloads``: where URL imports resume from."""
    override = os.environ.get(DOWNLOADS_ENV_VAR, "").strip()
    return Path(override).expanduser() if override else Path.home() / ".cache" / "timbre" / "downloads"


def _download_name(url: str) -> str:
    """A stable, safe file name for ``url`` (the same URL resumes the same ``.part``)."""
    base = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "download"
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base)[-80:]
    return f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{base}"


def sniff_kind(path: Path) -> str:
    """``'zip'`` (a model zip), ``'pth'`` (a torch file) or ModelImportError, from the bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == PICKLE_MAGIC:
        return "pth"
    if head != b"PK\x03\x04":
        raise ModelImportError(f"{path.name} is neither a model zip nor a .pth (it starts {head!r})")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as exc:
        raise ModelImportError(f"{path.name} is a broken zip ({exc})") from exc
    is_torch = any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names) and not any(
        n.lower().endswith(".pth") for n in names
    )
    return "pth" if is_torch else "zip"


def fetch(
    source: str,
    *,
    max_bytes: int,
    download_dir: Path | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    connect_timeout_s: float = 5.0,
) -> Path:
    """``source`` as a local file: a path as it is, a URL downloaded (resuming an earlier try)."""
    if not is_url(source):
        return Path(source)
    dest = (download_dir or default_download_dir()) / _download_name(source)
    if dest.is_file():
        return dest
    return download_url(
        source,
        dest,
        max_bytes=max_bytes,
        progress=progress,
        should_stop=should_stop,
        connect_timeout_s=connect_timeout_s,
    )


def import_model_source(
    source: str,
    models_dir: str | os.PathLike[str],
    *,
    index: str | None = None,
    name: str | None = None,
    overwrite: bool = False,
    max_bytes: int = ImportLimits().max_total_bytes,
    download_dir: Path | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    connect_timeout_s: float = 5.0,
) -> str:
    """Import a model from a path or an http(s) URL (zip, or ``.pth`` + optional ``index``); its name.

    Raises:
        AssetError: the download failed (offline, HTTP error, over ``max_bytes``; see
            :func:`~infer.assets.download.download_url`).
        ModelImportError, UnsafeFileError, ModelLoadError, ModelExistsError: as the local imports.
    """
    fetch_progress = sub_progress(progress, 0.0, 0.8)
    files = [
        fetch(
            s,
            max_bytes=max_bytes,
            download_dir=download_dir,
            progress=fetch_progress,
            should_stop=should_stop,
            connect_timeout_s=connect_timeout_s,
        )
        for s in (source, index)
        if s
    ]
    downloaded = [p for p, s in zip(files, (source, index), strict=False) if s and is_url(s)]
    try:
        installed = _import_local(
            files,
            models_dir,
            name=name,
            overwrite=overwrite,
            max_bytes=max_bytes,
            is_download=is_url(source),
            has_index=bool(index),
            downloaded=downloaded,
        )
    finally:
        for path in downloaded:  # imported or refused: a finished download is not kept
            path.unlink(missing_ok=True)
    if progress is not None:
        progress(1.0, f"imported {installed}")
    log.info("imported %s from %s", installed, source)
    return installed


def _as_suffix(path: Path, suffix: str, downloaded: list[Path]) -> Path:
    """A downloaded file renamed to end in ``suffix`` (the local imports read the type from it)."""
    if path.suffix.lower() == suffix or path not in downloaded:
        return path
    renamed = path.with_suffix(suffix)
    os.replace(path, renamed)
    downloaded[downloaded.index(path)] = renamed
    return renamed


def _import_local(
    files: list[Path],
    models_dir: str | os.PathLike[str],
    *,
    name: str | None,
    overwrite: bool,
    max_bytes: int,
    is_download: bool,
    has_index: bool,
    downloaded: list[Path],
) -> str:
    model_file = files[0]
    if not model_file.is_file():
        raise ModelImportError(f"{model_file} does not exist")
    kind = sniff_kind(model_file)
    if kind == "zip":
        if has_index:
            raise ModelImportError("--index goes with a .pth; a model zip carries its own index")
        limits = ImportLimits(max_total_bytes=max(max_bytes, 1))
        return import_model_zip(model_file, models_dir, name=name, overwrite=overwrite, limits=limits)
    pth = _as_suffix(model_file, ".pth", downloaded)
    index_file = _as_suffix(files[1], ".index", downloaded) if len(files) > 1 else None
    default_name = name or (re.sub(r"^[0-9a-f]{12}-", "", pth.stem) if is_download else None)
    return import_model_files(pth, index_file, models_dir, name=default_name, overwrite=overwrite)
