"""Song covers in one call: separate the vocals, convert them into a voice, remix over the backing.

``make_cover`` runs three stages with progress for each:

1. **separate**: :func:`infer.separation.separate_file` (stems cached by content hash and
   separator, so a second cover of the same song skips this stage);
2. **convert**: the vocal stem at 16 kHz through :meth:`infer.pipeline.Converter.convert` with
   every conversion knob;
3. **mix**: the converted vocals resampled to the song's rate and spread over its channels, the
   instrumental optionally pitch-shifted by the same semitones (Rubber Band, through pedalboard),
   per-stem gains in dB, and a look-ahead peak limiter instead of a hard clip.

Outputs in the chosen folder: ``<stem>.cover.flac``, ``<stem>.vocals.flac`` (the converted
vocals) and ``<stem>.instrumental.flac``, at the song's rate and channel layout.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from infer import dsp
from infer.audio import decode_audio, load_audio_native, resample, save_audio
from infer.errors import TimbreError
from infer.params import ConvertParams
from infer.pipeline import SAMPLE_RATE_16K, Converter
from infer.progress import ProgressFn, StopFn, check_stop, report, sub_progress
from infer.separation import Separator, separate_file

log = logging.getLogger(__name__)

COVER_SUFFIX = ".cover.flac"
VOCALS_SUFFIX = ".vocals.flac"
INSTRUMENTAL_SUFFIX = ".instrumental.flac"
MAX_GAIN_DB = 24.0
# Share of the whole call each stage gets in the progress bar.
_SEPARATE_SHARE = (0.0, 0.35)
_CONVERT_SHARE = (0.35, 0.9)


class CoverError(TimbreError):
    """A cover cannot be made from this song (e.g. it has no vocals to convert)."""


@dataclass(frozen=True)
class CoverParams:
    """The song-side knobs of a cover (the voice-side ones are :class:`ConvertParams`).

    Attributes:
        separator: a name of :data:`infer.options.SEPARATORS`, or None for the offline default.
        vocal_gain_db: gain of the converted vocals in the mix.
        instrumental_gain_db: gain of the instrumental in the mix.
        shift_instrumental: pitch-shift the instrumental by the conversion's semitones, so the
            backing follows a key change of the voice.
        ceiling: the limiter's highest absolute sample value.
    """

    separator: str | None = None
    vocal_gain_db: float = 0.0
    instrumental_gain_db: float = 0.0
    shift_instrumental: bool = False
    ceiling: float = dsp.LIMITER_CEILING

    def __post_init__(self) -> None:
        for name in ("vocal_gain_db", "instrumental_gain_db"):
            value = getattr(self, name)
            if not -MAX_GAIN_DB <= value <= MAX_GAIN_DB:
                raise ValueError(f"{name} must be within ±{MAX_GAIN_DB:g} dB, got {value}")
        if not 0 < self.ceiling <= 1:
            raise ValueError(f"ceiling must be in (0, 1], got {self.ceiling}")


@dataclass(frozen=True)
class CoverResult:
    """What :func:`make_cover` wrote and what happened on the way.

    Attributes:
        cover: the remix.
        vocals: the converted vocals alone.
        instrumental: the backing alone (pitch-shifted when asked).
        sample_rate: the rate of all three (the song's).
        channels: their channel count (the song's, 1 or 2).
        is_cached: the stems came from the cache; no separation ran.
        timings_s: seconds per stage (separate, convert, mix).
        warnings: what the user should know (from decoding, separation and conversion).
    """

    cover: Path
    vocals: Path
    instrumental: Path
    sample_rate: int
    channels: int
    is_cached: bool
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def db_to_gain(db: float) -> float:
    """Amplitude factor of ``db`` decibels."""
    return float(10.0 ** (db / 20.0))


def pitch_shift(audio: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """(L, C) audio shifted by ``semitones`` at the same duration (Rubber Band, through pedalboard)."""
    if semitones == 0:
        return audio
    try:
        from pedalboard import PitchShift
    except ImportError as exc:
        raise TimbreError(
            "shifting the instrumental needs the pedalboard package (pip install pedalboard); "
            "or leave the instrumental unshifted"
        ) from exc
    shifted = PitchShift(semitones=float(semitones)).process(
        np.ascontiguousarray(audio.T, dtype=np.float32), float(sample_rate)
    )
    return np.ascontiguousarray(shifted.T[: audio.shape[0]], dtype=np.float32)


def remix(
    vocals: np.ndarray,
    instrumental: np.ndarray,
    sample_rate: int,
    cover: CoverParams,
) -> np.ndarray:
    """Vocals and instrumental, both (L, C) at ``sample_rate``, summed with gains and limited."""
    if vocals.shape != instrumental.shape:
        raise ValueError(f"stems must have one shape, got {vocals.shape} and {instrumental.shape}")
    mix = vocals * np.float32(db_to_gain(cover.vocal_gain_db))
    mix += instrumental * np.float32(db_to_gain(cover.instrumental_gain_db))
    return dsp.limit_peaks(mix, sample_rate, ceiling=cover.ceiling)


def fit_to(audio: np.ndarray, length: int, channels: int) -> np.ndarray:
    """Mono ``audio`` trimmed or zero-padded to ``length`` samples and repeated over ``channels``: (L, C)."""
    out = np.zeros((length, channels), dtype=np.float32)
    n = min(length, audio.shape[0])
    out[:n] = audio[:n, None]
    return out


def make_cover(
    converter: Converter,
    song: str | Path,
    out_dir: str | Path,
    params: ConvertParams | None = None,
    cover: CoverParams | None = None,
    *,
    cache_dir: str | Path | None = None,
    separator: Separator | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> CoverResult:
    """Separate ``song``, convert its vocals with ``converter``, and remix them over its backing.

    Args:
        converter: the voice, prepared (see :class:`infer.pipeline.Converter`).
        song: any audio file ffmpeg decodes, mono or stereo.
        out_dir: where the three outputs go (created when missing).
        params: the conversion knobs (pitch shift, F0 method, index rate, sampler...).
        cover: separator, gains, instrumental shift, limiter ceiling.
        cache_dir: the stem cache (None: :func:`infer.separation.default_cache_dir`).
        separator: a built separator (a device or precision of your choice); overrides
            ``cover.separator``.
        progress: ``progress(fraction, stage)``; stages are ``separate``, ``convert``, ``mix``.
        should_stop: checked between and inside stages; :class:`Cancelled` when it returns True.

    Raises:
        CoverError: the song has no vocals to convert.
        BadAudioError: the song cannot be decoded, is silent or has more than two channels.
    """
    params = params or ConvertParams()
    cover = cover or CoverParams()
    source = Path(song).expanduser()
    out = Path(out_dir).expanduser()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="timbre-stems-") as work:
        stems = separate_file(
            source,
            work,
            separator if separator is not None else cover.separator,
            cache_dir=cache_dir,
            progress=_stage(progress, _SEPARATE_SHARE, "separate"),
            should_stop=should_stop,
        )
        if not stems.has_vocals:
            raise CoverError(
                f"{source.name} has no vocals to convert (the separated vocal stem is silent); "
                "pick a song with singing"
            )
        timings["separate"] = time.perf_counter() - started
        check_stop(should_stop)
        t0 = time.perf_counter()
        vocals_16k = decode_audio(stems.vocals, SAMPLE_RATE_16K)
        result = converter.convert(
            vocals_16k.audio,
            params,
            progress=_stage(progress, _CONVERT_SHARE, "convert"),
            should_stop=should_stop,
        )
        timings["convert"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        report(progress, _CONVERT_SHARE[1], "mix: reading the instrumental")
        instrumental, rate = load_audio_native(stems.instrumental)
    converted = fit_to(
        resample(result.audio, result.sample_rate, rate), instrumental.shape[0], stems.channels
    )
    instrumental = np.array(instrumental, dtype=np.float32)
    if cover.shift_instrumental and params.pitch_shift_semitones:
        report(progress, 0.92, f"mix: shifting the instrumental {params.pitch_shift_semitones:+g} semitones")
        instrumental = pitch_shift(instrumental, rate, params.pitch_shift_semitones)
    check_stop(should_stop)
    report(progress, 0.95, "mix: remixing")
    mixed = remix(converted, instrumental, rate, cover)
    paths = (out / f"{source.stem}{COVER_SUFFIX}", out / f"{source.stem}{VOCALS_SUFFIX}")
    inst_path = out / f"{source.stem}{INSTRUMENTAL_SUFFIX}"
    out.mkdir(parents=True, exist_ok=True)
    save_audio(paths[0], mixed, rate)
    save_audio(paths[1], dsp.limit_peaks(converted, rate), rate)
    save_audio(inst_path, dsp.limit_peaks(instrumental, rate), rate)
    timings["mix"] = time.perf_counter() - t0
    report(progress, 1.0, "done")
    log.info("%s -> %s (%s)", source.name, paths[0], ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return CoverResult(
        cover=paths[0],
        vocals=paths[1],
        instrumental=inst_path,
        sample_rate=rate,
        channels=stems.channels,
        is_cached=stems.is_cached,
        timings_s=timings,
        warnings=tuple(result.warnings),
    )


def _stage(progress: ProgressFn | None, share: tuple[float, float], name: str) -> ProgressFn | None:
    """``progress`` for one stage: its own 0..1 mapped onto ``share``, messages prefixed by ``name``."""
    inner = sub_progress(progress, *share)
    if inner is None:
        return None

    def update(fraction: float, stage: str) -> None:
        inner(fraction, f"{name}: {stage}")

    return update
