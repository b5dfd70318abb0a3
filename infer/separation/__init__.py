"""Vocal separation: one :class:`Separator` protocol, a table of separators, file and cache helpers.

::

    separator = get_separator(default_separator())
    stems = separator.separate(audio_c_l, sample_rate)          # stems.vocals, stems.instrumental
    files = separate_file("song.mp3", "out/", separator)       # out/song.vocals.flac, .instrumental.flac
"""

from infer.separation.base import SeparationError, Separator, SeparatorUnavailable, Stems
from infer.separation.files import (
    CacheEntry,
    SeparatedFiles,
    clear_stem_cache,
    default_cache_dir,
    list_stem_cache,
    separate_file,
    stem_cache_key,
)
from infer.separation.registry import (
    SEPARATOR_TABLE,
    SEPARATORS,
    available_separators,
    clear_separator_cache,
    default_separator,
    get_separator,
    separator_spec,
)

__all__ = [
    "SEPARATORS",
    "SEPARATOR_TABLE",
    "CacheEntry",
    "SeparatedFiles",
    "SeparationError",
    "Separator",
    "SeparatorUnavailable",
    "Stems",
    "available_separators",
    "clear_separator_cache",
    "clear_stem_cache",
    "default_cache_dir",
    "default_separator",
    "get_separator",
    "list_stem_cache",
    "separate_file",
    "separator_spec",
    "stem_cache_key",
]
