"""Ground-truth quality measures: spectral distance to a reference recording of the same words.

Re-exported by :mod:`infer.metrics`. All take float32 mono audio at one sample rate (the callers
resample to 16 kHz) and work on a 10 ms frame grid:

* log-mel: natural log of an 80-band mel magnitude spectrogram (1024-point FFT, floor 1e-5);
* mel-cepstrum: the cepstrum (a DCT-II scaled by 1 / n_mels) of each log-mel frame,
  coefficients 1..24 (c0, the level, left out). This approximates the SPTK mel-cepstra that
  MCD is usually quoted on, so its values compare within Timbre's benchmarks, not with
  published MCD figures;
* MCD (Kubichek 1993): ``(10 / ln 10) sqrt(2 sum_d (c_d - c'_d)^2)`` dB, averaged over frames;
* DTW-aligned MCD: the frames first paired by dynamic time warping on the cepstral distance
  (for a parallel sentence spoken at another pace);
* log-F0 correlation: Pearson correlation of log F0 over frames voiced in both (on the DTW path
  for parallel sentences), which ignores the pitch offset between two voices; the offset itself
  is reported in semitones.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = [
    "CEPSTRAL_ORDER",
    "FRAME_HOP_S",
    "dtw_mcd",
    "dtw_path",
    "log_f0_correlation",
    "log_mel",
    "log_mel_l1",
    "mcd",
    "mel_cepstrum",
]

FRAME_HOP_S = 0.01
N_FFT = 1024
N_MELS = 80
CEPSTRAL_ORDER = 24
LOG_FLOOR = 1e-5
MCD_FACTOR_DB = 10.0 / math.log(10.0) * math.sqrt(2.0)


@functools.lru_cache(maxsize=8)
def _mel_basis(sample_rate: int) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=sample_rate, n_fft=N_FFT, n_mels=N_MELS).astype(np.float32)


def log_mel(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(n,) float audio -> (frames, 80) natural-log mel magnitudes on a 10 ms hop."""
    import librosa

    hop = round(sample_rate * FRAME_HOP_S)
    spec = np.abs(librosa.stft(np.asarray(audio, np.float32), n_fft=N_FFT, hop_length=hop, center=True))
    return np.log(np.maximum(_mel_basis(sample_rate) @ spec, LOG_FLOOR)).T


@functools.lru_cache(maxsize=4)
def _dct_matrix(n: int, order: int) -> np.ndarray:
    """(order, n): ``c_k = (1 / n) sum_i x_i cos(pi k (2 i + 1) / (2 n))`` for k = 1..order.

    The real cepstrum of an even log spectrum sampled at n mid-points of [0, pi] (so the
    coefficients have the scale of the usual mel-cepstra).
    """
    k = np.arange(1, order + 1)[:, None]
    i = np.arange(n)[None, :]
    return (np.cos(np.pi * k * (2 * i + 1) / (2 * n)) / n).astype(np.float64)


def mel_cepstrum(log_mel_frames: np.ndarray, order: int = CEPSTRAL_ORDER) -> np.ndarray:
    """(frames, n_mels) log-mel -> (frames, order) cepstral coefficients 1..order."""
    frames = np.asarray(log_mel_frames, np.float64)
    return frames @ _dct_matrix(frames.shape[1], order).T


def _frame_mcd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return MCD_FACTOR_DB * np.sqrt(np.sum((a - b) ** 2, axis=-1))


def mcd(cep_a: np.ndarray, cep_b: np.ndarray) -> float:
    """Frame-by-frame MCD in dB of two (frames, order) cepstra, over their common length."""
    n = min(len(cep_a), len(cep_b))
    if n == 0:
        raise ValueError("mcd of an empty sequence")
    return float(np.mean(_frame_mcd(cep_a[:n], cep_b[:n])))


def dtw_path(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The minimum-cost monotone alignment of a (n, m) cost matrix (steps (1,0), (0,1), (1,1)).

    Returns:
        ``(i, j)`` index arrays from (0, 0) to (n - 1, m - 1).
    """
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        row = cost[i - 1]
        diag_up = np.minimum(acc[i - 1, :-1], acc[i - 1, 1:])  # from (i-1, j-1) or (i-1, j)
        current = acc[i]
        for j in range(1, m + 1):
            current[j] = row[j - 1] + min(diag_up[j - 1], current[j - 1])
    i, j = n, m
    path_i, path_j = [i - 1], [j - 1]
    while (i, j) != (1, 1):
        moves = ((acc[i - 1, j - 1], i - 1, j - 1), (acc[i - 1, j], i - 1, j), (acc[i, j - 1], i, j - 1))
        _, i, j = min(moves, key=lambda move: move[0])
        path_i.append(i - 1)
        path_j.append(j - 1)
    return np.array(path_i[::-1]), np.array(path_j[::-1])


def dtw_mcd(cep_a: np.ndarray, cep_b: np.ndarray) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    """MCD in dB along the DTW path of two cepstra (cost: the per-pair MCD); also returns the path."""
    cost = MCD_FACTOR_DB * np.sqrt(np.sum((cep_a[:, None, :] - cep_b[None, :, :]) ** 2, axis=-1))
    path = dtw_path(cost)
    return float(np.mean(cost[path])), path


def log_mel_l1(mel_a: np.ndarray, mel_b: np.ndarray) -> float:
    """Mean |log-mel difference| of two (frames, n_mels) spectrograms over their common length."""
    n = min(len(mel_a), len(mel_b))
    return float(np.mean(np.abs(mel_a[:n] - mel_b[:n])))


def log_f0_correlation(
    f0_hz: np.ndarray, f0_ref_hz: np.ndarray, path: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[float, float]:
    """Pearson correlation of log F0 over frames voiced in both, and the mean offset in semitones.

    Args:
        f0_hz, f0_ref_hz: (frames,) F0 tracks on the same 10 ms grid, 0 when unvoiced.
        path: frame pairs ``(i, j)`` (a DTW path); None pairs frame k with frame k.

    Returns:
        ``(correlation, offset_semitones)``; NaN for both when fewer than 3 frames are voiced in both.
    """
    if path is None:
        n = min(len(f0_hz), len(f0_ref_hz))
        path = (np.arange(n), np.arange(n))
    i = np.clip(path[0], 0, len(f0_hz) - 1)
    j = np.clip(path[1], 0, len(f0_ref_hz) - 1)
    a, b = np.asarray(f0_hz, np.float64)[i], np.asarray(f0_ref_hz, np.float64)[j]
    voiced = (a > 0) & (b > 0)
    if voiced.sum() < 3:
        return float("nan"), float("nan")
    la, lb = np.log2(a[voiced]), np.log2(b[voiced])
    offset = float(12.0 * np.mean(la - lb))
    if np.std(la) == 0 or np.std(lb) == 0:
        return float("nan"), offset
    return float(np.corrcoef(la, lb)[0, 1]), offset
