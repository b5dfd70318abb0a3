"""Exception types whose messages are written for the person using Timbre."""

from __future__ import annotations


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
