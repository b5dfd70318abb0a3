"""Pure F0 helpers: transposition, RVC's coarse (mel-bin) pitch and its median filter.

The coarse mapping is the one RVC uses at inference (``Pipeline.get_f0``) and in
training (``coarse_f0``): mel = 1127 ln(1 + f/700), scaled so 50 Hz -> 1 and
1100 Hz -> 255, clipped to 1..255 and rounded half-to-even.
"""

from __future__ import annotations

import numpy as np

COARSE_F0_MIN_HZ = 50.0
COARSE_F0_MAX_HZ = 1100.0
COARSE_MIN = 1
COARSE_MAX = 255
MEDIAN_KERNEL_FRAMES = 3
MEDIAN_MIN_RADIUS = 3


def _hz_to_mel(f0_hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(f0_hz, dtype=np.float64) / 700.0)


_MEL_MIN = float(_hz_to_mel(COARSE_F0_MIN_HZ))
_MEL_MAX = float(_hz_to_mel(COARSE_F0_MAX_HZ))


def shift_semitones(f0_hz: np.ndarray, semitones: float) -> np.ndarray:
    """Transpose an F0 track by ``semitones`` (f * 2**(semitones/12)); unvoiced 0 stays 0.

    Args:
        f0_hz: (T,) F0 in Hz.
        semitones: shift, positive is up.

    Returns:
        (T,) shifted F0, float32 if the input was float32, else float64.
    """
    f0 = np.asarray(f0_hz)
    dtype = np.float32 if f0.dtype == np.float32 else np.float64
    return f0.astype(dtype) * dtype(2.0 ** (semitones / 12.0))


def f0_to_coarse(f0_hz: np.ndarray) -> np.ndarray:
    """RVC's coarse pitch: (T,) Hz -> (T,) int32 in 1..255 (0 Hz and <= 50 Hz -> 1, >= 1100 Hz -> 255)."""
    f0 = np.asarray(f0_hz, dtype=np.float64)
    f0 = np.where(np.isfinite(f0), f0, 0.0)
    mel = _hz_to_mel(f0)
    voiced = mel > 0
    mel[voiced] = (mel[voiced] - _MEL_MIN) * (COARSE_MAX - COARSE_MIN) / (_MEL_MAX - _MEL_MIN) + COARSE_MIN
    mel[mel <= COARSE_MIN] = COARSE_MIN
    mel[mel > COARSE_MAX] = COARSE_MAX
    return np.rint(mel).astype(np.int32)


def median_filter_f0(f0_hz: np.ndarray, radius: int) -> np.ndarray:
    """RVC's ``filter_radius``: a radius of 3 or more applies a 3-frame median filter, else nothing.

    RVC exposes the setting as a radius but always filters with a 3-tap kernel
    (``scipy.signal.medfilt(f0, 3)``, zero-padded at the ends); smaller radii disable it.

    Args:
        f0_hz: (T,) F0 in Hz.
        radius: RVC's ``filter_radius`` (0..7 in its UI).

    Returns:
        (T,) filtered F0 with the input's float dtype.
    """
    f0 = np.asarray(f0_hz)
    dtype = np.float32 if f0.dtype == np.float32 else np.float64
    f0 = f0.astype(dtype)
    if radius < MEDIAN_MIN_RADIUS or f0.shape[0] == 0:
        return f0.copy()
    padded = np.pad(f0, (1, 1))
    windows = np.stack([padded[:-2], padded[1:-1], padded[2:]], axis=0)
    return np.median(windows, axis=0).astype(dtype)
