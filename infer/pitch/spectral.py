"""Block-wise log-mel spectrograms for the neural pitch models (bounded memory on long audio)."""

from __future__ import annotations

import functools

import numpy as np
import torch

N_FFT = 1024
N_MELS = 128


@functools.lru_cache(maxsize=8)
def mel_basis(
    sample_rate: int, n_fft: int, n_mels: int, fmin_hz: float, fmax_hz: float, use_htk: bool
) -> np.ndarray:
    """librosa's mel filterbank (Slaney norm): (n_mels, n_fft // 2 + 1) float32, read-only."""
    import librosa

    basis = librosa.filters.mel(
        sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin_hz, fmax=fmax_hz, htk=use_htk
    ).astype(np.float32)
    basis.setflags(write=False)
    return basis


def log_mel_block(
    padded: torch.Tensor,
    start_frame: int,
    stop_frame: int,
    *,
    hop_length: int,
    window: torch.Tensor,
    basis: torch.Tensor,
    magnitude_eps: float,
    clamp_min: float,
) -> torch.Tensor:
    """Log-mel of frames ``[start_frame, stop_frame)`` of an already padded signal.

    Frame ``k`` covers ``padded[k*hop : k*hop + n_fft]`` (an un-centred STFT), so
    computing a long input block by block gives the same numbers as one call.

    Args:
        padded: (N,) float32 padded audio.
        start_frame: first frame.
        stop_frame: one past the last frame.
        hop_length: samples between frames.
        window: (n_fft,) analysis window.
        basis: (n_mels, n_fft // 2 + 1) mel filterbank.
        magnitude_eps: added under the square root of the power (0 for none).
        clamp_min: floor before the natural log.

    Returns:
        (n_mels, stop_frame - start_frame) float32 log-mel.
    """
    n_fft = window.shape[0]
    segment = padded[start_frame * hop_length : (stop_frame - 1) * hop_length + n_fft]
    spec = torch.stft(
        segment,
        n_fft,
        hop_length=hop_length,
        win_length=n_fft,
        window=window,
        center=False,
        return_complex=True,
    )
    power = spec.real.square() + spec.imag.square()
    if magnitude_eps:
        power = power + magnitude_eps
    magnitude = torch.sqrt(power)
    mel = torch.matmul(basis, magnitude)
    return torch.log(torch.clamp(mel, min=clamp_min))
