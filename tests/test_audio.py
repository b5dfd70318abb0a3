"""Tests for infer.audio: every edge-case file, decode/save round trips, int16 and resampling semantics."""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from infer import audio
from infer.audio import (
    AudioEncodeError,
    BadAudioError,
    check_convertible,
    inspect_audio,
    load_audio,
    resample,
    save_audio,
    to_int16,
)
from infer.errors import AudioDecodeError
from tests.helpers import EDGE_DIR


def _dominant_hz(x: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sample_rate)[np.argmax(spectrum)])


def _chirp(sample_rate: int, duration_s: float = 1.0) -> np.ndarray:
    t = np.arange(int(sample_rate * duration_s)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * (200 * t + 900 * t**2))).astype(np.float32)


# ---- ffmpeg lookup -------------------------------------------------------------------------


def test_ffmpeg_exe_prefers_path_then_imageio(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import imageio_ffmpeg

    fake = tmp_path / "ffmpeg"
    audio.ffmpeg_exe.cache_clear()
    try:
        monkeypatch.setattr(audio.shutil, "which", lambda name: str(fake) if name == "ffmpeg" else None)
        assert audio.ffmpeg_exe() == str(fake)
        audio.ffmpeg_exe.cache_clear()
        monkeypatch.setattr(audio.shutil, "which", lambda name: None)
        assert audio.ffmpeg_exe() == imageio_ffmpeg.get_ffmpeg_exe()
        audio.ffmpeg_exe.cache_clear()

        def missing() -> str:
            raise RuntimeError("no binary")

        monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", missing)
        with pytest.raises(BadAudioError, match="ffmpeg was not found") as info:
            audio.ffmpeg_exe()
        assert info.value.reason == "no_ffmpeg"
    finally:
        audio.ffmpeg_exe.cache_clear()


def test_decode_timeout_stops_a_hanging_ffmpeg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hanging = tmp_path / "fake_ffmpeg"
    hanging.write_text("#!/bin/sh\nexec sleep 30\n")
    hanging.chmod(0o755)
    monkeypatch.setattr(audio, "ffmpeg_exe", lambda: str(hanging))
    with pytest.raises(BadAudioError, match=r"did not finish within 0\.3 s") as info:
        load_audio(EDGE_DIR / "speech_8k.wav", 16000, decode_timeout_s=0.3)
    assert info.value.reason == "timeout"


def test_too_old_ffmpeg_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    old = tmp_path / "old_ffmpeg"
    old.write_text(
        "#!/bin/sh\necho 'Invalid loglevel \"level+info\". Possible levels are numbers' >&2\nexit 1\n"
    )
    old.chmod(0o755)
    monkeypatch.setattr(audio, "ffmpeg_exe", lambda: str(old))
    with pytest.raises(BadAudioError, match=r"too old.*4\.3 or newer") as info:
        load_audio(EDGE_DIR / "speech_8k.wav", 16000)
    assert info.value.reason == "no_ffmpeg"


# ---- edge files --------------------------------------------------------------------------


def test_empty_file_is_rejected() -> None:
    with pytest.raises(AudioDecodeError, match="empty file") as info:
        load_audio(EDGE_DIR / "empty_0_bytes.wav", 16000)
    assert info.value.reason == "empty"


def test_text_named_mp3_is_not_audio() -> None:
    with pytest.raises(BadAudioError, match=r"cannot decode not_really\.mp3: not audio") as info:
        load_audio(EDGE_DIR / "not_really.mp3", 16000)
    assert info.value.reason == "not_audio"


def test_missing_file_and_folder() -> None:
    with pytest.raises(BadAudioError, match="not found") as info:
        load_audio(EDGE_DIR / "no_such_file.wav", 16000)
    assert info.value.reason == "not_found"
    with pytest.raises(BadAudioError, match="cannot read") as info:
        load_audio(EDGE_DIR, 16000)
    assert info.value.reason == "unreadable"


def test_truncated_flac_uses_decodable_part_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="infer.audio"):
        x = load_audio(EDGE_DIR / "truncated.flac", 16000)
    assert 1.0 < len(x) / 16000 < 1.5
    assert np.isfinite(x).all() and np.abs(x).max() > 0.1
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    claim = re.compile(r"decoded 1\.\d\d s of the 3\.15 s the header claims.*truncated")
    assert any(claim.search(m) for m in messages)


def test_real_mp3_decodes_like_the_flac_it_came_from() -> None:
    mp3 = load_audio(EDGE_DIR / "real_speech.mp3", 16000)
    assert abs(len(mp3) / 16000 - 3.15) < 0.1
    head = load_audio(EDGE_DIR / "truncated.flac", 16000)[:16000]
    corr = np.correlate(mp3[:20000], head[2000:10000], "valid")
    lag = int(np.argmax(corr))
    segment = mp3[lag : lag + 8000]
    assert np.corrcoef(segment, head[2000:10000])[0, 1] > 0.9


def test_garbage_payload_decodes_but_is_flagged_as_noise(caplog: pytest.LogCaptureFixture) -> None:
    x = load_audio(EDGE_DIR / "garbage_payload.wav", 16000)
    assert len(x) == 32000
    report = inspect_audio(x, 16000)
    assert report.looks_like_noise and not report.is_silent
    assert any(w.startswith("sounds like noise: no voiced/speech-like content") for w in report.warnings)
    with caplog.at_level(logging.WARNING, logger="infer.audio"):
        check_convertible(x, 16000)
    assert any("sounds like noise" in r.getMessage() for r in caplog.records)


def test_short_clip_is_too_short() -> None:
    x = load_audio(EDGE_DIR / "short_0.2s.wav", 16000)
    assert len(x) == 3200
    report = inspect_audio(x, 16000)
    assert any("only 0.20 s long" in w for w in report.warnings)
    with pytest.raises(BadAudioError, match=r"too short to convert \(0.20 s\).*at least 0.5 s") as info:
        check_convertible(x, 16000)
    assert info.value.reason == "too_short"


def test_silence_is_flagged_without_nan() -> None:
    x = load_audio(EDGE_DIR / "silence_10s.wav", 16000)
    report = inspect_audio(x, 16000)
    assert report.is_silent and not report.looks_like_noise
    numbers = [report.duration_s, report.peak, report.rms_dbfs, report.clipped_share]
    assert all(math.isfinite(v) for v in numbers)
    assert report.rms_dbfs == audio.LEVEL_FLOOR_DBFS and report.peak == 0.0
    assert any("silent" in w for w in report.warnings)
    with pytest.raises(BadAudioError, match="silent") as info:
        check_convertible(x, 16000)
    assert info.value.reason == "silent"


def test_clipped_file_warns_with_share(caplog: pytest.LogCaptureFixture) -> None:
    x = load_audio(EDGE_DIR / "clipped_overdriven.flac", 16000)
    report = inspect_audio(x, 16000)
    assert report.clipped_share == pytest.approx(0.302, abs=0.002)
    assert any("30.2% of samples are clipped" in w for w in report.warnings)
    with caplog.at_level(logging.WARNING, logger="infer.audio"):
        check_convertible(x, 16000)
    assert any("30.2% of samples are clipped" in r.getMessage() for r in caplog.records)


def test_stereo_is_averaged_not_left_channel() -> None:
    reference, native_rate = sf.read(EDGE_DIR / "stereo_44k.wav", dtype="float32")
    assert native_rate == 44100 and reference.shape[1] == 2
    mean = reference.mean(axis=1)
    x = load_audio(EDGE_DIR / "stereo_44k.wav", 44100)
    np.testing.assert_array_equal(x, mean)
    assert np.abs(x - reference[:, 0]).max() > 0.1
    both = load_audio(EDGE_DIR / "stereo_44k.wav", 44100, mono=False)
    np.testing.assert_array_equal(both, reference)
    x16 = load_audio(EDGE_DIR / "stereo_44k.wav", 16000)
    np.testing.assert_allclose(x16, resample(mean, 44100, 16000), atol=1e-6)


def test_8k_speech_is_upsampled() -> None:
    reference, native_rate = sf.read(EDGE_DIR / "speech_8k.wav", dtype="float32")
    assert native_rate == 8000
    x = load_audio(EDGE_DIR / "speech_8k.wav", 16000)
    assert len(x) == 2 * len(reference)
    np.testing.assert_allclose(x, resample(reference, 8000, 16000), atol=1e-7)
    assert np.isfinite(x).all()
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 16000)
    assert spectrum[freqs > 4200].sum() < 1e-4 * spectrum.sum()


def test_float_overs_are_kept() -> None:
    reference, native_rate = sf.read(EDGE_DIR / "float32_48k_overs.wav", dtype="float32")
    x = load_audio(EDGE_DIR / "float32_48k_overs.wav", native_rate)
    np.testing.assert_array_equal(x, reference)
    assert x.max() == pytest.approx(1.5, abs=1e-3)
    report = inspect_audio(x, native_rate)
    assert report.peak == pytest.approx(1.5, abs=1e-3)
    assert report.clipped_share < audio.CLIPPED_SHARE_WARN
    assert any("above full scale (1.50, +3.5 dBFS)" in w for w in report.warnings)
    assert np.abs(load_audio(EDGE_DIR / "float32_48k_overs.wav", 16000)).max() > 1.4


# ---- other containers ------------------------------------------------------------------------


def _make_video(path: Path, *, use_audio: bool) -> None:
    args = [audio.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    args += ["-f", "lavfi", "-i", "testsrc=duration=1:size=32x32:rate=5"]
    if use_audio:
        args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=22050:duration=1", "-c:a", "aac"]
    args += ["-c:v", "mpeg4", "-shortest", str(path)]
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def test_video_container_audio_is_decoded(tmp_path: Path) -> None:
    video = tmp_path / "clip:with colon.mp4"
    _make_video(video, use_audio=True)
    x = load_audio(video, 16000)
    assert 0.9 < len(x) / 16000 < 1.2
    assert _dominant_hz(x[2000:14000], 16000) == pytest.approx(440, abs=3)


def test_video_without_audio_stream(tmp_path: Path) -> None:
    video = tmp_path / "silent_movie.mp4"
    _make_video(video, use_audio=False)
    with pytest.raises(BadAudioError, match="no audio stream") as info:
        load_audio(video, 16000)
    assert info.value.reason == "no_audio_stream"


# ---- checks ------------------------------------------------------------------------------------


def test_check_convertible_accepts_speech_and_rejects_bad_arrays() -> None:
    x = load_audio(EDGE_DIR / "speech_8k.wav", 16000)
    report = check_convertible(x, 16000)
    assert report.warnings == () and not report.looks_like_noise
    assert report.duration_s == pytest.approx(3.15, abs=0.01)
    with pytest.raises(BadAudioError) as info:
        check_convertible(np.zeros(0, np.float32), 16000)
    assert info.value.reason == "empty"
    bad = x.copy()
    bad[100] = np.nan
    assert any("NaN" in w for w in inspect_audio(bad, 16000).warnings)
    with pytest.raises(BadAudioError, match="NaN") as info:
        check_convertible(bad, 16000)
    assert info.value.reason == "not_finite"


# ---- int16, resample, save -------------------------------------------------------------------


def test_to_int16_rvc_semantics() -> None:
    quiet = np.array([0.5, -0.5, 1e-4, -1e-4, 0.99], dtype=np.float32)
    np.testing.assert_array_equal(to_int16(quiet), [16384, -16384, 3, -3, 32440])
    loud = np.array([1.98, 0.5, -1.0, -3e-4], dtype=np.float32)
    # peak 1.98 -> 0.99: scale 32768 * 0.99 / 1.98 = 16384, then truncation toward zero
    np.testing.assert_array_equal(to_int16(loud), [32440, 8192, -16384, -4])
    assert to_int16(np.zeros((0,), np.float32)).dtype == np.int16
    with pytest.raises(AudioEncodeError):
        to_int16(np.array([np.inf], np.float32))


def test_resample_preserves_tone_dtype_and_shape() -> None:
    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    up = resample(tone, 16000, 40000)
    assert up.dtype == np.float32 and len(up) == 40000
    assert _dominant_hz(up, 40000) == pytest.approx(440, abs=1)
    assert np.abs(up[2000:-2000]).max() == pytest.approx(1.0, abs=0.01)
    same = resample(tone, 16000, 16000)
    np.testing.assert_array_equal(same, tone)
    assert same is not tone
    stereo = resample(np.stack([tone, -tone], axis=1).astype(np.float64), 16000, 8000)
    assert stereo.shape == (8000, 2) and stereo.dtype == np.float64
    np.testing.assert_allclose(stereo[:, 0], -stereo[:, 1])


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_save_pcm16_round_trip(tmp_path: Path, suffix: str) -> None:
    x = _chirp(40000) * 3.0  # peak 1.5 -> limited to 0.99
    path = tmp_path / "out" / f"voice{suffix}"
    assert save_audio(path, x, 40000) == path
    info = sf.info(path)
    assert (info.samplerate, info.subtype) == (40000, "PCM_16")
    data, _ = sf.read(path, dtype="int16")
    np.testing.assert_array_equal(data, to_int16(x))
    assert sorted(os.listdir(path.parent)) == [path.name]


def test_save_float_wav_keeps_overs_and_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "float.wav"
    path.write_bytes(b"old")
    x = np.array([0.0, 1.5, -1.25, 0.25] * 100, dtype=np.float32)
    save_audio(path, x, 16000, use_float32=True)
    data, rate = sf.read(path, dtype="float32")
    assert rate == 16000
    np.testing.assert_array_equal(data, x)
    with pytest.raises(AudioEncodeError, match=r"only be saved as \.wav"):
        save_audio(tmp_path / "float.flac", x, 16000, use_float32=True)


def test_save_rejects_unknown_suffix_without_leaving_files(tmp_path: Path) -> None:
    with pytest.raises(AudioEncodeError, match="unsupported file type") as info:
        save_audio(tmp_path / "voice.xyz", np.zeros(100, np.float32), 16000)
    assert info.value.reason == "unsupported_format"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("suffix", "file_rate"), [(".mp3", 44100), (".m4a", None), (".ogg", 40000)])
def test_save_lossy_round_trip(tmp_path: Path, suffix: str, file_rate: int | None) -> None:
    x = _chirp(40000)
    path = save_audio(tmp_path / f"voice{suffix}", x, 40000)
    assert sorted(os.listdir(tmp_path)) == [path.name]
    if file_rate is not None:  # mp3 has no 40 kHz mode: written at the next supported rate
        assert sf.info(path).samplerate == file_rate
    y = load_audio(path, 40000)
    assert abs(len(y) / 40000 - 1.0) < 0.06
    lag = int(np.argmax(np.correlate(y[:12000], x[1000:9000], "valid"))) - 1000
    assert abs(lag) < 200
    start = max(lag, 0)
    segment = y[start : start + 30000]
    assert np.corrcoef(segment, x[start - lag : start - lag + 30000])[0, 1] > 0.99
