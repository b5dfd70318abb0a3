"""Helpers shared by the typed model configs: the config error type and strict dict parsing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from infer.errors import TimbreError

__all__ = ["ConfigError", "check_config_keys"]


class ConfigError(TimbreError, ValueError):
    """A model config has an unknown key, a missing key, or a value out of range."""


def check_config_keys(cls: type, data: Mapping[str, Any], *, require_all: bool) -> None:
    """Raise :class:`ConfigError` when ``data`` has keys that are not fields of dataclass ``cls``.

    With ``require_all`` every field without a default must be present too.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown}; valid keys are {sorted(known)}")
    if require_all:
        missing = sorted(known - set(data))
        if missing:
            raise ConfigError(f"{cls.__name__}: missing keys {missing}")
