"""File-to-file separation in bounded memory: a 10-minute song costs what a 1-minute one does.

The song is decoded by ffmpeg into a temporary float WAV, resampled (by ffmpeg, when needed) to
the network's rate, and separated chunk by chunk (a mono song on both channels): each chunk's
vocal estimate is weighted by :func:`~infer.separation.base.crossfade_window` and finished
samples are written out as soon as the next chunk has covered its overlap. The vocals go back to
the song's rate and channels the same way, and a last pass writes ``vocals`` and
``instrumental = song - vocals``.
Only a few chunks of audio are ever in memory; the rest lives in temporary files (in the
system's temporary folder) until both outputs are complete and moved into place, so a failure
leaves no partial output.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from infer.audio import BadAudioError, decode_to_wav
from infer.memory import release_free_memory
from infer.progress import ProgressFn, StopFn, check_stop, report, sub_progress
from infer.separation.base import Separator, crossfade_window

log = logging.getLogger(__name__)

BLOCK_SAMPLES = 1 << 18
"""Frames per read or write in the passes that need no network (about 6 s at 44.1 kHz)."""
FULL_SCALE = 1.0 - 1.0 / 32768
SILENCE_RMS_DBFS = -60.0
NO_VOCALS_DB = -30.0


@dataclass(frozen=True)
class StreamedStems:
    """What :func:`separate_to_files` found and wrote."""

    sample_rate: int
    channels: int
    has_vocals: bool


def _rms_db(sum_squares: float, count: int) -> float:
    rms = float(np.sqrt(sum_squares / count)) if count else 0.0
    return 20.0 * np.log10(rms) if rms > 0 else -np.inf


def _check_song(path: Path, source: Path) -> tuple[int, int]:
    """(rate, channels) of the decoded song; BadAudioError for a multichannel, broken or silent one."""
    info = sf.info(str(path))
    if info.channels > 2:
        raise BadAudioError(
            f"{source.name} has {info.channels} channels; separation takes mono or stereo: mix it down first",
            reason="decode_failed",
        )
    total, count = 0.0, 0
    with sf.SoundFile(str(path)) as song:
        for block in song.blocks(blocksize=BLOCK_SAMPLES, dtype="float32", always_2d=True):
            if not np.isfinite(block).all():
                raise BadAudioError(
                    f"{source.name} contains NaN or infinite samples; re-export it from the editor "
                    "that made it",
                    reason="not_finite",
                )
            total += float(np.square(block, dtype=np.float64).sum())
            count += block.size
    level = _rms_db(total, count)
    if level < SILENCE_RMS_DBFS:
        raise BadAudioError(
            f"{source.name} is silent (RMS {max(level, -120.0):.1f} dBFS): there are no vocals or "
            "instruments to separate; check the file",
            reason="silent",
        )
    return info.samplerate, info.channels


def _chunked_vocals(
    engine: Separator,
    stereo_path: Path,
    out_path: Path,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> None:
    """Overlap-add the network over a WAV at its rate, streaming the stereo vocals into ``out_path``."""
    chunk, overlap = engine.chunk_samples, engine.overlap_samples
    hop = chunk - overlap
    window = torch.from_numpy(crossfade_window(chunk, overlap))
    with (
        sf.SoundFile(str(stereo_path)) as src,
        sf.SoundFile(str(out_path), "w", samplerate=src.samplerate, channels=2, subtype="FLOAT") as dst,
    ):
        n = src.frames
        count = max(1, -(-(n + overlap) // hop))
        pending = np.zeros((2, overlap), dtype=np.float32)  # the tail still waiting for the next chunk
        for index in range(count):
            check_stop(should_stop)
            start = index * hop - overlap
            piece = np.zeros((2, chunk), dtype=np.float32)
            lo, hi = max(start, 0), min(start + chunk, n)
            if hi > lo:
                src.seek(lo)
                frames = src.read(hi - lo, dtype="float32", always_2d=True).T
                piece[:, lo - start : hi - start] = frames  # a mono song plays on both channels
            with torch.inference_mode():
                estimate = (engine.vocals_of_chunk(torch.from_numpy(piece).to(engine.device)).float().cpu()
                            * window).numpy()  # fmt: skip
            estimate[:, :overlap] += pending
            pending = estimate[:, hop:].copy()
            first, last = max(start, 0), min(start + hop, n)
            if last > first:
                dst.write(estimate[:, first - start : last - start].T)
            release_free_memory()
            report(progress, (index + 1) / count, f"separating: chunk {index + 1} of {count}")


def _resampled(source: Path, target: Path, sample_rate: int) -> Path:
    """``source`` as a float WAV at ``sample_rate``, channels kept (ffmpeg's SoX resampler).

    Channels are never remixed by ffmpeg: its mono/stereo matrices change the level (a mono
    input comes out 3 dB down on each side), so up- and down-mixing happen here, exactly.
    """
    if sf.info(str(source)).samplerate == sample_rate:
        return source
    decode_to_wav(source, target, sample_rate=sample_rate)
    return target


def _write_stems(
    song_path: Path, vocals_path: Path, outputs: tuple[Path, Path], rate: int, channels: int
) -> bool:
    """Write vocals and the residual instrumental (16-bit FLAC); returns whether vocals were found."""
    vocal_sq = mix_sq = 0.0
    with (
        sf.SoundFile(str(song_path)) as song,
        sf.SoundFile(str(vocals_path)) as vocals,
        sf.SoundFile(
            str(outputs[0]), "w", samplerate=rate, channels=channels, subtype="PCM_16", format="FLAC"
        ) as out_v,
        sf.SoundFile(
            str(outputs[1]), "w", samplerate=rate, channels=channels, subtype="PCM_16", format="FLAC"
        ) as out_i,
    ):
        for mix in song.blocks(blocksize=BLOCK_SAMPLES, dtype="float32", always_2d=True):
            voice = vocals.read(mix.shape[0], dtype="float32", always_2d=True)
            if channels == 1:
                voice = voice.mean(axis=1, keepdims=True)
            if voice.shape[0] < mix.shape[0]:  # the resampler may end a few samples short
                voice = np.pad(voice, ((0, mix.shape[0] - voice.shape[0]), (0, 0)))
            rest = mix - voice
            vocal_sq += float(np.square(voice, dtype=np.float64).sum())
            mix_sq += float(np.square(mix, dtype=np.float64).sum())
            out_v.write(np.clip(voice, -1.0, FULL_SCALE))
            out_i.write(np.clip(rest, -1.0, FULL_SCALE))
    return bool(10 * np.log10(max(vocal_sq, 1e-30) / max(mix_sq, 1e-30)) > NO_VOCALS_DB)


def separate_to_files(
    source: Path,
    engine: Separator,
    outputs: tuple[Path, Path],
    *,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> StreamedStems:
    """Separate ``source`` into ``outputs = (vocals.flac, instrumental.flac)`` in bounded memory.

    The outputs keep the song's rate and channel count and sum to it (up to 16-bit rounding);
    they appear only when both are complete. Raises BadAudioError for unreadable, silent or
    multichannel songs, Cancelled when ``should_stop`` says so (nothing is written then).
    """
    work = Path(tempfile.mkdtemp(prefix="timbre-separate-"))
    try:
        report(progress, 0.0, "reading the song")
        song = decode_to_wav(source, work / "song.wav")
        rate, channels = _check_song(song, source)
        at_model_rate = _resampled(song, work / "model.wav", engine.sample_rate)
        vocals_model = work / "vocals_model.wav"
        _chunked_vocals(engine, at_model_rate, vocals_model, sub_progress(progress, 0.05, 0.9), should_stop)
        vocals = _resampled(vocals_model, work / "vocals.wav", rate)
        check_stop(should_stop)
        report(progress, 0.92, "writing the stems")
        staged = (work / "vocals.flac", work / "instrumental.flac")
        has_vocals = _write_stems(song, vocals, staged, rate, channels)
        outputs[0].parent.mkdir(parents=True, exist_ok=True)
        for staged_path, final in zip(staged, outputs, strict=True):
            partial = final.with_name(f".{final.name}.part")
            shutil.move(staged_path, partial)  # the temporary folder may be on another filesystem
            os.replace(partial, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not has_vocals:
        log.warning("%s: the vocal stem is more than %d dB below the mix; the song looks instrumental",
                    source.name, -NO_VOCALS_DB)  # fmt: skip
    return StreamedStems(rate, channels, has_vocals)
