"""FCPE ('fcpe'): Timbre's own network, mel front-end and decoder for torchfcpe's bundled weights.

The weights are ``fcpe_c_v001.pt`` inside the installed ``torchfcpe`` wheel; the package
itself is never imported (it imports torchaudio). The numbers follow
``spawn_bundled_infer_model().infer(audio, sr=16000, decoder_mode='local_argmax',
threshold=0.006)``, the call RVC and Applio make:

* mel: the signal is padded by 432 samples on the left and max(432, 1024 - L - 432) on
  the right (reflect when shorter than the signal, else zeros), un-centred STFT n_fft
  1024 / hop 160 / periodic Hann, magnitude sqrt(re^2 + im^2 + 1e-9), librosa mel basis
  (128 bands, 0..8000 Hz, Slaney), log(clamp(x, 1e-5)); the frame count is fitted to
  L // 160 + 1 by repeating the last frame once or cropping;
* network (the bundled model is convolution-only): conv3 -> GroupNorm(4) -> LeakyReLU ->
  conv3, six residual blocks LayerNorm -> 1x1 conv -> GLU -> depthwise conv31 -> SiLU ->
  1x1 conv, LayerNorm, weight-normed linear to 360 bins, sigmoid;
* decoder 'local_argmax': salience-weighted mean of the cent table over the 9 bins
  around the peak (indices clamped at the ends), 0 Hz where the peak is <= 0.006.

Long inputs run in segments with enough context (more than the 92-frame receptive field)
to be exact; the GroupNorm statistics, which span the whole input, are gathered first.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from infer.errors import ModelLoadError, TimbreError
from infer.pitch.base import (
    DEFAULT_F0_MAX_HZ,
    DEFAULT_F0_MIN_HZ,
    HOP_LENGTH,
    SAMPLE_RATE_HZ,
    check_audio,
    check_range,
    fit_length,
    gate_range,
    load_state_strict,
    resolve_p_len,
)
from infer.pitch.spectral import N_FFT, log_mel_block, mel_basis
from infer.progress import ProgressFn, StopFn, check_stop, report
from infer.safeload import load_checkpoint

log = logging.getLogger(__name__)

MAGNITUDE_EPS = 1e-9
LOG_CLAMP = 1e-5
DEFAULT_THRESHOLD = 0.006
DECODE_HALF_WINDOW_BINS = 4
DEPTHWISE_KERNEL = 31
EXPANSION = 2
GROUP_NORM_GROUPS = 4
GROUP_NORM_EPS = 1e-5
DEFAULT_SEGMENT_FRAMES = 4096
DEFAULT_CONTEXT_FRAMES = 128

# Present in the bundled file but unused by a convolution-only model at inference:
# each layer's attention pre-norm, and a training-only mask value.
_UNUSED_KEY_PATTERNS = (r"net\.encoder_layers\.\d+\.norm\.(weight|bias)$", r"gaussian_blurred_cent_mask$")


@dataclasses.dataclass(frozen=True)
class FcpeConfig:
    """Sizes of the convolution-only FCPE model and its mel front-end."""

    n_mels: int = 128
    hidden_dims: int = 512
    n_layers: int = 6
    out_dims: int = 360
    mel_fmin_hz: float = 0.0
    mel_fmax_hz: float = 8000.0

    def __post_init__(self) -> None:
        for name in ("n_mels", "hidden_dims", "n_layers", "out_dims"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"FcpeConfig.{name} must be an int >= 1, got {value!r}")
        if self.hidden_dims % GROUP_NORM_GROUPS:
            raise ValueError(f"FcpeConfig.hidden_dims must be a multiple of {GROUP_NORM_GROUPS}")
        if not (0.0 <= self.mel_fmin_hz < self.mel_fmax_hz <= SAMPLE_RATE_HZ / 2):
            raise ValueError(f"FcpeConfig mel range {self.mel_fmin_hz}..{self.mel_fmax_hz} Hz is invalid")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FcpeConfig:
        """Build from a mapping; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown FcpeConfig keys {unknown}; expected some of {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_checkpoint_config(cls, config: Mapping[str, Any]) -> FcpeConfig:
        """Read torchfcpe's ``config_dict``; only the convolution-only CFNaiveMelPE is supported."""
        model = config.get("model", {})
        mel = config.get("mel", {})
        if model.get("type") != "CFNaiveMelPE" or not model.get("conv_only", False):
            raise ModelLoadError(
                "only the convolution-only FCPE model (torchfcpe's bundled fcpe_c_v001.pt) is supported; "
                f"this file has model type {model.get('type')!r}, conv_only={model.get('conv_only')!r}"
            )
        if model.get("use_harmonic_emb", False):
            raise ModelLoadError("FCPE models with a harmonic embedding are not supported")
        if (mel.get("sr"), mel.get("hop_size"), mel.get("n_fft"), mel.get("win_size")) != (
            SAMPLE_RATE_HZ,
            HOP_LENGTH,
            N_FFT,
            N_FFT,
        ):
            raise ModelLoadError(
                f"unsupported FCPE mel settings {dict(mel)}; expected 16 kHz, hop 160, n_fft 1024"
            )
        return cls(
            n_mels=int(mel["num_mels"]),
            hidden_dims=int(model["hidden_dims"]),
            n_layers=int(model["n_layers"]),
            out_dims=int(model["out_dims"]),
            mel_fmin_hz=float(mel.get("fmin") or 0.0),
            mel_fmax_hz=float(mel.get("fmax") or SAMPLE_RATE_HZ / 2),
        )


class _ConvBlock(nn.Module):
    """Residual convolution block: LayerNorm, 1x1 expand, GLU, depthwise conv, SiLU, 1x1 project."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        inner = dims * EXPANSION
        self.norm = nn.LayerNorm(dims)
        self.expand = nn.Conv1d(dims, inner * 2, 1)
        self.depthwise = nn.Conv1d(
            inner, inner, DEPTHWISE_KERNEL, padding=DEPTHWISE_KERNEL // 2, groups=inner
        )
        self.project = nn.Conv1d(inner, dims, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C)."""
        y = self.expand(self.norm(x).transpose(1, 2))
        y = self.project(F.silu(self.depthwise(F.glu(y, dim=1))))
        return x + y.transpose(1, 2)


class FcpeNet(nn.Module):
    """Convolution-only FCPE: log-mel (B, T, 128) -> bin salience (B, T, 360)."""

    def __init__(self, config: FcpeConfig) -> None:
        super().__init__()
        self.config = config
        dims = config.hidden_dims
        self.input_stack = nn.Sequential(
            nn.Conv1d(config.n_mels, dims, 3, padding=1),
            nn.GroupNorm(GROUP_NORM_GROUPS, dims),
            nn.LeakyReLU(),
            nn.Conv1d(dims, dims, 3, padding=1),
        )
        self.blocks = nn.ModuleList([_ConvBlock(dims) for _ in range(config.n_layers)])
        self.norm = nn.LayerNorm(dims)
        self.output_proj = nn.Linear(dims, config.out_dims)
        self.register_buffer("cent_table", torch.zeros(config.out_dims))

    def stem(self, mel: torch.Tensor) -> torch.Tensor:
        """First conv only: mel (B, T, n_mels) -> (B, hidden, T), the input of the GroupNorm."""
        return self.input_stack[0](mel.transpose(1, 2))

    def head(self, normed: torch.Tensor) -> torch.Tensor:
        """Everything after the GroupNorm: (B, hidden, T) -> salience (B, T, out_dims)."""
        x = self.input_stack[3](self.input_stack[2](normed)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return torch.sigmoid(self.output_proj(self.norm(x)))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (B, T, n_mels) float32 log-mel -> (B, T, out_dims) salience in [0, 1]."""
        return self.head(self.input_stack[1](self.stem(mel)))


def _convert_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchfcpe parameter names -> FcpeNet names; folds the output weight norm (w = g v / |v|)."""
    renames = {"0": "norm", "2": "expand", "4.conv": "depthwise", "6": "project"}
    unused = [re.compile(p) for p in _UNUSED_KEY_PATTERNS]
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if any(p.match(key) for p in unused):
            continue
        match = re.match(r"net\.encoder_layers\.(\d+)\.conformer\.net\.(\d+(?:\.conv)?)\.(weight|bias)$", key)
        if match and match.group(2) in renames:
            converted[f"blocks.{match.group(1)}.{renames[match.group(2)]}.{match.group(3)}"] = value
        elif key not in ("output_proj.weight_g", "output_proj.weight_v"):
            converted[key] = value
    if "output_proj.weight_g" in state and "output_proj.weight_v" in state:
        g = state["output_proj.weight_g"].float()
        v = state["output_proj.weight_v"].float()
        converted["output_proj.weight"] = g * v / v.norm(dim=1, keepdim=True)
    return converted


def load_fcpe_net(path: str | Path, device: str | torch.device = "cpu") -> FcpeNet:
    """Load torchfcpe's ``fcpe_c_v001.pt`` (``{'model', 'config_dict', ...}``) strictly into an FcpeNet."""
    path = Path(path)
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, Mapping) or "model" not in checkpoint or "config_dict" not in checkpoint:
        raise ModelLoadError(f"{path.name}: not a torchfcpe checkpoint (needs 'model' and 'config_dict')")
    config = FcpeConfig.from_checkpoint_config(checkpoint["config_dict"])
    net = FcpeNet(config)
    load_state_strict(net, _convert_state(checkpoint["model"]), path.name)
    return net.float().eval().to(device)


def decode_local_argmax(
    salience: np.ndarray, cent_table: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> np.ndarray:
    """FCPE's 'local_argmax' decoder: (T, bins) salience -> (T,) F0 in Hz, 0 where the peak <= threshold."""
    salience = np.asarray(salience, dtype=np.float32)
    n_frames, n_bins = salience.shape
    if n_frames == 0:
        return np.zeros(0, dtype=np.float32)
    peak = np.argmax(salience, axis=1)
    columns = np.clip(
        peak[:, None] + np.arange(-DECODE_HALF_WINDOW_BINS, DECODE_HALF_WINDOW_BINS + 1)[None, :],
        0,
        n_bins - 1,
    )
    window = salience[np.arange(n_frames)[:, None], columns]
    cents = np.sum(window * cent_table[columns], axis=1) / np.sum(window, axis=1)
    f0 = (10.0 * 2.0 ** (cents / 1200.0)).astype(np.float32)
    f0[salience[np.arange(n_frames), peak] <= threshold] = 0.0
    return np.nan_to_num(f0, nan=0.0)


class FcpeExtractor:
    """The 'fcpe' method."""

    name = "fcpe"

    def __init__(
        self,
        weights_path: str | Path,
        *,
        device: str | torch.device = "cpu",
        threshold: float = DEFAULT_THRESHOLD,
        segment_frames: int = DEFAULT_SEGMENT_FRAMES,
        context_frames: int = DEFAULT_CONTEXT_FRAMES,
    ) -> None:
        if segment_frames < 1 or context_frames < 0:
            raise TimbreError(
                f"segment_frames must be >= 1 and context_frames >= 0, got {segment_frames}, {context_frames}"
            )
        self.device = torch.device(device)
        self.net = load_fcpe_net(weights_path, self.device)
        self.threshold = float(threshold)
        self.segment_frames = int(segment_frames)
        self.context_frames = int(context_frames)
        config = self.net.config
        basis = mel_basis(SAMPLE_RATE_HZ, N_FFT, config.n_mels, config.mel_fmin_hz, config.mel_fmax_hz, False)
        self._basis = torch.from_numpy(basis.copy()).to(self.device)
        self._window = torch.hann_window(N_FFT, device=self.device)
        self._cent_table = self.net.cent_table.detach().cpu().numpy().astype(np.float32)

    def _padded(self, audio: np.ndarray) -> tuple[torch.Tensor, int]:
        """Padded signal and the number of STFT frames it holds."""
        n = audio.shape[0]
        left = (N_FFT - HOP_LENGTH) // 2
        right = max((N_FFT - HOP_LENGTH + 1) // 2, N_FFT - n - left)
        mode = "reflect" if right < n else "constant"
        signal = torch.from_numpy(audio).to(self.device)
        padded = F.pad(signal[None, None], (left, right), mode=mode)[0, 0]
        return padded, (padded.shape[0] - N_FFT) // HOP_LENGTH + 1

    def _mel(self, padded: torch.Tensor, n_stft: int, start: int, stop: int) -> torch.Tensor:
        """(stop - start, n_mels) log-mel; frame ``n_stft`` (one past the STFT) repeats the last one."""
        mel = log_mel_block(
            padded,
            start,
            min(stop, n_stft),
            hop_length=HOP_LENGTH,
            window=self._window,
            basis=self._basis,
            magnitude_eps=MAGNITUDE_EPS,
            clamp_min=LOG_CLAMP,
        )
        if stop > n_stft:
            mel = torch.cat([mel, mel[:, -1:]], dim=1)
        return mel.T

    def log_mel(self, audio_16k: np.ndarray) -> torch.Tensor:
        """(L,) float32 16 kHz audio -> (n_frames, n_mels) log-mel, n_frames = L // 160 + 1 (less if tiny)."""
        audio = check_audio(audio_16k)
        padded, n_stft = self._padded(audio)
        return self._mel(padded, n_stft, 0, self._n_frames(audio.shape[0], n_stft))

    @staticmethod
    def _n_frames(n_samples: int, n_stft: int) -> int:
        return min(n_samples // HOP_LENGTH + 1, n_stft + 1)

    @torch.no_grad()
    def salience(
        self,
        audio_16k: np.ndarray,
        *,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> np.ndarray:
        """(L,) float32 16 kHz audio -> (n_frames, 360) float32 salience, computed segment by segment."""
        audio = check_audio(audio_16k)
        padded, n_stft = self._padded(audio)
        n_frames = self._n_frames(audio.shape[0], n_stft)
        span, context = self.segment_frames, self.context_frames
        norm = self.net.input_stack[1]
        groups = norm.num_groups
        total = torch.zeros(groups, dtype=torch.float64, device=self.device)
        total_sq = torch.zeros(groups, dtype=torch.float64, device=self.device)
        # Pass 1: GroupNorm statistics over the whole input (the first conv sees 1 frame each side).
        for start in range(0, n_frames, span):
            check_stop(should_stop)
            stop = min(start + span, n_frames)
            lo, hi = max(0, start - 1), min(n_frames, stop + 1)
            x = self.net.stem(self._mel(padded, n_stft, lo, hi)[None])[0, :, start - lo : stop - lo]
            x = x.double().reshape(groups, -1)
            total += x.sum(dim=1)
            total_sq += x.square().sum(dim=1)
        count = n_frames * norm.num_channels // groups
        mean = total / count
        inv_std = torch.rsqrt((total_sq / count - mean.square()).clamp(min=0.0) + norm.eps)
        channel_mean = mean.float().repeat_interleave(norm.num_channels // groups)[None, :, None]
        channel_scale = (inv_std.float().repeat_interleave(norm.num_channels // groups) * norm.weight)[
            None, :, None
        ]
        channel_shift = norm.bias[None, :, None]
        # Pass 2: the network on each segment with enough context to be exact.
        out = np.empty((n_frames, self.net.config.out_dims), dtype=np.float32)
        n_segments = -(-n_frames // span)
        for index, start in enumerate(range(0, n_frames, span)):
            check_stop(should_stop)
            stop = min(start + span, n_frames)
            lo, hi = max(0, start - context), min(n_frames, stop + context)
            x = self.net.stem(self._mel(padded, n_stft, lo, hi)[None])
            x = (x - channel_mean) * channel_scale + channel_shift
            out[start:stop] = self.net.head(x)[0, start - lo : stop - lo].cpu().numpy()
            report(progress, (index + 1) / n_segments, "fcpe")
        return out

    def infer_f0(self, audio_16k: np.ndarray) -> np.ndarray:
        """torchfcpe's ``infer(..., decoder_mode='local_argmax', threshold)`` output: (n_frames,) Hz."""
        return decode_local_argmax(self.salience(audio_16k), self._cent_table, self.threshold)

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
        """(L,) 16 kHz audio -> (p_len,) float32 F0 Hz; frames outside the F0 range become 0."""
        audio = check_audio(audio_16k)
        check_range(f0_min_hz, f0_max_hz)
        p_len = resolve_p_len(audio.shape[0], p_len)
        if audio.shape[0] == 0:
            return fit_length(np.zeros(0), p_len)
        salience = self.salience(audio, progress=progress, should_stop=should_stop)
        f0 = decode_local_argmax(salience, self._cent_table, self.threshold)
        return fit_length(gate_range(f0, f0_min_hz, f0_max_hz), p_len)
