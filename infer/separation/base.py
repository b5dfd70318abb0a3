"""The separator contract, the stems it returns, and the chunked overlap-add every separator runs in.

A separator maps a song, (C, L) float32 at any rate with C = 1 or 2, to two stems of the same
shape and rate: the vocals and the instrumental. Internally each network runs on stereo audio at
its own rate, one fixed-length chunk at a time (:func:`overlap_add`), so memory stays bounded
whatever the song's length; only the input and the output arrays grow with it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from infer.audio import resample
from infer.errors import TimbreError
from infer.memory import release_free_memory
from infer.precision import resolve_precision
from infer.progress import ProgressFn, StopFn, check_stop, report

log = logging.getLogger(__name__)

MAX_CHANNELS = 2


class SeparatorUnavailable(TimbreError):
    """A separator name is unknown, or a package or weight file it needs is missing."""


class SeparationError(TimbreError):
    """The audio handed to a separator cannot be separated (wrong shape, NaN samples, no samples)."""


@dataclass(frozen=True)
class Stems:
    """The two stems of a song, each (C, L) float32 at ``sample_rate``, C and L those of the input.

    ``vocals + instrumental`` equals the input up to float rounding: the instrumental is the residual.
    """

    vocals: np.ndarray
    instrumental: np.ndarray
    sample_rate: int


@runtime_checkable
class Separator(Protocol):
    """One vocal separator; instances are built (and their weights loaded) once by the registry."""

    name: str
    sample_rate: int
    """The rate the network runs at; inputs at other rates are resampled to it and back."""
    version: str
    """Changes whenever the output for the same input would change (part of the stem-cache key)."""
    chunk_samples: int
    """Samples (at ``sample_rate``) the network takes per call."""
    overlap_samples: int
    """Cross-fade between consecutive chunks."""
    device: torch.device

    def vocals_of_chunk(self, stereo: torch.Tensor) -> torch.Tensor:
        """(2, chunk_samples) float32 at ``sample_rate`` -> its (2, chunk_samples) vocal estimate."""
        ...

    def separate(
        self,
        audio: np.ndarray,
        sample_rate: int,
        *,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> Stems:
        """Split a song into vocals and instrumental.

        Args:
            audio: (C, L) float32, C = 1 (mono) or 2 (stereo), at ``sample_rate``.
            sample_rate: rate of ``audio`` in Hz.
            progress: optional ``progress(fraction, message)``.
            should_stop: optional cancel check; raises ``Cancelled`` when it returns True.

        Returns:
            Stems of the input's shape and rate.
        """
        ...


ChunkFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps a (2, chunk) float32 stereo chunk at the model rate to its (2, chunk) vocal estimate."""


def check_song(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Validate a (C, L) song and return it as contiguous float32; SeparationError otherwise."""
    data = np.asarray(audio)
    if data.ndim == 1:
        data = data[None, :]
    if data.ndim != 2 or not 1 <= data.shape[0] <= MAX_CHANNELS:
        raise SeparationError(
            f"separation needs (channels, samples) audio with 1 or 2 channels, got shape {data.shape}; "
            "mix a multichannel file down to stereo first"
        )
    if sample_rate < 1:
        raise SeparationError(f"sample rate must be positive, got {sample_rate}")
    if data.shape[1] == 0:
        raise SeparationError("the audio has no samples; pick a file with sound")
    if not np.issubdtype(data.dtype, np.floating):
        raise SeparationError(f"separation needs float samples in [-1, 1], got dtype {data.dtype}")
    data = np.ascontiguousarray(data, dtype=np.float32)
    if not np.isfinite(data).all():
        raise SeparationError("the audio contains NaN or infinite samples; re-export it and try again")
    return data


def to_model_stereo(audio: np.ndarray, sample_rate: int, model_rate: int) -> np.ndarray:
    """(C, L) at ``sample_rate`` -> (2, L') float32 at ``model_rate`` (mono is duplicated)."""
    stereo = np.repeat(audio, 2, axis=0) if audio.shape[0] == 1 else audio
    if sample_rate == model_rate:
        return np.ascontiguousarray(stereo, dtype=np.float32)
    return np.ascontiguousarray(resample(stereo.T, sample_rate, model_rate).T, dtype=np.float32)


def stems_from_vocals(
    audio: np.ndarray, vocals_model: np.ndarray, sample_rate: int, model_rate: int
) -> Stems:
    """Bring (2, L') vocals at ``model_rate`` back to the input's rate and layout; instrumental = rest."""
    vocals = (
        vocals_model if sample_rate == model_rate else resample(vocals_model.T, model_rate, sample_rate).T
    )
    n = audio.shape[1]
    if vocals.shape[1] < n:
        vocals = np.pad(vocals, ((0, 0), (0, n - vocals.shape[1])))
    vocals = vocals[:, :n]
    if audio.shape[0] == 1:
        vocals = vocals.mean(axis=0, keepdims=True)
    vocals = np.ascontiguousarray(vocals, dtype=np.float32)
    instrumental = audio - vocals
    return Stems(vocals=vocals, instrumental=instrumental, sample_rate=sample_rate)


def crossfade_window(chunk: int, overlap: int) -> np.ndarray:
    """(chunk,) trapezoid: linear ramps of ``overlap`` samples whose shifted copies sum to exactly 1.

    Copies spaced ``chunk - overlap`` apart add to 1 wherever two overlap (ramp up + ramp down)
    and wherever one is flat, so overlap-add needs no normalisation.
    """
    if not 0 <= overlap <= chunk // 2:
        raise ValueError(f"overlap must be in [0, chunk / 2], got {overlap} for chunk {chunk}")
    window = np.ones(chunk, dtype=np.float64)
    if overlap:
        ramp = (np.arange(overlap, dtype=np.float64) + 0.5) / overlap
        window[:overlap] = ramp
        window[chunk - overlap :] = 1.0 - ramp
    return window.astype(np.float32)


def chunk_starts(n_samples: int, chunk: int, overlap: int) -> list[int]:
    """Offsets (in the input, may be negative) of the chunks that cover ``n_samples`` with full weight.

    The first chunk starts ``overlap`` samples before the input so that its ramp lies in padding;
    the last one ends at least ``overlap`` samples after it, for the same reason.
    """
    hop = chunk - overlap
    count = max(1, math.ceil((n_samples + overlap) / hop))
    return [index * hop - overlap for index in range(count)]


def overlap_add(
    stereo: np.ndarray,
    chunk_fn: ChunkFn,
    *,
    chunk: int,
    overlap: int,
    device: torch.device,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> np.ndarray:
    """Run ``chunk_fn`` over (2, L) audio in chunks and cross-fade the results into (2, L) float32.

    Each chunk is cut from the input with zeros outside it, run on ``device``, weighted by
    :func:`crossfade_window` and added into the output; the weights sum to 1 on every input
    sample. Peak memory is the input, the output and one chunk's worth of network activations.
    """
    n = stereo.shape[1]
    window = torch.from_numpy(crossfade_window(chunk, overlap))
    out = np.zeros_like(stereo)
    starts = chunk_starts(n, chunk, overlap)
    for index, start in enumerate(starts):
        check_stop(should_stop)
        piece = np.zeros((stereo.shape[0], chunk), dtype=np.float32)
        lo, hi = max(start, 0), min(start + chunk, n)
        piece[:, lo - start : hi - start] = stereo[:, lo:hi]
        with torch.inference_mode():
            estimate = chunk_fn(torch.from_numpy(piece).to(device)).float().cpu() * window
        out[:, lo:hi] += estimate[:, lo - start : hi - start].numpy()
        del estimate
        release_free_memory()
        report(progress, (index + 1) / len(starts), f"separating: chunk {index + 1} of {len(starts)}")
    return out


def autocast_context(device: torch.device, precision: str) -> torch.autocast:
    """bfloat16 autocast when ``precision`` resolves to 'bf16' on ``device``; a disabled context otherwise."""
    resolved = resolve_precision(precision, device, torch.float32)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolved == "bf16")
