"""Pure signal helpers used by the conversion pipeline, with RVC's exact numeric semantics.

Every function here takes arrays and returns new arrays; nothing is modified in place.
Coefficient tables are cached on every argument that shapes them.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
from scipy import signal

log = logging.getLogger(__name__)

HUBERT_SAMPLE_RATE = 16000
HIGHPASS_ORDER = 5
HIGHPASS_CUTOFF_HZ = 48.0
F0_HOP_LENGTH = 160
"""Samples per pitch frame at 16 kHz (100 frames per second)."""

SPLIT_X_CENTER_S = 38.0
SPLIT_X_QUERY_S = 6.0
SPLIT_X_MAX_S = 41.0
"""RVC's CPU / fp32 long-input split settings (the fp16 GPU config uses 60 / 10 / 65)."""

RMS_FLOOR = 1e-6
"""Lower bound on the converted signal's RMS envelope before it is raised to a negative power."""
RMS_MIX_BLOCK_SAMPLES = 1 << 20
"""Output samples per block of :func:`rms_mix` (keeps its temporaries small on long inputs)."""


@lru_cache(maxsize=16)
def butter_highpass(order: int, cutoff_hz: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Butterworth high-pass coefficients ``(b, a)``, float64, read-only (cached).

    Same as ``scipy.signal.butter(N=order, Wn=cutoff_hz, btype="high", fs=sample_rate)``.
    """
    if order < 1:
        raise ValueError(f"filter order must be at least 1, got {order}")
    if not 0 < cutoff_hz < sample_rate / 2:
        raise ValueError(f"cutoff {cutoff_hz} Hz must lie between 0 and Nyquist ({sample_rate / 2} Hz)")
    b, a = signal.butter(N=order, Wn=cutoff_hz, btype="high", fs=sample_rate)
    b = np.asarray(b, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    b.setflags(write=False)
    a.setflags(write=False)
    return b, a


def highpass_filtfilt(x: np.ndarray, sample_rate: int = HUBERT_SAMPLE_RATE) -> np.ndarray:
    """Zero-phase 5th-order 48 Hz Butterworth high-pass, as RVC applies before inference.

    Args:
        x: (L,) audio; must be longer than 18 samples (scipy's filtfilt pad length).
        sample_rate: rate of ``x`` in Hz (RVC uses 16000).

    Returns:
        (L,) float64, like ``scipy.signal.filtfilt`` (RVC keeps the float64 result).
    """
    b, a = butter_highpass(HIGHPASS_ORDER, HIGHPASS_CUTOFF_HZ, sample_rate)
    return signal.filtfilt(b, a, np.asarray(x))


def highpass_lfilter(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Causal 5th-order 48 Hz Butterworth high-pass, as RVC's training preprocess applies.

    Args:
        x: (L,) audio at ``sample_rate``.
        sample_rate: rate of ``x`` in Hz (the training sample rate).

    Returns:
        (L,) float64.
    """
    b, a = butter_highpass(HIGHPASS_ORDER, HIGHPASS_CUTOFF_HZ, sample_rate)
    return signal.lfilter(b, a, np.asarray(x))


def _frame_rms(y: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """Centred, zero-padded frame RMS in float32, the way librosa >= 0.10 computes it: (n_frames,)."""
    half = frame_length // 2
    padded = np.pad(np.asarray(y), (half, half), mode="constant")
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame_length)[::hop_length]
    power = np.mean(np.square(frames, dtype=np.float32), axis=-1)
    return np.sqrt(power)


def _interp_linear(values: np.ndarray, size: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Linear resize of (N,) to (size,), ``align_corners=False`` like torch ``F.interpolate``; float32.

    ``start``/``stop`` return only that slice of the result (computed alone, bit for bit the same).
    """
    n_in = values.shape[0]
    scale = np.float32(n_in) / np.float32(size)
    # int64 -> float32 rounds like numpy's float32 arange does past 2**24.
    dst = np.arange(start, size if stop is None else stop, dtype=np.int64).astype(np.float32)
    src = scale * (dst + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam1 = src - i0.astype(np.float32)
    lam0 = np.float32(1.0) - lam1
    return lam0 * values[i0] + lam1 * values[i1]


def rms_mix(
    source: np.ndarray, source_sr: int, target: np.ndarray, target_sr: int, rate: float
) -> np.ndarray:
    """Give ``target`` the loudness envelope of ``source`` in proportion ``1 - rate`` (RVC ``change_rms``).

    Both envelopes are frame RMS over half-second frames (frame ``sr // 2 * 2``, hop ``sr // 2``,
    centred, zero padded), linearly stretched to ``len(target)``; the target's envelope is floored at
    ``RMS_FLOOR``. Then ``target * rms_source**(1 - rate) * rms_target**(rate - 1)``.
    ``rate = 1`` keeps the target's own envelope (the pipeline skips the call then).

    Args:
        source: (L1,) input audio (RVC passes the high-passed 16 kHz input).
        source_sr: rate of ``source`` in Hz.
        target: (L2,) converted audio.
        target_sr: rate of ``target`` in Hz.
        rate: share of the converted signal's own envelope, in [0, 1].

    Returns:
        (L2,) float32, a new array (RVC scales ``target`` in place; this does not).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rms mix rate must be in [0, 1], got {rate}")
    target32 = np.asarray(target, dtype=np.float32)
    if target32.shape[0] == 0:
        return target32.copy()
    rms_source = _frame_rms(source, source_sr // 2 * 2, source_sr // 2)
    rms_target = _frame_rms(target32, target_sr // 2 * 2, target_sr // 2)
    size = target32.shape[0]
    out = np.empty(size, dtype=np.float32)
    for start in range(0, size, RMS_MIX_BLOCK_SAMPLES):  # per-sample maths: blocks change nothing
        stop = min(size, start + RMS_MIX_BLOCK_SAMPLES)
        env_source = _interp_linear(rms_source, size, start, stop)
        env_target = np.maximum(_interp_linear(rms_target, size, start, stop), np.float32(RMS_FLOOR))
        gain = np.power(env_source, np.float32(1.0 - rate)) * np.power(env_target, np.float32(rate - 1.0))
        np.multiply(target32[start:stop], gain, out=out[start:stop])
    return out


def find_split_points(
    audio_16k: np.ndarray,
    *,
    sample_rate: int = HUBERT_SAMPLE_RATE,
    window: int = F0_HOP_LENGTH,
    x_center_s: float = SPLIT_X_CENTER_S,
    x_query_s: float = SPLIT_X_QUERY_S,
    x_max_s: float = SPLIT_X_MAX_S,
) -> list[int]:
    """Cut points for long inputs: the quietest spot within ±``x_query_s`` of every ``x_center_s``.

    Mirrors RVC's pipeline: the input is reflect-padded by ``window // 2`` on each side; if that padded
    length exceeds ``x_max_s`` seconds, a moving *signed* sum over ``window`` samples is taken
    (``sum[j] = padded[j] + ... + padded[j + window - 1]``, accumulated shift by shift in the input's
    dtype, like RVC, so ties resolve identically), and for each ``t`` in
    ``range(t_center, len(audio), t_center)`` the point ``t - t_query + argmin(|sum[t - t_query :
    t + t_query]|)`` is kept (first minimum wins). Shorter inputs give no points.

    Args:
        audio_16k: (L,) the high-passed 16 kHz input *before* the ``x_pad`` reflect padding.
        sample_rate: rate of ``audio_16k`` in Hz.
        window: moving-sum length in samples (the pitch hop).
        x_center_s: spacing of the nominal cut points in seconds.
        x_query_s: half-width of the search range around each nominal point in seconds.
        x_max_s: inputs up to this long (plus ``window``) are not split.

    Returns:
        Cut points as sample indices into ``audio_16k`` (RVC's ``opt_ts``), increasing. The pipeline
        rounds each down to a multiple of ``window`` and offsets by its own padding.
    """
    x = np.asarray(audio_16k)
    if x.ndim != 1:
        raise ValueError(f"audio must be 1-D, got shape {x.shape}")
    t_center = round(sample_rate * x_center_s)
    t_query = round(sample_rate * x_query_s)
    t_max = round(sample_rate * x_max_s)
    if not 0 < t_query < t_center:
        raise ValueError(f"need 0 < x_query_s < x_center_s, got {x_query_s} and {x_center_s}")
    half = window // 2
    if x.shape[0] + 2 * half <= t_max:
        return []
    padded = np.pad(x, (half, half), mode="reflect")
    points = []
    for t in range(t_center, x.shape[0], t_center):
        # The moving sum over the search range only, added shift by shift as over the whole input.
        lo, hi = t - t_query, min(t + t_query, x.shape[0])
        moving_sum = np.zeros(hi - lo, dtype=x.dtype)
        for shift in range(window):
            moving_sum += padded[lo + shift : hi + shift]
        points.append(lo + int(np.argmin(np.abs(moving_sum))))
    return points


def upsample_nearest_2x(feats: np.ndarray) -> np.ndarray:
    """Repeat every frame twice along time (50 fps content features to the 100 fps pitch rate).

    Args:
        feats: (T, C) or (B, T, C).

    Returns:
        (2T, C) or (B, 2T, C), same dtype.
    """
    feats = np.asarray(feats)
    if feats.ndim < 2:
        raise ValueError(f"features must be (T, C) or (B, T, C), got shape {feats.shape}")
    return np.repeat(feats, 2, axis=-2)


def apply_protect(
    feats: np.ndarray, feats_before_index: np.ndarray, pitchf: np.ndarray, protect: float
) -> np.ndarray:
    """Pull unvoiced frames back towards the pre-retrieval features (RVC's ``protect``).

    Only acts when ``protect < 0.5``; otherwise ``feats`` is returned unchanged (as a copy). The mask
    is 1 where ``pitchf > 0`` and then ``protect`` where ``pitchf < 1``; the second assignment wins,
    so a frame with ``0 < pitchf < 1`` counts as unvoiced. Result: ``feats * mask +
    feats_before_index * (1 - mask)`` in float32.

    Args:
        feats: (T, C) or (B, T, C) float32 features after retrieval blending and upsampling.
        feats_before_index: same shape, the upsampled features before blending.
        pitchf: (T,) or (B, T) f0 in Hz, already truncated to T frames.
        protect: in [0, 0.5]; 0.5 or more disables protection.

    Returns:
        Same shape as ``feats``, float32.
    """
    feats32 = np.asarray(feats, dtype=np.float32)
    if protect >= 0.5:
        return feats32.copy()
    if protect < 0:
        raise ValueError(f"protect must be in [0, 0.5], got {protect}")
    before32 = np.asarray(feats_before_index, dtype=np.float32)
    if before32.shape != feats32.shape:
        raise ValueError(f"feature shapes differ: {feats32.shape} vs {before32.shape}")
    pitchf32 = np.asarray(pitchf, dtype=np.float32)
    if pitchf32.shape != feats32.shape[:-1]:
        raise ValueError(f"pitchf shape {pitchf32.shape} does not match features {feats32.shape}")
    mask = pitchf32.copy()
    mask[pitchf32 > 0] = 1.0
    mask[pitchf32 < 1] = np.float32(protect)
    mask = mask[..., None]
    return feats32 * mask + before32 * (np.float32(1.0) - mask)


LIMITER_CEILING = 0.98
"""Default sample ceiling of :func:`limit_peaks` (about -0.18 dBFS)."""
LIMITER_WINDOW_S = 0.01


def limit_peaks(
    audio: np.ndarray,
    sample_rate: int,
    *,
    ceiling: float = LIMITER_CEILING,
    window_s: float = LIMITER_WINDOW_S,
) -> np.ndarray:
    """A look-ahead peak limiter: no sample ends above ``ceiling``, gain changes are smooth, nothing clips.

    The gain each sample needs, ``min(1, ceiling / |x|)`` (the loudest channel decides), goes through
    a minimum filter and then a moving average, both ``2w + 1`` samples wide (``w`` =
    ``window_s``): every averaged value is a mean of minima over windows that contain the sample,
    so it never exceeds the gain that sample needs. Gain falls ``w`` samples ahead of a peak and
    recovers over ``w`` after it. Audio already under the ceiling is returned unchanged (a copy).

    Args:
        audio: (L,) or (L, C) float samples.
        sample_rate: their rate in Hz.
        ceiling: the highest absolute sample value allowed, in (0, 1].
        window_s: attack and release time in seconds.

    Returns:
        float32 array of the input's shape.
    """
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    if not 0 < ceiling <= 1 or window_s <= 0:
        raise ValueError(f"ceiling must be in (0, 1] and window_s > 0, got {ceiling}, {window_s}")
    x = np.asarray(audio, dtype=np.float32)
    peak = np.abs(x) if x.ndim == 1 else np.abs(x).max(axis=1)
    if peak.size == 0 or float(peak.max()) <= ceiling:
        return x.copy()
    need = np.minimum(1.0, ceiling / np.maximum(peak, 1e-12)).astype(np.float64)
    width = 2 * max(1, round(window_s * sample_rate)) + 1
    gain = uniform_filter1d(minimum_filter1d(need, size=width, mode="nearest"), size=width, mode="nearest")
    gain = np.minimum(gain, need).astype(np.float32)  # rounding of the running mean only
    return x * (gain if x.ndim == 1 else gain[:, None])
