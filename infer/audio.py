"""Audio load, save, resample and input checks.

Size: decode, inspect and save share ffmpeg's invocation and its error mapping.

Contract: audio inside Timbre is a float32 numpy array, (L,) mono or (L, C), in the source's own
scale (nominally [-1, 1]; float files may exceed it and are never clipped on load).

Decoding goes through the ffmpeg executable (system ffmpeg on PATH, else the binary shipped by the
``imageio-ffmpeg`` wheel), called with an argument list built by ffmpeg-python, never a shell.
Resampling path: ffmpeg decodes at the file's **native** rate to 32-bit float WAV on a pipe, the
channels are averaged here, and :func:`resample` (the soxr library, 'HQ') converts the rate. This
gives identical numbers whichever ffmpeg build is present (builds differ in their resamplers) and is
the same soxr HQ filter that ``librosa.resample`` uses by default. RVC itself lets ffmpeg resample
(``-ar``), so loaded audio differs from RVC's by resampler detail only.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from infer.errors import AudioDecodeError, TimbreError

log = logging.getLogger(__name__)

DECODE_TIMEOUT_S = 120.0
LONG_DECODE_TIMEOUT_S = 1800.0
"""ffmpeg's limit for decoding whole songs to disk (hours of audio)."""
ENCODE_TIMEOUT_S = 120.0
MIN_DURATION_S = 0.5
"""Shortest input :func:`check_convertible` accepts. HuBERT (25 ms window) and the pitch trackers
would run on less, but below half a second the result is a fragment of a syllable and RVC's loudness
envelope (half-second RMS frames) has a single frame."""

SILENCE_RMS_DBFS = -60.0
LEVEL_FLOOR_DBFS = -120.0
CLIP_LEVEL = 0.999
"""|sample| at or above this counts as full scale (int16 full scale is 32767/32768 = 0.99997)."""
CLIPPED_SHARE_WARN = 0.001
NOISE_FLATNESS = 0.3
"""Median spectral flatness above which audio is flagged as noise (white noise ~0.56, speech < 0.02)."""
FLATNESS_FRAME_S = 0.032
FLATNESS_BAND_HZ = (100.0, 8000.0)
FLATNESS_MAX_FRAMES = 1000
FLATNESS_RANGE_DB = 40.0
OUTPUT_PEAK = 0.99
INT16_SCALE = 32768

_FFMPEG_LOG_ARGS = ("-hide_banner", "-nostdin", "-loglevel", "level+info")
_MP3_RATES_HZ = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_AAC_RATES_HZ = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
_SOUNDFILE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
# suffix -> (ffmpeg muxer, encoder, encoder options, supported sample rates or None for any)
_FFMPEG_FORMATS: dict[str, tuple[str, str, dict[str, str], tuple[int, ...] | None]] = {
    ".mp3": ("mp3", "libmp3lame", {"q:a": "2"}, _MP3_RATES_HZ),
    ".m4a": ("ipod", "aac", {"b:a": "192k"}, _AAC_RATES_HZ),
    ".ogg": ("ogg", "libvorbis", {"q:a": "6"}, None),
}
SAVE_SUFFIXES = tuple(sorted([*_SOUNDFILE_FORMATS, *_FFMPEG_FORMATS]))


class BadAudioError(AudioDecodeError):
    """An input cannot be decoded or is unusable; ``reason`` is a short machine-readable code.

    Reasons: 'no_ffmpeg', 'not_found', 'unreadable', 'empty', 'not_audio', 'no_audio_stream',
    'timeout', 'decode_failed', 'not_finite', 'too_short', 'silent'.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class AudioEncodeError(TimbreError):
    """Audio could not be written.

    Reasons: 'unsupported_format', 'not_finite', 'encode_failed', 'write_failed'.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class AudioReport:
    """Cheap level and content checks of one signal; see :func:`inspect_audio`.

    Attributes:
        duration_s: length in seconds.
        peak: largest |sample| (may exceed 1 for float sources).
        rms_dbfs: RMS level in dB re full scale, floored at ``LEVEL_FLOOR_DBFS``.
        clipped_share: fraction of samples at full scale, ``CLIP_LEVEL <= |x| <= 1``.
        is_silent: RMS below ``SILENCE_RMS_DBFS`` (or no samples).
        looks_like_noise: loud frames are spectrally flat like noise, not voice.
        warnings: human-readable findings, each saying what it means for the conversion.
    """

    duration_s: float
    peak: float
    rms_dbfs: float
    clipped_share: float
    is_silent: bool
    looks_like_noise: bool
    warnings: tuple[str, ...]


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg executable: ``ffmpeg`` on PATH, else the imageio-ffmpeg binary (cached).

    Raises:
        BadAudioError: reason 'no_ffmpeg' when neither exists.
    """
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError) as exc:
        raise BadAudioError(
            "ffmpeg was not found: install it (e.g. 'apt-get install ffmpeg') or the "
            "'imageio-ffmpeg' Python package",
            reason="no_ffmpeg",
        ) from exc


def _run_ffmpeg(
    args: list[str], *, timeout_s: float, stdin_bytes: bytes | None = None
) -> tuple[int, bytes, str]:
    """Run ffmpeg with ``args`` (no shell); returns (exit code, stdout, stderr text)."""
    cmd = [ffmpeg_exe(), *_FFMPEG_LOG_ARGS, *args]
    log.debug("running %s", cmd)
    try:
        proc = subprocess.run(
            cmd,
            input=stdin_bytes,
            stdin=subprocess.DEVNULL if stdin_bytes is None else None,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BadAudioError(
            f"ffmpeg did not finish within {timeout_s:g} s; the file may be damaged or very long "
            "(raise the timeout for long files)",
            reason="timeout",
        ) from exc
    except OSError as exc:
        raise BadAudioError(f"cannot run ffmpeg at {cmd[0]}: {exc}", reason="no_ffmpeg") from exc
    stderr = proc.stderr.decode("utf-8", errors="replace")
    if proc.returncode != 0 and "Invalid loglevel" in stderr:
        raise BadAudioError(
            f"the ffmpeg at {cmd[0]} is too old (it lacks '-loglevel level+info'); "
            "install ffmpeg 4.3 or newer",
            reason="no_ffmpeg",
        )
    return proc.returncode, proc.stdout, stderr


def _error_lines(stderr: str) -> list[str]:
    """ffmpeg log lines at error or fatal level (or that read like errors on builds without levels)."""
    lines = []
    for line in stderr.splitlines():
        if "[error]" in line or "[fatal]" in line or "Invalid data found" in line:
            lines.append(re.sub(r"\[[^\]]*@ 0x[0-9a-f]+\] ", "", line).replace("[error] ", "").strip())
    return lines


def _claimed_duration_s(stderr: str) -> float | None:
    """The input duration ffmpeg read from the container header, if it printed one."""
    match = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", stderr)
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _parse_wav_stream(data: bytes) -> tuple[np.ndarray, int]:
    """Decode ffmpeg's piped float WAV (sizes unknown, data runs to the end).

    Returns:
        ((L, C) float32 read-only view of ``data``, sample rate in Hz).
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("ffmpeg output is not a WAV stream")
    pos = 12
    channels = sample_rate = 0
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        chunk_size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk_id == b"fmt ":
            channels = int.from_bytes(data[body + 2 : body + 4], "little")
            sample_rate = int.from_bytes(data[body + 4 : body + 8], "little")
        elif chunk_id == b"data":
            if channels < 1 or sample_rate < 1:
                raise ValueError("WAV stream has no valid fmt chunk before its data")
            n_frames = (len(data) - body) // (4 * channels)
            samples = np.frombuffer(data, dtype="<f4", count=n_frames * channels, offset=body)
            return samples.reshape(n_frames, channels), sample_rate
        pos = body + chunk_size + (chunk_size & 1)
    raise ValueError("WAV stream has no data chunk")


def _decode_failure(path: Path, stderr: str) -> BadAudioError:
    """Map a failed ffmpeg run to a typed error with a short reason."""
    errors = _error_lines(stderr)
    detail = errors[0] if errors else (stderr.strip().splitlines() or ["no message"])[-1]
    if "matches no streams" in stderr or "Failed to set value '0:a:0'" in stderr:
        return BadAudioError(
            f"{path.name} has no audio stream (ffmpeg: {detail}); pick a file that contains sound",
            reason="no_audio_stream",
        )
    if "Input #0" not in stderr:
        # ffmpeg could not even open the input as media (it prints 'Input #0' once it can)
        return BadAudioError(
            f"cannot decode {path.name}: not audio, or a format ffmpeg does not know (ffmpeg: {detail}); "
            "pick a wav, flac, mp3, m4a, ogg or video file",
            reason="not_audio",
        )
    return BadAudioError(f"ffmpeg could not decode {path.name}: {detail}", reason="decode_failed")


def load_audio(
    path: str | Path,
    sample_rate: int,
    *,
    mono: bool = True,
    decode_timeout_s: float = DECODE_TIMEOUT_S,
) -> np.ndarray:
    """Decode any file ffmpeg reads at ``sample_rate``: :func:`decode_audio` without its warnings."""
    return decode_audio(path, sample_rate, mono=mono, decode_timeout_s=decode_timeout_s).audio


@dataclass(frozen=True)
class DecodedAudio:
    """Decoded samples and what the decoding found.

    Attributes:
        audio: (L,) or (L, C) float32 at the requested rate.
        native_sample_rate: the file's own rate in Hz.
        channels: the file's channel count.
        warnings: findings a user should see (truncated file, channels averaged, resampled).
    """

    audio: np.ndarray
    native_sample_rate: int
    channels: int
    warnings: tuple[str, ...]


def decode_audio(
    path: str | Path,
    sample_rate: int,
    *,
    mono: bool = True,
    decode_timeout_s: float = DECODE_TIMEOUT_S,
) -> DecodedAudio:
    """Decode any file ffmpeg reads (wav, flac, mp3, m4a, ogg/opus, video) at ``sample_rate``.

    The first audio stream is decoded at its native rate to float32, averaged over channels when
    ``mono`` (a plain mean of all channels), and resampled with :func:`resample`. Float sources
    keep samples above 1.0.

    A damaged or truncated file (ffmpeg decodes part of it, then reports 'Invalid data') is **not**
    rejected: the decodable part is returned and a warning is logged stating the decoded duration
    against the duration the header claims.

    Args:
        path: the audio or video file.
        sample_rate: output rate in Hz.
        mono: average channels to (L,); False returns (L, C).
        decode_timeout_s: ffmpeg is stopped after this many seconds.

    Returns:
        The samples, (L,) or (L, C) float32, and the decoding's warnings.

    Raises:
        BadAudioError: reason 'not_found', 'unreadable', 'empty', 'not_audio', 'no_audio_stream',
            'timeout', 'decode_failed' or 'no_ffmpeg'.
    """
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    path = Path(path).expanduser()
    data, native_rate, found = _decode_native(path, decode_timeout_s)
    warnings = list(found)
    channels = int(data.shape[1])
    if mono and channels > 1:
        warnings.append(f"the {channels} channels were averaged to mono")
    if native_rate != sample_rate:
        log.debug("%s: resampled from %d Hz to %d Hz", path.name, native_rate, sample_rate)
    for warning in warnings:
        log.warning("%s: %s", path.name, warning)
    audio = data.mean(axis=1, dtype=np.float32) if mono else data
    # resample always returns a new, writable array
    return DecodedAudio(resample(audio, native_rate, sample_rate), native_rate, channels, tuple(warnings))


def load_audio_native(
    path: str | Path, *, decode_timeout_s: float = DECODE_TIMEOUT_S
) -> tuple[np.ndarray, int]:
    """Decode a file at its own rate and channel layout, with :func:`load_audio`'s checks and errors.

    Returns:
        ((L, C) float32 read-only array, native sample rate in Hz).

    Raises:
        BadAudioError: as :func:`load_audio`.
    """
    path = Path(path).expanduser()
    data, native_rate, warnings = _decode_native(path, decode_timeout_s)
    for warning in warnings:
        log.warning("%s: %s", path.name, warning)
    return data, native_rate


def _decode_native(path: Path, decode_timeout_s: float) -> tuple[np.ndarray, int, list[str]]:
    """(L, C) float32 samples at the file's rate, the rate, and the decoding's warnings."""
    import ffmpeg

    if decode_timeout_s <= 0:
        raise ValueError(f"decode_timeout_s must be positive, got {decode_timeout_s}")
    path = Path(path).expanduser()
    try:
        with open(path, "rb") as handle:
            is_empty = handle.read(1) == b""
    except FileNotFoundError:
        raise BadAudioError(f"audio file not found: {path}", reason="not_found") from None
    except OSError as exc:
        raise BadAudioError(
            f"cannot read {path}: {exc.strerror or exc}; check the path and its permissions",
            reason="unreadable",
        ) from exc
    if is_empty:
        raise BadAudioError(
            f"{path.name} is an empty file (0 bytes); re-export or re-copy the recording", reason="empty"
        )
    # 'file:' keeps ffmpeg from reading a name with a colon as a protocol; the whitelist keeps
    # playlists and other containers from opening network or device inputs.
    stream = ffmpeg.input(f"file:{path.resolve()}", protocol_whitelist="file,pipe")["a:0"]
    args = stream.output("pipe:", format="wav", acodec="pcm_f32le", map_metadata=-1).get_args()
    code, out, stderr = _run_ffmpeg(args, timeout_s=decode_timeout_s)
    if code != 0:
        raise _decode_failure(path, stderr)
    try:
        data, native_rate = _parse_wav_stream(out)
    except ValueError as exc:
        raise BadAudioError(
            f"ffmpeg gave no usable audio for {path.name}: {exc}", reason="decode_failed"
        ) from exc
    if data.shape[0] == 0:
        raise BadAudioError(f"{path.name} holds no audio samples; pick a file with sound", reason="empty")
    warnings: list[str] = []
    errors = _error_lines(stderr)
    if errors:
        decoded_s = data.shape[0] / native_rate
        claimed_s = _claimed_duration_s(stderr)
        claimed = f"of the {claimed_s:.2f} s the header claims" if claimed_s else "(header gives no duration)"
        warnings.append(
            f"ffmpeg reported decoding errors ({errors[0]}); decoded {decoded_s:.2f} s {claimed}. The file "
            "looks truncated or damaged; the decodable part was used (re-export the file to get all of it)"
        )
    return data, native_rate, warnings


@lru_cache(maxsize=1)
def _ffmpeg_has_soxr() -> bool:
    code, stdout, stderr = _run_ffmpeg(["-buildconf"], timeout_s=30.0)
    return code == 0 and ("libsoxr" in stderr or b"libsoxr" in stdout)


def decode_to_wav(
    path: str | Path,
    target: str | Path,
    *,
    sample_rate: int | None = None,
    channels: int | None = None,
    decode_timeout_s: float = LONG_DECODE_TIMEOUT_S,
) -> Path:
    """Decode (and optionally resample / remix) any file ffmpeg reads into a float32 WAV on disk.

    For audio too long to hold in memory: the result is read back in blocks (soundfile). The
    same checks and errors as :func:`decode_audio` (empty, not audio, ...); resampling uses
    ffmpeg's SoX resampler where the build has it. RF64 is used past 4 GB.
    """
    import ffmpeg

    path = Path(path).expanduser()
    target = Path(target)
    if not path.is_file():
        raise BadAudioError(f"audio file not found: {path}", reason="not_found")
    if path.stat().st_size == 0:
        raise BadAudioError(
            f"{path.name} is an empty file (0 bytes); re-export or re-copy the recording", reason="empty"
        )
    options: dict[str, object] = {"acodec": "pcm_f32le", "format": "wav", "rf64": "auto", "map_metadata": -1}
    if sample_rate is not None:
        options["ar"] = sample_rate
        if _ffmpeg_has_soxr():
            options["af"] = "aresample=resampler=soxr:precision=28"
    if channels is not None:
        options["ac"] = channels
    stream = ffmpeg.input(f"file:{path.resolve()}", protocol_whitelist="file,pipe")["a:0"]
    args = stream.output(f"file:{target.resolve()}", **options).get_args()
    code, _, stderr = _run_ffmpeg(["-y", *args], timeout_s=decode_timeout_s)
    if code != 0:
        target.unlink(missing_ok=True)
        raise _decode_failure(path, stderr)
    errors = _error_lines(stderr)
    if errors:
        log.warning(
            "%s: ffmpeg reported decoding errors (%s); the decodable part is used", path.name, errors[0]
        )
    return target


def resample(audio: np.ndarray, from_sr: int, to_sr: int) -> np.ndarray:
    """Change the sample rate with soxr 'HQ' (the filter librosa uses by default).

    Args:
        audio: (L,) or (L, C); float32 and float64 keep their dtype, anything else becomes float32.
        from_sr: current rate in Hz.
        to_sr: wanted rate in Hz.

    Returns:
        (L', ...) with ``L'`` about ``L * to_sr / from_sr``; a copy when the rates are equal.
    """
    import soxr

    if from_sr < 1 or to_sr < 1:
        raise ValueError(f"sample rates must be positive, got {from_sr} and {to_sr}")
    audio = np.asarray(audio)
    if audio.dtype not in (np.float32, np.float64):
        audio = audio.astype(np.float32)
    if from_sr == to_sr:
        return audio.copy()
    if audio.shape[0] == 0:
        return audio.copy()
    return soxr.resample(np.ascontiguousarray(audio), from_sr, to_sr, quality="HQ")


def _spectral_flatness(mono: np.ndarray, sample_rate: int) -> float | None:
    """Median spectral flatness of the loud frames, or None when there are too few of them."""
    n_fft = 1 << int(np.ceil(np.log2(FLATNESS_FRAME_S * sample_rate)))
    n_frames = mono.shape[0] // n_fft
    if n_frames < 3:
        return None
    starts = np.arange(n_frames) * n_fft
    if n_frames > FLATNESS_MAX_FRAMES:
        starts = starts[np.linspace(0, n_frames - 1, FLATNESS_MAX_FRAMES).astype(np.int64)]
    frames = mono[starts[:, None] + np.arange(n_fft)[None, :]].astype(np.float64)
    energy_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-20)
    is_loud = (energy_db > SILENCE_RMS_DBFS) & (energy_db > energy_db.max() - FLATNESS_RANGE_DB)
    if is_loud.sum() < 3:
        return None
    spectrum = np.abs(np.fft.rfft(frames[is_loud] * np.hanning(n_fft), axis=1)) ** 2
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    band = (freqs >= FLATNESS_BAND_HZ[0]) & (freqs <= min(FLATNESS_BAND_HZ[1], sample_rate / 2))
    power = spectrum[:, band] + 1e-20
    flatness = np.exp(np.mean(np.log(power), axis=1)) / np.mean(power, axis=1)
    return float(np.median(flatness))


def _clipped_share(magnitude: np.ndarray) -> float:
    """Share of samples at full scale: ``CLIP_LEVEL <= |x| <= 1``.

    Samples above 1.0 (float sources) are overs kept intact, not clipping, so they are not counted.
    Resampling or lossy coding smears clipped plateaus, so measure at the native rate.
    """
    return float(np.mean((magnitude >= CLIP_LEVEL) & (magnitude <= 1.0)))


def inspect_audio(audio: np.ndarray, sample_rate: int) -> AudioReport:
    """Measure level, clipping, silence and noise-likeness; never raises on odd content.

    Args:
        audio: (L,) or (L, C) float audio; channels are averaged for the analysis.
        sample_rate: rate in Hz.

    Returns:
        The report; its ``warnings`` explain every finding (non-finite samples, too short, silent,
        clipped, above full scale, noise-like).
    """
    data = np.asarray(audio, dtype=np.float32)
    mono = data.mean(axis=1, dtype=np.float32) if data.ndim == 2 else data.reshape(-1)
    warnings: list[str] = []
    n_bad = int(np.count_nonzero(~np.isfinite(mono)))
    if n_bad:
        warnings.append(
            f"{n_bad} samples are NaN or infinite; they were counted as 0 here and the audio cannot "
            "be converted as is"
        )
        mono = np.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0)
    duration_s = mono.shape[0] / sample_rate
    if mono.shape[0] == 0:
        return AudioReport(
            0.0, 0.0, LEVEL_FLOOR_DBFS, 0.0, True, False, (*warnings, "the audio has no samples")
        )
    magnitude = np.abs(mono)
    peak = float(magnitude.max())
    rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
    rms_dbfs = max(LEVEL_FLOOR_DBFS, 20 * np.log10(rms)) if rms > 0 else LEVEL_FLOOR_DBFS
    clipped_share = _clipped_share(magnitude)
    is_silent = rms_dbfs < SILENCE_RMS_DBFS
    if duration_s < MIN_DURATION_S:
        warnings.append(
            f"the audio is only {duration_s:.2f} s long, shorter than the {MIN_DURATION_S} s needed to "
            "convert it; use a longer clip"
        )
    if is_silent:
        warnings.append(
            f"the audio is silent (RMS {rms_dbfs:.1f} dBFS): there is no voice to convert; check the "
            "file or the recording input"
        )
    if clipped_share >= CLIPPED_SHARE_WARN:
        warnings.append(
            f"{clipped_share:.1%} of samples are clipped (at full scale): the distortion will carry "
            "into the conversion; record or export at a lower level"
        )
    if peak > 1.0:
        warnings.append(
            f"the peak is above full scale ({peak:.2f}, {20 * np.log10(peak):+.1f} dBFS); the samples "
            "are kept unclipped and outputs are normalised when saved"
        )
    flatness = None if is_silent else _spectral_flatness(mono, sample_rate)
    looks_like_noise = flatness is not None and flatness > NOISE_FLATNESS
    if looks_like_noise:
        warnings.append(
            f"sounds like noise: no voiced/speech-like content (spectral flatness {flatness:.2f}); "
            "the conversion will be noise too; check that this is the right file"
        )
    return AudioReport(
        duration_s=float(duration_s),
        peak=peak,
        rms_dbfs=float(rms_dbfs),
        clipped_share=clipped_share,
        is_silent=bool(is_silent),
        looks_like_noise=bool(looks_like_noise),
        warnings=tuple(warnings),
    )


def check_convertible(audio: np.ndarray, sample_rate: int) -> AudioReport:
    """Reject audio that cannot give a meaningful conversion; log the softer findings.

    Raises for no samples ('empty'), NaN/Inf samples ('not_finite'), less than ``MIN_DURATION_S``
    ('too_short') and digital silence or near it ('silent'). Clipping, overs and noise-likeness are
    only logged as warnings (and kept in the returned report).

    Args:
        audio: (L,) or (L, C) float audio.
        sample_rate: rate in Hz.

    Returns:
        The :func:`inspect_audio` report.

    Raises:
        BadAudioError: with the reasons above.
    """
    report = inspect_audio(audio, sample_rate)
    data = np.asarray(audio)
    if data.shape[0] == 0:
        raise BadAudioError("the audio has no samples; pick a file with sound", reason="empty")
    if not np.isfinite(data).all():
        raise BadAudioError(
            "the audio contains NaN or infinite samples; re-export it from the editor that made it",
            reason="not_finite",
        )
    if report.duration_s < MIN_DURATION_S:
        raise BadAudioError(
            f"the audio is too short to convert ({report.duration_s:.2f} s); it needs at least "
            f"{MIN_DURATION_S} s; use a longer clip",
            reason="too_short",
        )
    if report.is_silent:
        raise BadAudioError(
            f"the audio is silent (RMS {report.rms_dbfs:.1f} dBFS): there is no voice to convert; "
            "check the file or the recording input",
            reason="silent",
        )
    for warning in report.warnings:
        log.warning("input audio: %s", warning)
    return report


def to_int16(audio: np.ndarray) -> np.ndarray:
    """Float audio to int16 the way RVC writes its output.

    If the peak exceeds ``OUTPUT_PEAK`` (0.99) the signal is scaled so its peak becomes 0.99; then it
    is multiplied by 32768 and cast to int16, truncating toward zero. Arithmetic is float32, as in
    RVC's pipeline.

    Args:
        audio: (L,) or (L, C) float audio, finite.

    Returns:
        Same shape, int16.

    Raises:
        AudioEncodeError: reason 'not_finite' when a sample is NaN or infinite.
    """
    data = np.asarray(audio, dtype=np.float32)
    if data.size == 0:
        return np.zeros(data.shape, dtype=np.int16)
    if not np.isfinite(data).all():
        raise AudioEncodeError(
            "audio to save contains NaN or infinite samples; this is a bug upstream, please report it",
            reason="not_finite",
        )
    excess = np.abs(data).max() / np.float32(OUTPUT_PEAK)
    scale = np.float32(INT16_SCALE)
    if excess > 1:
        scale = scale / excess
    return (data * scale).astype(np.int16)


def _temp_sibling(path: Path) -> Path:
    """A fresh hidden name next to ``path`` for writing before the atomic rename."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _fsync_file(path: Path) -> None:
    """Flush a written file to disk before it is renamed into place."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def save_audio(
    path: str | Path,
    audio: np.ndarray,
    sample_rate: int,
    *,
    use_float32: bool = False,
    encode_timeout_s: float = ENCODE_TIMEOUT_S,
) -> Path:
    """Write audio by file suffix, atomically (temp file in the same folder, then ``os.replace``).

    ``.wav`` / ``.flac`` go through soundfile as 16-bit PCM after :func:`to_int16` (peak limited to
    0.99); ``use_float32`` writes a 32-bit float WAV unchanged instead. ``.mp3`` (LAME VBR q2),
    ``.m4a`` (AAC 192 kbit/s) and ``.ogg`` (Vorbis q6) go through ffmpeg fed 16-bit PCM on a pipe;
    rates the codec lacks (e.g. 40 kHz for mp3) are first resampled to the next supported one.

    Args:
        path: destination; its suffix picks the format. Missing parent folders are created.
        audio: (L,) or (L, C) float audio.
        sample_rate: rate in Hz.
        use_float32: write float WAV (only for ``.wav``).
        encode_timeout_s: ffmpeg is stopped after this many seconds.

    Returns:
        The written path.

    Raises:
        AudioEncodeError: unsupported suffix, NaN/Inf samples, ffmpeg failed, or the file system refused.
        DiskSpaceError: the disk is full (the message names the folder and its free space).
    """
    import soundfile

    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in _SOUNDFILE_FORMATS and suffix not in _FFMPEG_FORMATS:
        raise AudioEncodeError(
            f"cannot save '{path.name}': unsupported file type; use one of {', '.join(SAVE_SUFFIXES)}",
            reason="unsupported_format",
        )
    if use_float32 and suffix != ".wav":
        raise AudioEncodeError(
            f"float samples can only be saved as .wav, not {suffix}", reason="unsupported_format"
        )
    data = np.asarray(audio, dtype=np.float32)
    if data.ndim not in (1, 2):
        raise ValueError(f"audio must be (L,) or (L, C), got shape {data.shape}")
    if use_float32 and not np.isfinite(data).all():
        raise AudioEncodeError("audio to save contains NaN or infinite samples", reason="not_finite")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_sibling(path)
    try:
        if suffix in _SOUNDFILE_FORMATS:
            with open(temp, "xb") as handle:
                if use_float32:
                    soundfile.write(handle, data, sample_rate, subtype="FLOAT", format="WAV")
                else:
                    fmt = _SOUNDFILE_FORMATS[suffix]
                    soundfile.write(handle, to_int16(data), sample_rate, subtype="PCM_16", format=fmt)
                handle.flush()
                os.fsync(handle.fileno())
        else:
            _encode_with_ffmpeg(temp, data, sample_rate, suffix, encode_timeout_s)
            _fsync_file(temp)
        os.replace(temp, path)
    except OSError as exc:
        from infer.fsutil import disk_full_error, is_disk_full

        if is_disk_full(exc):
            raise disk_full_error(path.parent) from exc
        raise AudioEncodeError(f"cannot write {path}: {exc}", reason="write_failed") from exc
    finally:
        if temp.exists():
            temp.unlink()
    log.info("saved %s (%.2f s at %d Hz)", path, data.shape[0] / sample_rate, sample_rate)
    return path


def _encode_with_ffmpeg(
    temp: Path, data: np.ndarray, sample_rate: int, suffix: str, timeout_s: float
) -> None:
    """Encode (L,) or (L, C) float audio to ``temp`` with ffmpeg, fed s16le PCM on stdin."""
    import ffmpeg

    muxer, encoder, options, rates = _FFMPEG_FORMATS[suffix]
    if rates is not None and sample_rate not in rates:
        new_rate = next((rate for rate in rates if rate >= sample_rate), rates[-1])
        log.info(
            "%s does not support %d Hz; resampling to %d Hz before encoding", suffix, sample_rate, new_rate
        )
        data = resample(data, sample_rate, new_rate)
        sample_rate = new_rate
    pcm = to_int16(data)
    channels = 1 if pcm.ndim == 1 else pcm.shape[1]
    stream = ffmpeg.input("pipe:", format="s16le", ar=sample_rate, ac=channels)
    args = stream.output(f"file:{temp}", format=muxer, acodec=encoder, **options).get_args()
    try:
        code, _, stderr = _run_ffmpeg(["-y", *args], timeout_s=timeout_s, stdin_bytes=pcm.tobytes())
    except BadAudioError as exc:
        raise AudioEncodeError(f"could not encode {suffix}: {exc}", reason="encode_failed") from exc
    if code != 0:
        detail = (_error_lines(stderr) or stderr.strip().splitlines() or ["no message"])[0]
        raise AudioEncodeError(
            f"ffmpeg could not encode {suffix} ({detail}); save as .wav or .flac instead",
            reason="encode_failed",
        )
