"""RMVPE: the U-Net + BiGRU pitch network RVC ships as ``rmvpe.pt``, with its mel front-end and decoder.

Size: one network's file: the module tree mirrors RVC's names for a strict load, and the
decoder, the blockwise salience and the frame store all serve that one checkpoint.

The module tree reproduces the parameter names of RVC's ``E2E`` so ``rmvpe.pt`` loads
strictly. Numbers follow RVC classic (``infer/lib/rmvpe.py``):

* log-mel: STFT n_fft 1024, hop 160, periodic Hann, centred with reflect padding,
  magnitude, librosa mel basis (128 bands, 30..8000 Hz, ``htk=True``, Slaney norm),
  ``log(clamp(x, 1e-5))``; frames are zero-padded to a multiple of 32 for the U-Net;
* decoder: argmax bin, salience-weighted mean of cents over the 9 bins around it,
  0 where the peak salience is <= threshold (0.03), ``f = 10 * 2**(cents/1200)``, 10 Hz -> 0.

Long inputs run in overlapping segments (aligned to the U-Net's 32-frame grid), so
memory does not grow with the input length.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from infer.errors import ModelLoadError, TimbreError
from infer.memory import release_free_memory
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
from infer.pitch.spectral import N_FFT, N_MELS, log_mel_block, mel_basis
from infer.progress import ProgressFn, StopFn, check_stop, report
from infer.safeload import load_checkpoint

log = logging.getLogger(__name__)

MEL_FMIN_HZ = 30.0
MEL_FMAX_HZ = 8000.0
LOG_CLAMP = 1e-5
N_PITCH_BINS = 360
CENTS_PER_BIN = 20.0
CENTS_OFFSET = 1997.3794084376191
DECODE_HALF_WINDOW_BINS = 4
DEFAULT_THRESHOLD = 0.03
FRAME_MULTIPLE = 32
GRU_HIDDEN = 256
BN_MOMENTUM = 0.01
DEFAULT_SEGMENT_FRAMES = 4096
DEFAULT_CONTEXT_FRAMES = 512


@dataclasses.dataclass(frozen=True)
class RmvpeConfig:
    """Architecture of RVC's ``E2E``; fields in its constructor order (in_channels is always 1)."""

    n_blocks: int = 4
    n_gru: int = 1
    kernel_size: tuple[int, int] = (2, 2)
    en_de_layers: int = 5
    inter_layers: int = 4
    en_out_channels: int = 16

    def __post_init__(self) -> None:
        for name in ("n_blocks", "n_gru", "en_de_layers", "inter_layers", "en_out_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RmvpeConfig.{name} must be an int >= 1, got {value!r}")
        kernel = tuple(self.kernel_size)
        if len(kernel) != 2 or any(k not in (1, 2) for k in kernel):
            raise ValueError(f"RmvpeConfig.kernel_size must be two of 1 or 2, got {self.kernel_size!r}")
        if 2**self.en_de_layers > N_MELS:
            raise ValueError(f"RmvpeConfig.en_de_layers={self.en_de_layers} halves 128 mel bands below 1")
        object.__setattr__(self, "kernel_size", (int(kernel[0]), int(kernel[1])))

    @classmethod
    def real(cls) -> RmvpeConfig:
        """The configuration of the released ``rmvpe.pt``: E2E(4, 1, (2, 2))."""
        return cls()

    @classmethod
    def tiny(cls) -> RmvpeConfig:
        """The small test configuration of ``tiny_rmvpe_fp16.pt``."""
        return cls(n_blocks=1, n_gru=1, kernel_size=(2, 2), en_de_layers=5, inter_layers=1, en_out_channels=4)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RmvpeConfig:
        """Build from a mapping; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown RmvpeConfig keys {unknown}; expected some of {sorted(names)}")
        values = dict(data)
        if "kernel_size" in values:
            values["kernel_size"] = tuple(values["kernel_size"])
        return cls(**values)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> RmvpeConfig:
        """Infer the architecture from an ``rmvpe.pt`` state dict (the pooling kernel is fixed at (2, 2))."""

        def count(pattern: str) -> int:
            regex = re.compile(pattern)
            return len({m.group(1) for key in state if (m := regex.match(key))})

        first_conv = state.get("unet.encoder.layers.0.conv.0.conv.0.weight")
        if first_conv is None:
            raise ModelLoadError(
                "not an RMVPE state dict: 'unet.encoder.layers.0.conv.0.conv.0.weight' is missing"
            )
        try:
            return cls(
                n_blocks=count(r"unet\.encoder\.layers\.0\.conv\.(\d+)\."),
                n_gru=count(r"fc\.0\.gru\.weight_ih_l(\d+)$"),
                kernel_size=(2, 2),
                en_de_layers=count(r"unet\.encoder\.layers\.(\d+)\."),
                inter_layers=count(r"unet\.intermediate\.layers\.(\d+)\."),
                en_out_channels=int(first_conv.shape[0]),
            )
        except ValueError as exc:
            raise ModelLoadError(f"the RMVPE state dict has an unsupported layout: {exc}") from exc


class _ResConv(nn.Module):
    """Two 3x3 conv-BN-ReLU layers with a residual path (1x1 conv when channels change)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM),
            nn.ReLU(),
        )
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, T, F) -> (B, C_out, T, F)."""
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.conv(x) + residual


class _ResStage(nn.Module):
    """``n_blocks`` residual convs; the encoder's stages also return an average-pooled copy."""

    def __init__(self, in_channels: int, out_channels: int, n_blocks: int) -> None:
        super().__init__()
        self.conv = nn.ModuleList(
            [_ResConv(in_channels if i == 0 else out_channels, out_channels) for i in range(n_blocks)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, T, F) -> (B, C_out, T, F)."""
        for block in self.conv:
            x = block(x)
        return x


class _Encoder(nn.Module):
    def __init__(self, config: RmvpeConfig) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(1, momentum=BN_MOMENTUM)
        channels = [1] + [config.en_out_channels * 2**i for i in range(config.en_de_layers)]
        self.layers = nn.ModuleList(
            [_ResStage(channels[i], channels[i + 1], config.n_blocks) for i in range(config.en_de_layers)]
        )
        self.kernel_size = config.kernel_size
        self.out_channels = config.en_out_channels * 2**config.en_de_layers

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, 1, T, 128) -> pooled (B, C, T/32, 4) and the per-stage skips before pooling."""
        x = self.bn(x)
        skips = []
        for stage in self.layers:
            skip = stage(x)
            skips.append(skip)
            x = F.avg_pool2d(skip, self.kernel_size)
        return x, skips


class _Intermediate(nn.Module):
    def __init__(self, config: RmvpeConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [
                _ResStage(in_channels if i == 0 else out_channels, out_channels, config.n_blocks)
                for i in range(config.inter_layers)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.layers:
            x = stage(x)
        return x


class _UpStage(nn.Module):
    """Transposed-conv upsampling, concatenation with the encoder skip, residual convs."""

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int], n_blocks: int) -> None:
        super().__init__()
        output_padding = (0, 1) if stride == (1, 2) else (1, 1)
        self.conv1 = nn.Sequential(
            nn.ConvTranspose2d(
                in_channels,
                out_channels,
                3,
                stride=stride,
                padding=1,
                output_padding=output_padding,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM),
            nn.ReLU(),
        )
        self.conv2 = nn.ModuleList(
            [_ResConv(out_channels * 2 if i == 0 else out_channels, out_channels) for i in range(n_blocks)]
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, T, F), skip: (B, C_in/2, 2T, 2F) -> (B, C_in/2, 2T, 2F)."""
        x = torch.cat((self.conv1(x), skip), dim=1)
        for block in self.conv2:
            x = block(x)
        return x


class _Decoder(nn.Module):
    def __init__(self, config: RmvpeConfig, in_channels: int) -> None:
        super().__init__()
        channels = [in_channels // 2**i for i in range(config.en_de_layers + 1)]
        self.layers = nn.ModuleList(
            [
                _UpStage(channels[i], channels[i + 1], config.kernel_size, config.n_blocks)
                for i in range(config.en_de_layers)
            ]
        )

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for stage, skip in zip(self.layers, reversed(skips), strict=True):
            x = stage(x, skip)
        return x


class _UNet(nn.Module):
    def __init__(self, config: RmvpeConfig) -> None:
        super().__init__()
        self.encoder = _Encoder(config)
        bottom = self.encoder.out_channels
        self.intermediate = _Intermediate(config, bottom // 2, bottom)
        self.decoder = _Decoder(config, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, T, 128) -> (B, en_out_channels, T, 128)."""
        x, skips = self.encoder(x)
        return self.decoder(self.intermediate(x), skips)


class _BiGru(nn.Module):
    def __init__(self, in_features: int, hidden: int, n_layers: int) -> None:
        super().__init__()
        self.gru = nn.GRU(in_features, hidden, num_layers=n_layers, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, in_features) -> (B, T, 2 * hidden)."""
        return self.gru(x)[0]


class RmvpeNet(nn.Module):
    """RMVPE network: log-mel (B, 128, T) -> pitch-bin salience (B, T, 360), T a multiple of 32."""

    def __init__(self, config: RmvpeConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = _UNet(config)
        self.cnn = nn.Conv2d(config.en_out_channels, 3, 3, padding=1)
        self.fc = nn.Sequential(
            _BiGru(3 * N_MELS, GRU_HIDDEN, config.n_gru),
            nn.Linear(2 * GRU_HIDDEN, N_PITCH_BINS),
            nn.Dropout(0.25),
            nn.Sigmoid(),
        )

    def features(self, mel: torch.Tensor) -> torch.Tensor:
        """The convolutional part: mel (B, 128, T), T % 32 == 0 -> (B, T, 384) GRU input."""
        # channels_last makes the narrow (16..64 channel) convolutions 1.5-3x faster on CPU.
        x = mel.transpose(-1, -2).unsqueeze(1).contiguous(memory_format=torch.channels_last)
        x = self.unet(x)
        return self.cnn(x).transpose(1, 2).flatten(-2)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (B, 128, T) float32 log-mel, T % 32 == 0 -> (B, T, 360) salience in [0, 1]."""
        return self.fc(self.features(mel))


class _FrameStore:
    """``(n_frames, width)`` float32 frames written and read back by frame range.

    On the CPU the frames live in an anonymous temporary file (deleted when closed, or by the OS
    if the process dies), so a long input's BiGRU inputs and outputs do not count against the
    resident set; on other devices they stay in a device tensor.
    """

    def __init__(self, n_frames: int, width: int, device: torch.device) -> None:
        self.n_frames, self.width, self.device = n_frames, width, device
        self._tensor: torch.Tensor | None = None
        self._file: IO[bytes] | None = None
        if device.type == "cpu":
            try:
                self._file = tempfile.TemporaryFile(prefix="timbre-rmvpe-")  # noqa: SIM115 (closed by close())
            except OSError as exc:
                raise TimbreError(f"rmvpe: cannot create a temporary file for a long input: {exc}") from exc
        else:
            self._tensor = torch.empty((n_frames, width), device=device)

    def write(self, start: int, values: torch.Tensor) -> None:
        """Store ``values`` (n, width) as frames ``start .. start + n``."""
        if self._tensor is not None:
            self._tensor[start : start + values.shape[0]] = values
            return
        assert self._file is not None
        data = values.detach().to("cpu", torch.float32).contiguous().numpy()
        try:
            self._file.seek(start * self.width * 4)
            self._file.write(data.data)
        except OSError as exc:  # e.g. a full disk
            raise TimbreError(f"rmvpe: cannot write temporary frames for a long input: {exc}") from exc

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Frames ``start .. stop`` as a (stop - start, width) float32 tensor on the device."""
        if self._tensor is not None:
            return self._tensor[start:stop]
        assert self._file is not None
        out = np.empty((stop - start, self.width), dtype=np.float32)
        self._file.seek(start * self.width * 4)
        if self._file.readinto(out.data) != out.nbytes:
            raise TimbreError("rmvpe: the temporary frame file was truncated")
        return torch.from_numpy(out)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._tensor = None

    def __enter__(self) -> _FrameStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _StreamingBiGru(nn.Module):
    """A bidirectional GRU run chunk by chunk with carried state: exact, with bounded work buffers.

    Holds one single-direction copy of each layer and direction of the network's BiGRU.
    """

    def __init__(self, gru: nn.GRU) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for layer in range(gru.num_layers):
            pair = nn.ModuleList()
            for suffix in ("", "_reverse"):
                in_features = gru.input_size if layer == 0 else 2 * gru.hidden_size
                single = nn.GRU(in_features, gru.hidden_size, num_layers=1, batch_first=True)
                with torch.no_grad():
                    for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                        getattr(single, f"{kind}_l0").copy_(getattr(gru, f"{kind}_l{layer}{suffix}"))
                pair.append(single)
            self.layers.append(pair)

    @torch.no_grad()
    def blocks(self, inputs: _FrameStore, chunk_frames: int) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, (n, 2 * hidden) output frames)`` of the last layer, last chunk first.

        The same numbers as the BiGRU over the whole sequence. Every layer's forward direction
        runs first, front to back, into a store; the backward direction then runs back to front
        and is joined with it chunk by chunk, so only stores and one chunk are ever held.
        """
        n_frames = inputs.n_frames
        starts = list(range(0, n_frames, chunk_frames))
        x = inputs
        for index, (forward_gru, backward_gru) in enumerate(self.layers):
            last = index == len(self.layers) - 1
            with _FrameStore(n_frames, forward_gru.hidden_size, x.device) as forward_out:
                state = None
                for start in starts:
                    stop = min(start + chunk_frames, n_frames)
                    y, state = forward_gru(x.read(start, stop)[None], state)
                    forward_out.write(start, y[0])
                out = None if last else _FrameStore(n_frames, 2 * forward_gru.hidden_size, x.device)
                state = None
                for start in reversed(starts):
                    stop = min(start + chunk_frames, n_frames)
                    y, state = backward_gru(x.read(start, stop).flip(0)[None], state)
                    both = torch.cat((forward_out.read(start, stop), y[0].flip(0)), dim=1)
                    if out is None:
                        yield start, both
                    else:
                        out.write(start, both)
            if x is not inputs:
                x.close()
            if out is not None:
                x = out

    @torch.no_grad()
    def forward(self, x: torch.Tensor, chunk_frames: int) -> torch.Tensor:
        """x: (1, T, in_features) -> (1, T, 2 * hidden), identical to the BiGRU on the whole sequence."""
        with _FrameStore(x.shape[1], x.shape[2], x.device) as store:
            store.write(0, x[0])
            out = x.new_empty((1, x.shape[1], 2 * self.layers[0][0].hidden_size))
            for start, block in self.blocks(store, chunk_frames):
                out[0, start : start + block.shape[0]] = block
        return out


def load_rmvpe_net(path: str | Path, device: str | torch.device = "cpu") -> RmvpeNet:
    """Read an ``rmvpe.pt`` state dict (any size; fp16 or fp32), load it strictly, return it in eval fp32."""
    path = Path(path)
    state = load_checkpoint(path)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path.name}: expected a plain state dict of tensors (RVC's rmvpe.pt layout)")
    config = RmvpeConfig.from_state_dict(state)
    net = RmvpeNet(config)
    load_state_strict(net, state, path.name)
    log.info("loaded RMVPE %s from %s", config, path)
    net = fold_batch_norms(net.float().eval())
    return net.to(device=device, memory_format=torch.channels_last)


def fold_batch_norms(net: RmvpeNet) -> RmvpeNet:
    """Fold every (transposed) conv's following BatchNorm into the conv, in place, for inference.

    ``conv -> BatchNorm -> ReLU`` becomes ``conv' -> Identity -> ReLU`` with the BatchNorm's
    running statistics and affine folded into ``conv'``'s weight and bias: the same numbers up to
    float rounding, one pass over the activations fewer per layer. The net is then for inference
    only (its state dict no longer has the BatchNorm entries).
    """
    if net.training:
        raise ValueError("fold_batch_norms needs a net in eval mode")
    for module in net.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for index in range(len(module) - 1):
            conv, norm = module[index], module[index + 1]
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(norm, nn.BatchNorm2d):
                transpose = isinstance(conv, nn.ConvTranspose2d)
                module[index] = fuse_conv_bn_eval(conv, norm, transpose=transpose)
                module[index + 1] = nn.Identity()
    return net


def salience_to_cents(salience: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """RVC's local weighted average: (T, 360) salience -> (T,) cents, 0 where the peak <= threshold."""
    salience = np.asarray(salience, dtype=np.float32)
    n_frames = salience.shape[0]
    if n_frames == 0:
        return np.zeros(0, dtype=np.float64)
    half = DECODE_HALF_WINDOW_BINS
    padded = np.pad(salience, ((0, 0), (half, half)))
    cents_table = np.pad(CENTS_PER_BIN * np.arange(N_PITCH_BINS) + CENTS_OFFSET, (half, half))
    center = np.argmax(salience, axis=1)
    columns = center[:, None] + np.arange(2 * half + 1)[None, :]
    window = padded[np.arange(n_frames)[:, None], columns]
    weighted = np.sum(window * cents_table[columns], axis=1)
    total = np.sum(window, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cents = weighted / total
    cents[np.max(salience, axis=1) <= threshold] = 0.0
    return np.nan_to_num(cents, nan=0.0)


def decode_salience(salience: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """RVC's RMVPE decode: (T, 360) salience -> (T,) F0 in Hz (float64), 0 where unvoiced."""
    f0 = 10.0 * 2.0 ** (salience_to_cents(salience, threshold) / 1200.0)
    f0[f0 == 10.0] = 0.0
    return f0


class RmvpeExtractor:
    """The 'rmvpe' method: RVC's RMVPE with ``threshold=0.03``, run segment by segment."""

    name = "rmvpe"

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str | torch.device = "cpu",
        threshold: float = DEFAULT_THRESHOLD,
        segment_frames: int = DEFAULT_SEGMENT_FRAMES,
        context_frames: int = DEFAULT_CONTEXT_FRAMES,
    ) -> None:
        if segment_frames < FRAME_MULTIPLE or segment_frames % FRAME_MULTIPLE:
            raise TimbreError(f"segment_frames must be a positive multiple of 32, got {segment_frames}")
        if context_frames < 0 or context_frames % FRAME_MULTIPLE:
            raise TimbreError(f"context_frames must be a non-negative multiple of 32, got {context_frames}")
        self.device = torch.device(device)
        self.net = load_rmvpe_net(model_path, self.device)
        self._gru = _StreamingBiGru(self.net.fc[0].gru).eval().to(self.device)
        self.threshold = float(threshold)
        self.segment_frames = int(segment_frames)
        self.context_frames = int(context_frames)
        self._window = torch.hann_window(N_FFT, device=self.device)
        basis = mel_basis(SAMPLE_RATE_HZ, N_FFT, N_MELS, MEL_FMIN_HZ, MEL_FMAX_HZ, True)
        self._basis = torch.from_numpy(basis.copy()).to(self.device)

    def _padded(self, audio: np.ndarray) -> torch.Tensor:
        signal = torch.from_numpy(audio).to(self.device)
        half = N_FFT // 2
        # Centred STFT with reflect padding; audio too short to reflect is zero-padded instead.
        mode = "reflect" if signal.shape[0] > half else "constant"
        return F.pad(signal[None, None], (half, half), mode=mode)[0, 0]

    def _mel(self, padded: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return log_mel_block(
            padded,
            start,
            stop,
            hop_length=HOP_LENGTH,
            window=self._window,
            basis=self._basis,
            magnitude_eps=0.0,
            clamp_min=LOG_CLAMP,
        )

    def log_mel(self, audio_16k: np.ndarray) -> torch.Tensor:
        """(L,) float32 16 kHz audio -> (128, L // 160 + 1) float32 log-mel."""
        audio = check_audio(audio_16k)
        return self._mel(self._padded(audio), 0, audio.shape[0] // HOP_LENGTH + 1)

    @torch.no_grad()
    def _run(self, mel: torch.Tensor) -> torch.Tensor:
        n_frames = mel.shape[-1]
        n_pad = -n_frames % FRAME_MULTIPLE
        mel = F.pad(mel, (0, n_pad))
        return self.net(mel[None])[0, :n_frames]

    @torch.no_grad()
    def salience(
        self,
        audio_16k: np.ndarray,
        *,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> np.ndarray:
        """(L,) float32 16 kHz audio -> (L // 160 + 1, 360) float32 salience.

        Inputs longer than one segment run the convolutional part in segments of
        ``segment_frames`` with ``context_frames`` of real neighbouring frames on each
        side, all starting on the 32-frame grid so every segment sees the pooling grid
        of a single pass; the BiGRU then runs over the whole sequence in chunks with
        carried state, which is exact.
        """
        audio = check_audio(audio_16k)
        out = np.empty((audio.shape[0] // HOP_LENGTH + 1, N_PITCH_BINS), dtype=np.float32)
        for start, block in self._salience_blocks(audio, progress, should_stop):
            out[start : start + block.shape[0]] = block
        return out

    @torch.no_grad()
    def _salience_blocks(
        self, audio: np.ndarray, progress: ProgressFn | None, should_stop: StopFn | None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(first frame, (n, 360) salience)`` blocks, at most ``segment_frames`` each, any order.

        The BiGRU's whole-input frames go through :class:`_FrameStore` (a temporary file on the
        CPU), so memory holds one segment's work whatever the input length.
        """
        padded = self._padded(audio)
        n_frames = audio.shape[0] // HOP_LENGTH + 1
        span = self.segment_frames
        context = self.context_frames
        if n_frames <= span + 2 * context:
            report(progress, 1.0, "rmvpe")
            yield 0, self._run(self._mel(padded, 0, n_frames)).cpu().numpy()
            return
        # The single pass zero-pads the mel to a multiple of 32 and runs the GRU over that
        # padded length (its backward direction starts in the padding), so do the same.
        n_total = n_frames + (-n_frames % FRAME_MULTIPLE)
        starts = list(range(0, n_total, span))
        head = self.net.fc[1:]
        with _FrameStore(n_total, 3 * N_MELS, self.device) as features:
            for index, start in enumerate(starts):
                check_stop(should_stop)
                stop = min(start + span, n_total)
                lo = max(0, start - context)
                hi = min(n_total, stop + context)
                mel = self._mel(padded, lo, min(hi, n_frames))
                mel = F.pad(mel, (0, hi - lo - mel.shape[-1]))
                features.write(start, self.net.features(mel[None])[0, start - lo : stop - lo])
                del mel
                release_free_memory()  # or the heap creeps up by ~20 MB per segment
                report(progress, 0.9 * (index + 1) / len(starts), "rmvpe")
            del padded
            check_stop(should_stop)
            # Last chunk first; frames past n_frames (the 32-frame padding) are dropped.
            for start, recurrent in self._gru.blocks(features, span):
                if start < n_frames:
                    yield start, head(recurrent[: n_frames - start]).cpu().numpy()
        report(progress, 1.0, "rmvpe")

    def extract(
        self,
        audio_16k: np.ndarray,
        *,
        p_len: int | None = None,
        f0_min_hz: float | None = None,
        f0_max_hz: float | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> np.ndarray:
        """(L,) 16 kHz audio -> (p_len,) float32 F0 Hz.

        With no range given, every frame RMVPE finds voiced stays voiced, whatever its F0, as in
        RVC (its conversion and its training extraction apply no F0 range to RMVPE, only pm and
        harvest take ``f0_min``/``f0_max``). Given a range, frames outside it become 0.
        """
        audio = check_audio(audio_16k)
        gate = f0_min_hz is not None or f0_max_hz is not None
        f0_min_hz = DEFAULT_F0_MIN_HZ if f0_min_hz is None else f0_min_hz
        f0_max_hz = DEFAULT_F0_MAX_HZ if f0_max_hz is None else f0_max_hz
        check_range(f0_min_hz, f0_max_hz)
        p_len = resolve_p_len(audio.shape[0], p_len)
        if audio.shape[0] == 0:
            return fit_length(np.zeros(0), p_len)
        # Decoded block by block (the decode is per frame), so no whole-input salience is held.
        f0 = np.empty(audio.shape[0] // HOP_LENGTH + 1, dtype=np.float64)
        for start, block in self._salience_blocks(audio, progress, should_stop):
            f0[start : start + block.shape[0]] = decode_salience(block, self.threshold)
        return fit_length(gate_range(f0, f0_min_hz, f0_max_hz) if gate else f0.astype(np.float32), p_len)
