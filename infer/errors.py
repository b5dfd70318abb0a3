"""Exception types whose messages are written for the person using Timbre."""

from __future__ import annotations

import errno


class TimbreError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class UnsafeFileError(TimbreError):
    """A file would run code, escape its folder, or is otherwise not plain data."""


class ModelLoadError(TimbreError):
    """A model or checkpoint file cannot be read or does not fit the expected layout."""


class AudioDecodeError(TimbreError):
    """An input cannot be decoded as audio, or decodes to something unusable."""


class AssetError(TimbreError):
    """A pretrained file is missing, failed its checksum, or could not be downloaded."""


class Cancelled(TimbreError):
    """A long call stopped because its ``should_stop`` callback returned True."""


class DiskSpaceError(TimbreError, OSError):
    """A folder's disk is full, or too full for what is about to be written there.

    Also an :class:`OSError` (errno ENOSPC), so code that handles a failed write still does.

    Attributes:
        folder: the folder that was being written.
        free_bytes: the free space on its disk when the error was raised (None if unknown).
    """

    def __init__(self, message: str, folder: str, free_bytes: int | None) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC
        self.folder = folder
        self.free_bytes = free_bytes
