"""RVC's training preprocess: high-pass, silence slicer, 3.7 s segments, peak normalisation.

The numbers follow RVC's ``infer/lib/slicer2.py`` and ``infer/modules/train/preprocess.py``
(classic WebUI): a 5th-order Butterworth high-pass at 48 Hz applied causally, a slicer that
cuts at long silences (-42 dB, 15 ms hop), then 3.7 s segments overlapping by 0.3 s with a
tail shorter than 4.0 s kept whole, each normalised to ``x / peak * 0.675 + 0.25 * x``.
Segments whose peak exceeds 2.5 are dropped, as RVC does.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from infer import dsp
from infer.options import SLICE_MODES, names

log = logging.getLogger(__name__)

NORM_PEAK = 0.9
NORM_ALPHA = 0.75
MAX_SEGMENT_PEAK = 2.5
FEATURE_SAMPLE_RATE = 16000
_RMS_BLOCK_FRAMES = 2048


@dataclass(frozen=True)
class SliceConfig:
    """How training audio is cut into segments.

    Attributes:
        mode: 'auto' = silence slicer then fixed-length segments (RVC), 'fixed' = fixed-length
            segments over the whole clip, 'off' = every clip is one segment.
        use_normalization: apply RVC's per-segment peak normalisation.
        use_highpass: apply the 48 Hz high-pass before slicing (RVC always does).
        threshold_db: slicer silence threshold, dBFS of the frame RMS.
        min_length_ms: minimum length of a sliced chunk.
        min_interval_ms: minimum silence length that may be cut.
        hop_size_ms: slicer frame hop.
        max_sil_kept_ms: longest silence kept around a cut.
        segment_s: segment length for 'auto' and 'fixed'.
        overlap_s: overlap between consecutive segments; a tail shorter than
            ``segment_s + overlap_s`` is kept whole.
    """

    mode: str = "auto"
    use_normalization: bool = True
    use_highpass: bool = True
    threshold_db: float = -42.0
    min_length_ms: int = 1500
    min_interval_ms: int = 400
    hop_size_ms: int = 15
    max_sil_kept_ms: int = 500
    segment_s: float = 3.7
    overlap_s: float = 0.3

    def __post_init__(self) -> None:
        if self.mode not in SLICE_MODES:
            raise ValueError(f"slice mode must be one of {names(SLICE_MODES)}, not {self.mode!r}")
        if not -120.0 <= self.threshold_db < 0.0:
            raise ValueError(f"threshold_db must be in [-120, 0), got {self.threshold_db}")
        if not self.min_length_ms >= self.min_interval_ms >= self.hop_size_ms > 0:
            raise ValueError(
                "slicer lengths must satisfy min_length_ms >= min_interval_ms >= hop_size_ms > 0, got "
                f"{self.min_length_ms}, {self.min_interval_ms}, {self.hop_size_ms}"
            )
        if self.max_sil_kept_ms < self.hop_size_ms:
            raise ValueError(f"max_sil_kept_ms ({self.max_sil_kept_ms}) must be >= hop_size_ms")
        if not 0.5 <= self.segment_s <= 60.0:
            raise ValueError(f"segment_s must be in [0.5, 60], got {self.segment_s}")
        if not 0.0 <= self.overlap_s < self.segment_s:
            raise ValueError(f"overlap_s must be in [0, segment_s), got {self.overlap_s}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SliceConfig:
        """Build from a plain dict; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown slice config keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, the inverse of :meth:`from_dict`."""
        return asdict(self)


@dataclass(frozen=True)
class SlicerFrames:
    """The slicer's parameters converted to frames at one sample rate (RVC's rounding)."""

    threshold: float
    hop_samples: int
    win_samples: int
    min_length_frames: int
    min_interval_frames: int
    max_sil_kept_frames: int


@dataclass(frozen=True)
class SegmentSpan:
    """One planned segment of a clip, in samples of the (high-passed) source signal."""

    chunk_index: int
    chunk_start: int
    start: int
    end: int
    peak: float

    @property
    def is_kept(self) -> bool:
        """False for segments RVC drops: peak above 2.5, or nothing but zeros / NaN."""
        return bool(np.isfinite(self.peak)) and 0.0 < self.peak <= MAX_SEGMENT_PEAK


@dataclass(frozen=True, eq=False)
class Segment:
    """A training segment.

    Attributes:
        audio: (S,) float32 at ``sample_rate`` (the model rate).
        audio_16k: (S16,) float32 at 16 kHz for the content encoder.
        sample_rate: rate of ``audio``.
        source_start: first sample of the segment in the clip, at ``sample_rate``.
        source_end: one past the last sample.
        chunk_index: which slicer chunk it came from.
    """

    audio: np.ndarray
    audio_16k: np.ndarray
    sample_rate: int
    source_start: int
    source_end: int
    chunk_index: int


def slicer_frames(sample_rate: int, config: SliceConfig) -> SlicerFrames:
    """Convert the slicer's millisecond settings to frames, rounding as RVC does."""
    min_interval = sample_rate * config.min_interval_ms / 1000
    hop = round(sample_rate * config.hop_size_ms / 1000)
    return SlicerFrames(
        threshold=10 ** (config.threshold_db / 20.0),
        hop_samples=hop,
        win_samples=min(round(min_interval), 4 * hop),
        min_length_frames=round(sample_rate * config.min_length_ms / 1000 / hop),
        min_interval_frames=round(min_interval / hop),
        max_sil_kept_frames=round(sample_rate * config.max_sil_kept_ms / 1000 / hop),
    )


def highpass(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """RVC's training high-pass: :func:`infer.dsp.highpass_lfilter` (causal, order 5, 48 Hz); float64."""
    return dsp.highpass_lfilter(audio, int(sample_rate))


def frame_rms(samples: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """Centred frame RMS with zero padding (librosa's ``rms`` with constant padding).

    Args:
        samples: (S,) float.
        frame_length: window in samples.
        hop_length: hop in samples.

    Returns:
        (1 + (S + 2 * (frame_length // 2) - frame_length) // hop_length,) in the input's dtype.
    """
    half = frame_length // 2
    padded = np.pad(samples, (half, half), mode="constant")
    n_frames = 1 + (padded.shape[0] - frame_length) // hop_length
    out = np.empty(max(n_frames, 0), dtype=np.result_type(samples.dtype, np.float32))
    for first in range(0, n_frames, _RMS_BLOCK_FRAMES):
        last = min(first + _RMS_BLOCK_FRAMES, n_frames)
        span = padded[first * hop_length : (last - 1) * hop_length + frame_length]
        windows = np.lib.stride_tricks.sliding_window_view(span, frame_length)[::hop_length]
        out[first:last] = np.sqrt(np.mean(np.abs(windows) ** 2, axis=-1))
    return out


def _argmin_from(rms: np.ndarray, begin: int, end: int) -> int:
    """Index of the quietest frame in ``rms[begin:end]`` (first one on ties), as an absolute index."""
    return int(np.argmin(rms[begin:end])) + begin


def _silence_cuts(rms: np.ndarray, frames: SlicerFrames) -> list[tuple[int, int]]:
    """Frame ranges (first, last) of the silences to cut out, in RVC's slicer order."""
    keep = frames.max_sil_kept_frames
    is_silent = rms < frames.threshold
    cuts: list[tuple[int, int]] = []
    silence_from: int | None = None
    clip_from = 0
    for i, silent in enumerate(is_silent.tolist()):
        if silent:
            if silence_from is None:
                silence_from = i
            continue
        if silence_from is None:
            continue
        gap = i - silence_from
        is_leading = silence_from == 0 and i > keep
        is_long_enough = gap >= frames.min_interval_frames and i - clip_from >= frames.min_length_frames
        if not (is_leading or is_long_enough):
            silence_from = None
            continue
        if gap <= keep:
            quiet = _argmin_from(rms, silence_from, i + 1)
            cuts.append((0, quiet) if silence_from == 0 else (quiet, quiet))
            clip_from = quiet
            silence_from = None
            continue
        # Longer silences: keep at most ``keep`` frames of it on each side of the cut.
        quiet_left = _argmin_from(rms, silence_from, silence_from + keep + 1)
        quiet_right = _argmin_from(rms, i - keep, i + 1)
        if gap <= 2 * keep:
            quiet = _argmin_from(rms, i - keep, silence_from + keep + 1)
            if silence_from == 0:
                cuts.append((0, quiet_right))
                clip_from = quiet_right
            else:
                cuts.append((min(quiet_left, quiet), max(quiet_right, quiet)))
                clip_from = max(quiet_right, quiet)
        else:
            cuts.append((0, quiet_right) if silence_from == 0 else (quiet_left, quiet_right))
            clip_from = quiet_right
        silence_from = None
    n_frames = rms.shape[0]
    if silence_from is not None and n_frames - silence_from >= frames.min_interval_frames:
        quiet = _argmin_from(rms, silence_from, min(n_frames, silence_from + keep) + 1)
        cuts.append((quiet, n_frames + 1))
    return cuts


def slice_ranges(
    samples: np.ndarray, sample_rate: int, config: SliceConfig | None = None
) -> list[tuple[int, int]]:
    """Cut a clip at long silences, as RVC's ``Slicer.slice``.

    Args:
        samples: (S,) float mono signal.
        sample_rate: its rate.
        config: slicer settings (defaults are RVC's training preprocess values).

    Returns:
        ``[start, end)`` sample ranges of the kept chunks, in order; ``[(0, S)]`` when nothing
        is cut, ``[]`` for an empty input. Empty chunks are dropped.
    """
    config = config or SliceConfig()
    n_samples = int(samples.shape[0])
    if n_samples == 0:
        return []
    frames = slicer_frames(sample_rate, config)
    # RVC compares the sample count with a frame count here; kept so the cuts stay identical.
    if n_samples <= frames.min_length_frames:
        return [(0, n_samples)]
    rms = frame_rms(samples, frames.win_samples, frames.hop_samples)
    cuts = _silence_cuts(rms, frames)
    if not cuts:
        return [(0, n_samples)]
    n_frames = rms.shape[0]
    frame_spans: list[tuple[int, int]] = []
    if cuts[0][0] > 0:
        frame_spans.append((0, cuts[0][0]))
    frame_spans.extend((cuts[k][1], cuts[k + 1][0]) for k in range(len(cuts) - 1))
    if cuts[-1][1] < n_frames:
        frame_spans.append((cuts[-1][1], n_frames))
    hop = frames.hop_samples
    ranges = [(a * hop, min(n_samples, b * hop)) for a, b in frame_spans]
    return [(a, b) for a, b in ranges if b > a]


def split_segments(length: int, sample_rate: int, config: SliceConfig | None = None) -> list[tuple[int, int]]:
    """Split one chunk into overlapping fixed-length segments, as RVC's preprocess.

    A segment of ``segment_s`` starts every ``segment_s - overlap_s``; once what remains
    from a start is no longer than ``segment_s + overlap_s`` it becomes the last segment.

    Returns:
        ``[start, end)`` ranges within the chunk; ``[]`` for an empty chunk.
    """
    config = config or SliceConfig()
    if length <= 0:
        return []
    step = sample_rate * (config.segment_s - config.overlap_s)
    segment_len = int(config.segment_s * sample_rate)
    tail_len = (config.segment_s + config.overlap_s) * sample_rate
    spans: list[tuple[int, int]] = []
    i = 0
    while True:
        start = int(step * i)
        i += 1
        if length - start > tail_len:
            spans.append((start, start + segment_len))
        else:
            spans.append((start, length))
            return spans


def chunk_ranges(samples: np.ndarray, sample_rate: int, config: SliceConfig) -> list[tuple[int, int]]:
    """Chunks for the configured mode: slicer output for 'auto', the whole clip otherwise."""
    if config.mode == "auto":
        return slice_ranges(samples, sample_rate, config)
    n_samples = int(samples.shape[0])
    return [(0, n_samples)] if n_samples > 0 else []


def plan_segments(
    samples: np.ndarray, sample_rate: int, config: SliceConfig | None = None
) -> list[SegmentSpan]:
    """All segments of a (high-passed) clip with their peaks, kept and dropped ones alike.

    Args:
        samples: (S,) float signal, already high-passed if the config asks for it.
        sample_rate: its rate.
        config: slicing settings.
    """
    config = config or SliceConfig()
    spans: list[SegmentSpan] = []
    for chunk_index, (chunk_start, chunk_end) in enumerate(chunk_ranges(samples, sample_rate, config)):
        if config.mode == "off":
            parts = [(0, chunk_end - chunk_start)]
        else:
            parts = split_segments(chunk_end - chunk_start, sample_rate, config)
        for start, end in parts:
            piece = samples[chunk_start + start : chunk_start + end]
            peak = float(np.max(np.abs(piece))) if piece.size else 0.0
            spans.append(SegmentSpan(chunk_index, chunk_start, chunk_start + start, chunk_start + end, peak))
    return spans


def norm_segment(segment: np.ndarray) -> np.ndarray:
    """RVC's peak normalisation: ``x / peak * (0.9 * 0.75) + (1 - 0.75) * x``.

    Args:
        segment: (S,) float.

    Returns:
        (S,) in the input's float dtype; an all-zero input is returned unchanged (copied).
    """
    peak = np.max(np.abs(segment)) if segment.size else 0.0
    if not peak > 0:
        return segment.copy()
    return segment / peak * (NORM_PEAK * NORM_ALPHA) + (1 - NORM_ALPHA) * segment


def resample_to_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Resample to 16 kHz exactly as RVC's ``librosa.resample`` call does.

    That is soxr 'HQ' (:func:`infer.audio.resample`, the same filter), then zero-padded or trimmed
    to librosa's length ``ceil(S * 16000 / sample_rate)``.

    Args:
        audio: (S,) float32 or float64.
        sample_rate: its rate.

    Returns:
        (ceil(S * 16000 / sample_rate),) in the input's dtype.
    """
    from infer.audio import resample

    if sample_rate == FEATURE_SAMPLE_RATE:
        return audio.copy()
    out = resample(audio, sample_rate, FEATURE_SAMPLE_RATE)
    length = int(np.ceil(audio.shape[0] * (float(FEATURE_SAMPLE_RATE) / sample_rate)))
    if out.shape[0] >= length:
        return out[:length]
    return np.pad(out, (0, length - out.shape[0]))


def preprocess_audio(audio: np.ndarray, sample_rate: int, config: SliceConfig | None = None) -> list[Segment]:
    """Turn one decoded clip into training segments.

    Args:
        audio: (S,) float32 mono at the model rate.
        sample_rate: the model rate.
        config: slicing settings.

    Returns:
        Kept segments in order, each at ``sample_rate`` and at 16 kHz. Segments with a peak
        above 2.5 or with no signal at all are left out (logged), as RVC does.
    """
    config = config or SliceConfig()
    if audio.ndim != 1:
        raise ValueError(f"preprocess_audio expects mono (S,) audio, got shape {audio.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    signal = highpass(audio, sample_rate) if config.use_highpass else audio.astype(np.float64)
    segments: list[Segment] = []
    dropped = 0
    for span in plan_segments(signal, sample_rate, config):
        if not span.is_kept:
            dropped += 1
            continue
        piece = signal[span.start : span.end]
        if config.use_normalization:
            piece = norm_segment(piece)
        segments.append(
            Segment(
                audio=piece.astype(np.float32),
                audio_16k=resample_to_16k(piece, sample_rate).astype(np.float32),
                sample_rate=sample_rate,
                source_start=span.start,
                source_end=span.end,
                chunk_index=span.chunk_index,
            )
        )
    if dropped:
        log.info("dropped %d segment(s) that were silent or peaked above %.1f", dropped, MAX_SEGMENT_PEAK)
    return segments
