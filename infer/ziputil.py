"""Extract untrusted zip archives without letting them escape, overwrite or flood the disk.

Every member is checked before anything is written: names that climb out of the target
(``..``), absolute names (``/x``, ``C:\\x``, ``\\\\server\\x``), links and device files,
duplicates, declared sizes over the limits and too many members. While extracting, the
bytes actually produced are counted, so an archive whose headers understate its sizes
(a zip bomb) is stopped. On any error the partial extraction is removed.
"""

from __future__ import annotations

import logging
import lzma
import os
import re
import shutil
import stat
import tempfile
import time
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from infer.errors import UnsafeFileError
from infer.fsutil import check_free_space

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
MAX_NAME_COMPONENT_BYTES = 255
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_SUPPORTED_COMPRESSION = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)


@dataclass(frozen=True)
class SkippedMember:
    """A member that was left out on purpose, with the reason."""

    name: str
    reason: str


@dataclass(frozen=True)
class ExtractResult:
    """What :func:`safe_extract_zip` wrote.

    Attributes:
        dest_dir: the folder the members were extracted into.
        extracted: paths of the written files, in archive order.
        skipped: members left out (wrong type, macOS metadata, encrypted...).
        total_bytes: uncompressed bytes written.
    """

    dest_dir: Path
    extracted: tuple[Path, ...]
    skipped: tuple[SkippedMember, ...]
    total_bytes: int


def _normalise_suffixes(suffixes: frozenset[str] | None) -> frozenset[str] | None:
    if suffixes is None:
        return None
    return frozenset(s.lower() if s.startswith(".") else "." + s.lower() for s in suffixes)


def _member_parts(info: zipfile.ZipInfo, archive: str) -> tuple[str, ...]:
    """Split a member name into safe path components, or raise UnsafeFileError."""
    raw = info.filename
    name = raw.replace("\\", "/")
    where = f"zip member {raw!r} in {archive}"
    if not name.strip("/"):
        raise UnsafeFileError(f"{where} has an empty name; the archive is malformed, re-create it")
    if any(ord(ch) < 32 for ch in name):
        raise UnsafeFileError(f"{where} has control characters in its name; refusing to extract it")
    if name.startswith("/"):
        raise UnsafeFileError(f"{where} is an absolute path; archives must only hold relative paths")
    if _DRIVE_RE.match(name):
        raise UnsafeFileError(f"{where} names a Windows drive; archives must only hold relative paths")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if not parts:
        raise UnsafeFileError(f"{where} names no file; the archive is malformed, re-create it")
    if ".." in parts:
        raise UnsafeFileError(f"{where} climbs out of the target folder with '..'; refusing the archive")
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_COMPONENT_BYTES:
            raise UnsafeFileError(f"{where} has a name component longer than 255 bytes")
    return parts


def _member_type_error(info: zipfile.ZipInfo, archive: str) -> str | None:
    """Return why the member is not a plain file or folder, or None."""
    mode = info.external_attr >> 16
    if mode == 0:
        return None
    if stat.S_ISLNK(mode):
        return f"zip member {info.filename!r} in {archive} is a symbolic link; links are not allowed"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) and stat.S_IFMT(mode) != 0:
        return f"zip member {info.filename!r} in {archive} is not a regular file (mode {oct(mode)})"
    return None


def _skip_reason(
    info: zipfile.ZipInfo, parts: tuple[str, ...], suffixes: frozenset[str] | None
) -> str | None:
    if parts[0] == "__MACOSX" or parts[-1].startswith("._") or parts[-1] == ".DS_Store":
        return "macOS metadata"
    if suffixes is not None:
        suffix = Path(parts[-1]).suffix.lower()
        if suffix not in suffixes:
            return f"file type {suffix or '(none)'!r} is not accepted"
    if info.flag_bits & 0x1:
        return "encrypted; extract it yourself and add the files directly"
    if info.compress_type not in _SUPPORTED_COMPRESSION:
        return f"unsupported compression method {info.compress_type}"
    return None


def _plan(
    zf: zipfile.ZipFile,
    archive: str,
    *,
    max_total_bytes: int,
    max_files: int,
    max_member_bytes: int,
    suffixes: frozenset[str] | None,
) -> tuple[list[tuple[zipfile.ZipInfo, tuple[str, ...]]], list[SkippedMember]]:
    """Check every member; return (members to write, skipped members)."""
    infos = zf.infolist()
    file_infos = [i for i in infos if not i.is_dir()]
    if len(file_infos) > max_files:
        raise UnsafeFileError(
            f"{archive} holds {len(file_infos)} files, more than the limit of {max_files}; "
            "split it into smaller archives"
        )
    to_write: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
    skipped: list[SkippedMember] = []
    seen: dict[str, str] = {}
    dir_keys: set[str] = set()
    total = 0
    for info in infos:
        parts = _member_parts(info, archive)
        error = _member_type_error(info, archive)
        if error is not None:
            raise UnsafeFileError(error)
        if info.is_dir():
            continue
        reason = _skip_reason(info, parts, suffixes)
        if reason is not None:
            skipped.append(SkippedMember(info.filename, reason))
            continue
        if info.file_size > max_member_bytes:
            raise UnsafeFileError(
                f"zip member {info.filename!r} in {archive} declares {info.file_size} bytes, "
                f"more than the per-file limit of {max_member_bytes}"
            )
        total += info.file_size
        if total > max_total_bytes:
            raise UnsafeFileError(
                f"{archive} would unpack to more than {max_total_bytes} bytes "
                f"(limit reached at member {info.filename!r}); use a smaller archive"
            )
        key = unicodedata.normalize("NFC", "/".join(parts)).casefold()
        if key in seen:
            raise UnsafeFileError(
                f"zip member {info.filename!r} in {archive} has the same path as {seen[key]!r}; "
                "rename one of them"
            )
        seen[key] = info.filename
        for depth in range(1, len(parts)):
            dir_keys.add(unicodedata.normalize("NFC", "/".join(parts[:depth])).casefold())
        to_write.append((info, parts))
    for key, name in seen.items():
        if key in dir_keys:
            raise UnsafeFileError(f"zip member {name!r} in {archive} is both a file and a folder")
    return to_write, skipped


def _corrupt(info: zipfile.ZipInfo, archive: str, exc: BaseException) -> UnsafeFileError:
    return UnsafeFileError(
        f"zip member {info.filename!r} in {archive} is corrupt or lies about its size ({exc}); "
        "re-create the archive"
    )


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, archive: str) -> int:
    """Stream one member to ``target``, counting the bytes; return the bytes written."""
    written = 0
    with open(target, "xb") as dst:
        try:
            src = zf.open(info)
        except (zipfile.BadZipFile, EOFError, OSError, RuntimeError) as exc:
            raise _corrupt(info, archive, exc) from exc
        with src:
            while True:
                try:
                    chunk = src.read(CHUNK_BYTES)
                except (zipfile.BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
                    raise _corrupt(info, archive, exc) from exc
                if not chunk:
                    break
                written += len(chunk)
                if written > info.file_size:
                    raise UnsafeFileError(
                        f"zip member {info.filename!r} in {archive} unpacks to more bytes than its "
                        f"header declares ({info.file_size}); the archive looks like a zip bomb"
                    )
                dst.write(chunk)
    if written != info.file_size:
        raise UnsafeFileError(
            f"zip member {info.filename!r} in {archive} unpacked to {written} bytes but declares "
            f"{info.file_size}; re-create the archive"
        )
    return written


def _set_mtime(target: Path, info: zipfile.ZipInfo) -> None:
    """Give the file the member's timestamp, so extracting the same archive twice looks the same."""
    try:
        stamp = time.mktime((*info.date_time, 0, 0, -1))
        os.utime(target, (stamp, stamp))
    except (OverflowError, ValueError, OSError):
        log.debug("kept the extraction time as mtime of %s", target)


def safe_extract_zip(
    zip_path: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    *,
    max_total_bytes: int,
    max_files: int,
    max_member_bytes: int,
    allowed_suffixes: frozenset[str] | None = None,
) -> ExtractResult:
    """Extract a zip archive from an untrusted source into ``dest_dir``.

    Args:
        zip_path: the archive.
        dest_dir: target folder; it must not exist yet or be empty. Members are staged in a
            sibling temporary folder and moved into place only when all of them succeeded.
        max_total_bytes: limit on the uncompressed size of all extracted members.
        max_files: limit on the number of file members (all of them, skipped ones included).
        max_member_bytes: limit on one member's uncompressed size.
        allowed_suffixes: extract only names ending in one of these (case-insensitive,
            e.g. ``{".wav", ".flac"}``); others are skipped and reported. None allows all.

    Returns:
        The written paths (under ``dest_dir``) and the skipped members with reasons. Written
        files get the member's timestamp as mtime.

    Raises:
        UnsafeFileError: the archive is unreadable, or a member is unsafe or over a limit.
            Nothing is left behind in that case.
        DiskSpaceError: the members' declared total does not fit in the free space of
            ``dest_dir``'s disk (checked before anything is written).
    """
    zip_path = Path(zip_path)
    dest = Path(dest_dir)
    archive = zip_path.name
    suffixes = _normalise_suffixes(allowed_suffixes)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UnsafeFileError(f"cannot extract {archive}: target {dest} exists and is not an empty folder")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UnsafeFileError(f"{zip_path} is not a readable zip archive ({exc})") from exc
    with zf:
        to_write, skipped = _plan(
            zf,
            archive,
            max_total_bytes=max_total_bytes,
            max_files=max_files,
            max_member_bytes=max_member_bytes,
            suffixes=suffixes,
        )
        planned = sum(info.file_size for info, _ in to_write)
        check_free_space(dest.parent, planned, f"{archive} would unpack to", shown=dest.parent.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
        staging_root = staging.resolve()
        relative: list[Path] = []
        total = 0
        try:
            for info, parts in to_write:
                target = staging.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.parent.resolve().is_relative_to(staging_root):
                    raise UnsafeFileError(f"zip member {info.filename!r} in {archive} escapes the target")
                total += _copy_member(zf, info, target, archive)
                _set_mtime(target, info)
                relative.append(Path(*parts))
            if dest.exists():
                dest.rmdir()
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log.info("extracted %d files (%d bytes) from %s, skipped %d", len(relative), total, archive, len(skipped))
    return ExtractResult(
        dest_dir=dest,
        extracted=tuple(dest / r for r in relative),
        skipped=tuple(skipped),
        total_bytes=total,
    )
