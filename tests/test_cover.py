"""Song covers: the remix maths, the limiter, and ``python -m infer separate|cover`` end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from infer import dsp
from infer.audio import BadAudioError
from infer.cover import CoverError, CoverParams, make_cover, pitch_shift, remix
from infer.pipeline import Converter, ConvertParams, Resources, load_voice
from infer.separation import list_stem_cache
from tests.helpers import EDGE_DIR, REPO_DIR, VOICES_DIR

MIXTURE = VOICES_DIR / "mixtures" / "mix_us2_drums.flac"
STEREO_MIXTURE = VOICES_DIR / "mixtures" / "mix_en1_44k_stereo.flac"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def kit(voice_kit: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {**voice_kit, "cache": tmp_path_factory.mktemp("stems")}


def _dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))])


def test_limiter_holds_the_ceiling_without_clipping_and_leaves_quiet_audio_alone() -> None:
    rate = 44100
    t = np.arange(rate) / rate
    x = np.stack([0.5 * np.sin(2 * np.pi * 220 * t), 0.4 * np.sin(2 * np.pi * 330 * t)], axis=1)
    np.testing.assert_array_equal(dsp.limit_peaks(x, rate), x.astype(np.float32))
    loud = x * 3.0
    y = dsp.limit_peaks(loud, rate, ceiling=0.9)
    assert np.abs(y).max() <= 0.9 + 1e-6

    # a limiter scales, it does not clip: the waveform keeps its shape (no flat tops)
    def flat_share(a: np.ndarray) -> float:
        return float(np.mean(np.abs(np.abs(a) - np.abs(a).max()) < 1e-4))

    assert flat_share(y) < 0.01 < 0.5 < flat_share(np.clip(loud, -0.9, 0.9))
    gain = np.abs(y[:, 0]) / np.maximum(np.abs(loud[:, 0]), 1e-9)
    assert np.abs(np.diff(gain[np.abs(loud[:, 0]) > 0.3])).max() < 0.05  # smooth gain


def test_remix_applies_gains_and_keeps_shape() -> None:
    rate = 16000
    v = np.full((rate, 2), 0.1, np.float32)
    i = np.full((rate, 2), 0.2, np.float32)
    out = remix(v, i, rate, CoverParams(vocal_gain_db=6.0206, instrumental_gain_db=-6.0206))
    np.testing.assert_allclose(out, 0.2 + 0.1, atol=1e-4)
    with pytest.raises(ValueError, match="one shape"):
        remix(v, i[:10], rate, CoverParams())
    with pytest.raises(ValueError, match="vocal_gain_db"):
        CoverParams(vocal_gain_db=40)


def test_instrumental_pitch_shift_moves_a_tone_by_the_semitones() -> None:
    rate = 44100
    t = np.arange(rate * 2) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[:, None]
    shifted = pitch_shift(tone, rate, 12)
    assert shifted.shape == tone.shape
    assert abs(_dominant_hz(shifted[rate // 2 : -rate // 2, 0], rate) - 880) < 10
    assert pitch_shift(tone, rate, 0) is tone


def test_cover_keeps_the_song_layout_and_hits_the_stem_cache(kit: dict[str, Path], tmp_path: Path) -> None:
    converter = Converter(load_voice(kit["model"]), Resources(pretrained_dir=kit["pretrained"]))
    params = ConvertParams(f0_method="pm", seed=0, pitch_shift_semitones=2)
    stages: list[str] = []
    first = make_cover(
        converter,
        STEREO_MIXTURE,
        tmp_path / "a",
        params,
        CoverParams(shift_instrumental=True),
        cache_dir=kit["cache"],
        progress=lambda f, s: stages.append(s.split(":")[0]),
    )
    info = sf.info(first.cover)
    source = sf.info(STEREO_MIXTURE)
    assert (info.samplerate, info.channels) == (source.samplerate, source.channels) == (44100, 2)
    assert abs(info.duration - source.duration) < 0.02
    for path in (first.vocals, first.instrumental):
        assert sf.info(path).frames == info.frames
    assert {"separate", "convert", "mix"} <= set(stages)
    assert not first.is_cached
    mix, _ = sf.read(first.cover)
    assert np.abs(mix).max() <= dsp.LIMITER_CEILING + 1e-3
    second = make_cover(converter, STEREO_MIXTURE, tmp_path / "b", params, cache_dir=kit["cache"])
    assert second.is_cached
    assert len(list_stem_cache(kit["cache"])) == 1


def test_cover_bad_input_says_what_to_do(kit: dict[str, Path], tmp_path: Path) -> None:
    converter = Converter(load_voice(kit["model"]), Resources(pretrained_dir=kit["pretrained"]))
    backing = VOICES_DIR / "mixtures" / "mix_us1_sines.backing.flac"
    with pytest.raises(CoverError, match="no vocals"):
        make_cover(converter, backing, tmp_path / "c", cache_dir=kit["cache"])
    with pytest.raises(BadAudioError, match="silent"):
        make_cover(converter, EDGE_DIR / "silence_10s.wav", tmp_path / "d", cache_dir=kit["cache"])
    with pytest.raises(BadAudioError):
        make_cover(converter, EDGE_DIR / "not_really.mp3", tmp_path / "e", cache_dir=kit["cache"])
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_DIR), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "infer", *args],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def test_cli_separate_and_cover(kit: dict[str, Path], tmp_path: Path) -> None:
    cache = str(tmp_path / "cli-stems")
    sep = _cli("separate", str(MIXTURE), "--output", str(tmp_path / "stems"), "--stem-cache", cache)
    assert sep.returncode == 0, sep.stderr[-2000:]
    for suffix in (".vocals.flac", ".instrumental.flac"):
        assert sf.info(tmp_path / "stems" / f"{MIXTURE.stem}{suffix}").samplerate == 16000
    cover = _cli(
        "cover", str(MIXTURE), "--model", str(kit["model"]), "--output", str(tmp_path / "covers"),
        "--pretrained-dir", str(kit["pretrained"]), "--f0-method", "pm", "--stem-cache", cache,
        "--vocal-gain", "3", "--instrumental-gain", "-3", "--threads", "1",
    )  # fmt: skip
    assert cover.returncode == 0, cover.stderr[-2000:]
    assert "stems from the cache" in cover.stderr
    for suffix in (".cover.flac", ".vocals.flac", ".instrumental.flac"):
        info = sf.info(tmp_path / "covers" / f"{MIXTURE.stem}{suffix}")
        assert (info.samplerate, info.channels) == (16000, 1)
    missing = _cli(
        "separate", str(MIXTURE), "--output", str(tmp_path / "x"), "--separator", "melband-roformer",
        "--stem-cache", cache,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "python -m infer assets download" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
