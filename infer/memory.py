"""Giving freed heap memory back to the operating system during long computations."""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable


def release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    glibc raises its mmap threshold after large frees, so later tensors of a few megabytes come
    from the heap, and the heap's free holes are kept resident: across the segments of a long
    input the resident set would creep up by tens of megabytes per segment. Trimming between
    segments keeps it flat, at the cost of faulting those pages in again.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # no glibc (e.g. musl)
        return None
