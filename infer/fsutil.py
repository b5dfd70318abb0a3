"""Atomic file writes: a temp file in the target folder, fsync, then ``os.replace``."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from infer.errors import DiskSpaceError, TimbreError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    If the body raises (a full disk, a cancelled write), the temporary file is removed and an
    existing file at ``path`` is left as it was; a full disk is raised as
    :class:`~infer.errors.DiskSpaceError` naming the folder and its free space.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if is_disk_full(exc) and not isinstance(exc, DiskSpaceError):
            raise disk_full_error(path.parent) from exc
        raise


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` atomically through ``write(binary_file)``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        write(handle)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    import torch

    atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text to ``path`` atomically."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def free_bytes(folder: str | Path) -> int | None:
    """Free bytes on the disk holding ``folder`` (or its nearest existing parent); None if unknown."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def format_size(size: int | None) -> str:
    """``1.2 GB``-style size for messages; ``unknown`` for None."""
    if size is None:
        return "unknown"
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def disk_full_error(folder: str | Path, shown: str | None = None) -> DiskSpaceError:
    """The error for a full disk while writing into ``folder``: its name and the free space.

    Args:
        folder: the folder being written.
        shown: how to name it in the message (default: the path itself).
    """
    free = free_bytes(folder)
    name = shown if shown is not None else str(folder)
    return DiskSpaceError(
        f"the disk holding {name} is full ({format_size(free)} free); free some space and try again",
        str(folder),
        free,
    )


def check_free_space(folder: str | Path, needed: int, what: str, shown: str | None = None) -> None:
    """Raise :class:`DiskSpaceError` when ``needed`` bytes do not fit on ``folder``'s disk.

    Args:
        folder: where the bytes will go.
        needed: how many bytes will be written.
        what: what is being written, for the message (e.g. ``"voices.zip would unpack to"``).
        shown: how to name the folder in the message (default: the path itself).
    """
    free = free_bytes(folder)
    if free is not None and needed > free:
        name = shown if shown is not None else str(folder)
        raise DiskSpaceError(
            f"{what} {format_size(needed)} but the disk holding {name} has only {format_size(free)} free; "
            "free some space or use a smaller archive",
            str(folder),
            free,
        )


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError that means the disk (or the quota) is full."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def describe_os_error(
    exc: OSError, folder: str | Path | None = None, shown: str | None = None
) -> TimbreError:
    """An OSError as one readable :class:`~infer.errors.TimbreError` naming the folder (and free space).

    Args:
        exc: the error (a :class:`TimbreError` already, e.g. :class:`DiskSpaceError`, is returned as is).
        folder: the folder being worked on when the error has no file name of its own.
        shown: how to name that folder in the message (default: its path).
    """
    if isinstance(exc, TimbreError):
        return exc
    filename = getattr(exc, "filename", None)
    where: Path | None = Path(filename).parent if filename else (Path(folder) if folder else None)
    name = shown if (shown is not None and not filename) else (str(where) if where else "the output folder")
    if is_disk_full(exc):
        return disk_full_error(where or Path.cwd(), shown=name)
    reason = exc.strerror or str(exc) or type(exc).__name__
    target = Path(filename).name if filename else None
    return TimbreError(f"could not read or write {target + ' in ' if target else ''}{name}: {reason}")
