"""Spectrograms as RVC's VITS training computes them (``mel_processing.py`` of the classic WebUI).

* Linear magnitude: reflect-pad ``(n_fft - hop) / 2`` on both sides, STFT with ``center=False``
  and a periodic Hann window, magnitude ``sqrt(re^2 + im^2 + 1e-6)``. A signal of ``L`` samples
  gives ``L // hop`` frames, so frame ``t`` lines up with samples ``[t*hop, (t+1)*hop)``.
* Mel: librosa's Slaney mel basis (``fmin = 0``, ``fmax = sr / 2`` by default) applied to the
  linear magnitude, then ``log(clamp(x, 1e-5))``.

Everything is pure torch (no torchaudio); the mel basis is computed once per setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from infer.nn.configs import ConfigError, check_config_keys

__all__ = [
    "SPEC_EPS",
    "SpectrogramConfig",
    "linear_spectrogram",
    "mel_basis",
    "mel_spectrogram",
    "spec_to_mel",
]

SPEC_EPS = 1e-6
"""Added under the square root of the STFT power, as RVC does (keeps gradients finite at 0)."""
LOG_CLAMP = 1e-5
"""Mel magnitudes are clamped to this before the log (RVC's ``dynamic_range_compression``)."""

# sample rate (Hz) -> (n_fft, hop_length, win_length, n_mels). 32/40/48 kHz are RVC's
# configs/{v1,v2}/*.json; 16 kHz (used by the tiny test/benchmark models) keeps 10 ms frames.
_PRESETS: dict[int, tuple[int, int, int, int]] = {
    16000: (512, 160, 512, 80),
    32000: (1024, 320, 1024, 80),
    40000: (2048, 400, 2048, 125),
    48000: (2048, 480, 2048, 128),
}


@dataclass(frozen=True)
class SpectrogramConfig:
    """STFT and mel settings.

    Attributes:
        sample_rate: audio rate in Hz.
        n_fft: FFT size (``n_fft // 2 + 1`` linear bins, the synthesizer's ``spec_channels``).
        hop_length: samples per frame (the synthesizer's upsampling product).
        win_length: Hann window length (<= n_fft).
        n_mels: mel bands.
        fmin_hz: lowest mel frequency.
        fmax_hz: highest mel frequency; None = ``sample_rate / 2``.
    """

    sample_rate: int
    n_fft: int
    hop_length: int
    win_length: int
    n_mels: int
    fmin_hz: float = 0.0
    fmax_hz: float | None = None

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"SpectrogramConfig.{name} must be a positive int, got {value!r}")
        if self.win_length > self.n_fft:
            raise ConfigError(
                f"SpectrogramConfig.win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})"
            )
        if self.hop_length > self.n_fft or (self.n_fft - self.hop_length) % 2:
            raise ConfigError(
                f"SpectrogramConfig: n_fft - hop_length must be even and >= 0 (it is split into two "
                f"reflect pads), got n_fft={self.n_fft}, hop_length={self.hop_length}"
            )
        nyquist_hz = self.sample_rate / 2
        fmax_hz = nyquist_hz if self.fmax_hz is None else self.fmax_hz
        if not 0.0 <= self.fmin_hz < fmax_hz <= nyquist_hz:
            raise ConfigError(
                f"SpectrogramConfig needs 0 <= fmin_hz < fmax_hz <= sample_rate / 2, got "
                f"fmin_hz={self.fmin_hz}, fmax_hz={self.fmax_hz}, sample_rate={self.sample_rate}"
            )

    @property
    def n_freqs(self) -> int:
        """Linear-spectrogram bins, ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    @classmethod
    def for_sample_rate(cls, sample_rate: int) -> SpectrogramConfig:
        """RVC's settings for 32000/40000/48000 Hz (and 10 ms frames at 16000 Hz)."""
        if sample_rate not in _PRESETS:
            raise ConfigError(
                f"no spectrogram settings for {sample_rate} Hz; choose one of {sorted(_PRESETS)}"
            )
        n_fft, hop_length, win_length, n_mels = _PRESETS[sample_rate]
        return cls(sample_rate, n_fft, hop_length, win_length, n_mels)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpectrogramConfig:
        """Build from a plain dict; unknown keys are a :class:`ConfigError`."""
        check_config_keys(cls, data, require_all=False)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict."""
        return asdict(self)


@lru_cache(maxsize=16)
def mel_basis(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    fmin_hz: float = 0.0,
    fmax_hz: float | None = None,
    device: str = "cpu",
) -> Tensor:
    """Slaney-normalised mel filter bank, (n_mels, n_fft // 2 + 1) float32 on ``device`` (cached)."""
    import librosa

    basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin_hz, fmax=fmax_hz)
    return torch.from_numpy(np.ascontiguousarray(basis, dtype=np.float32)).to(device)


def _window(win_length: int, device: torch.device) -> Tensor:
    return torch.hann_window(win_length, dtype=torch.float32, device=device)


def linear_spectrogram(wav: Tensor, config: SpectrogramConfig) -> Tensor:
    """Linear STFT magnitude.

    Args:
        wav: (B, L) or (L,) float audio, ``L > (n_fft - hop) / 2``.
        config: STFT settings.

    Returns:
        (B, n_fft // 2 + 1, L // hop) float32 (no batch dim if ``wav`` had none).
    """
    squeeze = wav.dim() == 1
    x = wav.float().reshape(1 if squeeze else wav.shape[0], -1)
    pad = (config.n_fft - config.hop_length) // 2
    x = torch.nn.functional.pad(x.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    stft = torch.stft(
        x,
        config.n_fft,
        hop_length=config.hop_length,
        win_length=config.win_length,
        window=_window(config.win_length, x.device),
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    spec = torch.sqrt(stft.real.pow(2) + stft.imag.pow(2) + SPEC_EPS)
    return spec[0] if squeeze else spec


def spec_to_mel(spec: Tensor, config: SpectrogramConfig) -> Tensor:
    """Log-mel from a linear magnitude: spec (B, n_freqs, T) -> (B, n_mels, T) float32."""
    if spec.shape[-2] != config.n_freqs:
        raise ValueError(f"spectrogram has {spec.shape[-2]} bins, the config expects {config.n_freqs}")
    basis = mel_basis(
        config.sample_rate, config.n_fft, config.n_mels, config.fmin_hz, config.fmax_hz, str(spec.device)
    )
    mel = torch.matmul(basis, spec.float())
    return torch.log(torch.clamp(mel, min=LOG_CLAMP))


def mel_spectrogram(wav: Tensor, config: SpectrogramConfig) -> Tensor:
    """Log-mel of audio: wav (B, L) -> (B, n_mels, L // hop) float32."""
    return spec_to_mel(linear_spectrogram(wav, config), config)
