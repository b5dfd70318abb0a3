"""The pitch-extractor contract shared by every F0 method, and helpers they all use.

Every extractor takes 16 kHz mono float32 audio and returns one F0 value per 10 ms
(hop 160 samples at 16 kHz), in Hz, with 0 for unvoiced frames and never NaN.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from infer.errors import AudioDecodeError, ModelLoadError, TimbreError
from infer.progress import ProgressFn, StopFn

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000
HOP_LENGTH = 160
FRAME_RATE_HZ = SAMPLE_RATE_HZ // HOP_LENGTH
DEFAULT_F0_MIN_HZ = 50.0
DEFAULT_F0_MAX_HZ = 1100.0


class PitchMethodUnavailable(TimbreError):
    """A pitch method is unknown, or a package or weight file it needs is missing."""


@runtime_checkable
class PitchExtractor(Protocol):
    """One F0 method. Instances are built (and their models loaded) once by the registry."""

    name: str

    def extract(
        self,
        audio_16k: np.ndarray,
        *,
        p_len: int | None = None,
        f0_min_hz: float = DEFAULT_F0_MIN_HZ,
        f0_max_hz: float = DEFAULT_F0_MAX_HZ,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> np.ndarray:
        """F0 track of 16 kHz audio.

        Args:
            audio_16k: (L,) float32 mono samples at 16 kHz.
            p_len: number of frames to return; defaults to ``L // 160``.
            f0_min_hz: lowest F0 the method may report.
            f0_max_hz: highest F0 the method may report.
            progress: optional progress callback for long inputs.
            should_stop: optional cancel check; raises ``Cancelled`` when it returns True.

        Returns:
            (p_len,) float32 F0 in Hz at 100 frames/s; 0 marks unvoiced frames.
        """
        ...


def check_audio(audio_16k: np.ndarray) -> np.ndarray:
    """Validate mono 16 kHz audio and return it as a contiguous (L,) float32 array."""
    audio = np.asarray(audio_16k)
    if audio.ndim != 1:
        raise AudioDecodeError(
            f"pitch extraction needs mono audio of shape (L,), got shape {audio.shape}; "
            "mix the channels down first"
        )
    if not np.issubdtype(audio.dtype, np.floating):
        raise AudioDecodeError(
            f"pitch extraction needs float samples in [-1, 1], got dtype {audio.dtype}; convert it first"
        )
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if not np.all(np.isfinite(audio)):
        raise AudioDecodeError("the audio contains NaN or infinite samples; decode or resample it again")
    return audio


def check_range(f0_min_hz: float, f0_max_hz: float) -> None:
    """Reject an F0 search range that no method can use."""
    if not (0.0 < f0_min_hz < f0_max_hz):
        raise TimbreError(
            f"invalid F0 range {f0_min_hz}..{f0_max_hz} Hz: need 0 < f0_min_hz < f0_max_hz "
            "(the usual range is 50..1100 Hz)"
        )


def resolve_p_len(n_samples: int, p_len: int | None) -> int:
    """Frame count to return: ``p_len`` if given, else one frame per full hop."""
    if p_len is None:
        return n_samples // HOP_LENGTH
    if p_len < 0:
        raise TimbreError(f"p_len must be >= 0, got {p_len}")
    return int(p_len)


def fit_length(f0_hz: np.ndarray, p_len: int) -> np.ndarray:
    """Crop or right-pad with zeros (unvoiced) to exactly ``p_len`` frames; (p_len,) float32."""
    f0 = np.asarray(f0_hz, dtype=np.float32).reshape(-1)
    f0 = f0[:p_len] if f0.shape[0] >= p_len else np.pad(f0, (0, p_len - f0.shape[0]))
    return finalize(f0)


def finalize(f0_hz: np.ndarray) -> np.ndarray:
    """Make an F0 track safe to hand out: float32, no NaN/inf, no negative values."""
    f0 = np.nan_to_num(np.asarray(f0_hz, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    f0[f0 < 0.0] = 0.0
    return np.ascontiguousarray(f0)


def gate_range(f0_hz: np.ndarray, f0_min_hz: float, f0_max_hz: float) -> np.ndarray:
    """Mark frames whose F0 lies outside ``[f0_min_hz, f0_max_hz]`` as unvoiced (0)."""
    f0 = np.array(f0_hz, dtype=np.float32, copy=True)
    f0[(f0 < f0_min_hz) | (f0 > f0_max_hz)] = 0.0
    return f0


def package_asset(package: str, *parts: str) -> Path | None:
    """Path of a data file shipped inside an installed package, found without importing the package.

    Returns None when the package is not installed or the file is absent.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location).joinpath(*parts)
        if candidate.is_file():
            return candidate
    return None


def load_state_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` whose error names the missing, unexpected or mis-shaped keys."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} != {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and tuple(state[key].shape) != tuple(value.shape)
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if keys:
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise ModelLoadError(
            f"{source}: the weights do not fit {type(module).__name__} ({'; '.join(problems)}); "
            "the file is not this model or is damaged"
        )
    module.load_state_dict(state, strict=True)
