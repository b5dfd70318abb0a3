"""Streaming engine: block grid, SOLA, streaming vs offline conversion, the live session, the CLIs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import librosa
import numpy as np
import parselmouth
import pytest
import soundfile as sf

from infer.audio import load_audio
from infer.pipeline import Converter, ConvertParams, Resources, load_voice
from infer.stream import LiveSession, StreamConfig, StreamEngine, sola_offset, stream_array, suggest_block_s
from tests.helpers import REPO_DIR, VOICES_DIR

pytestmark = pytest.mark.usefixtures("one_thread")

SPEECH = VOICES_DIR / "us2" / "speech" / "003.flac"
RATE = 40000
# Tolerances of streaming vs offline conversion, away from block seams. A random-weight decoder
# buzzes at its frame rate whatever its input, so the output's own F0 says nothing: F0 is checked
# on the track the synthesizer was fed, the output on its log-mel spectrogram and, with the RMS
# mix imposing the input's loudness, on its envelope (best correlated at no lag).
F0_MEDIAN_CENTS_MAX = 20.0
F0_VOICING_AGREEMENT_MIN = 0.85
MEL_L1_MAX = 0.5
ENVELOPE_CORRELATION_MIN = 0.6
SEAM_JUMP_RATIO_MAX = 1.5


def _converter(kit: dict[str, Path]) -> Converter:
    return Converter(load_voice(kit["model"]), Resources(pretrained_dir=kit["pretrained"]))


def _f0(x: np.ndarray) -> np.ndarray:
    sound = parselmouth.Sound(x.astype(np.float64), RATE)
    return sound.to_pitch_ac(time_step=0.01, pitch_floor=50, pitch_ceiling=800).selected_array["frequency"]


def _f0_agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    fa, fb = _f0(a), _f0(b)
    n = min(len(fa), len(fb))
    fa, fb = fa[:n], fb[:n]
    both = (fa > 0) & (fb > 0)
    cents = np.abs(1200 * np.log2(fa[both] / fb[both]))
    return float(np.median(cents)), float(np.mean((fa > 0) == (fb > 0)))


def _log_mel(x: np.ndarray) -> np.ndarray:
    return np.log(librosa.feature.melspectrogram(y=x, sr=RATE, n_fft=2048, hop_length=400, n_mels=80) + 1e-5)


def test_config_snaps_to_the_10ms_grid_and_checks_ranges() -> None:
    config = StreamConfig(block_s=0.254, context_s=0.5, crossfade_s=0.05, search_s=0.01)
    assert config.block_s == pytest.approx(0.25)
    assert (config.block_frames, config.return_frames, config.buffer_frames) == (25, 31, 81)
    assert config.algorithmic_latency_s == pytest.approx(0.31)
    with pytest.raises(ValueError, match="block_s"):
        StreamConfig(block_s=2.0)
    with pytest.raises(ValueError, match="crossfade_s"):
        StreamConfig(block_s=0.02, crossfade_s=0.05)


def test_sola_finds_the_shift_of_a_known_signal() -> None:
    rng = np.random.default_rng(0)
    tail = rng.standard_normal(200).astype(np.float32)
    for shift in (0, 7, 33):
        head = rng.standard_normal(240).astype(np.float32) * 0.1
        head[shift : shift + 200] = tail
        assert sola_offset(head, tail) == shift
    assert sola_offset(np.ones(240, np.float32), np.zeros(200, np.float32)) == 0


def _envelope(x: np.ndarray, hop: int = 400) -> np.ndarray:
    n = len(x) // hop
    e = np.sqrt((x[: n * hop].reshape(n, hop) ** 2).mean(axis=1))
    return (e - e.mean()) / (e.std() + 1e-12)


def test_streaming_matches_offline_away_from_seams_and_has_no_clicks(voice_kit: dict[str, Path]) -> None:
    converter = _converter(voice_kit)
    audio = load_audio(SPEECH, 16000)
    params = ConvertParams(f0_method="pm", seed=0, rms_mix_rate=0.0)
    offline_result = converter.convert(audio, params)
    offline = offline_result.audio
    config = StreamConfig(block_s=0.25, context_s=1.0)
    engine = StreamEngine(converter, params, config)
    tracks = []
    original = engine.process

    def process_and_record(block: np.ndarray) -> np.ndarray:
        out = original(block)
        start = config.buffer_frames - config.return_frames
        tracks.append(engine.pitch_track_hz[start : start + config.block_frames])
        return out

    engine.process = process_and_record  # type: ignore[method-assign]
    streamed = stream_array(engine, audio)
    assert streamed.shape[0] == audio.shape[0] * RATE // 16000
    n = min(len(offline), len(streamed))
    offline, streamed = offline[:n], streamed[:n]

    # F0: the track the synthesizer used for each output block vs offline conversion's track
    lag = config.return_frames - config.block_frames
    streamed_f0 = np.concatenate(tracks)[lag:]
    offline_f0 = offline_result.f0_source_hz
    m = min(len(streamed_f0), len(offline_f0))
    seam_frames = np.zeros(m, bool)
    for seam in range(config.block_frames - lag, m, config.block_frames):
        seam_frames[max(0, seam - 3) : seam + 3] = True
    a_f0, b_f0 = offline_f0[:m][~seam_frames], streamed_f0[:m][~seam_frames]
    both = (a_f0 > 0) & (b_f0 > 0)
    assert np.median(np.abs(1200 * np.log2(a_f0[both] / b_f0[both]))) < F0_MEDIAN_CENTS_MAX
    assert np.mean((a_f0 > 0) == (b_f0 > 0)) > F0_VOICING_AGREEMENT_MIN
    late, early = offline_f0[10:m], streamed_f0[: m - 10]
    voiced = (late > 0) & (early > 0)
    slip = np.abs(1200 * np.log2(late[voiced] / early[voiced]))
    assert np.median(slip) > F0_MEDIAN_CENTS_MAX  # a 0.1 s slip would be seen

    # Mel spectrogram away from the seams, and the loudness envelope in step with the offline one
    block = engine.block_samples_out
    seams = np.arange(block, n, block) - lag * (RATE // 100)
    away = np.ones(n // 400 + 1, bool)
    for seam in seams:
        away[max(0, (seam - 2000) // 400) : (seam + 2000) // 400 + 1] = False
    a, b = _log_mel(offline), _log_mel(streamed)
    frames = min(a.shape[1], b.shape[1], away.shape[0])
    assert float(np.abs(a[:, :frames] - b[:, :frames])[:, away[:frames]].mean()) < MEL_L1_MAX
    ea, eb = _envelope(offline), _envelope(streamed)
    assert float(np.mean(ea * eb)) > ENVELOPE_CORRELATION_MIN

    def at_lag(lag: int) -> float:
        return float(
            np.mean(ea[max(0, lag) : len(ea) + min(0, lag)] * eb[max(0, -lag) : len(eb) - max(0, lag)])
        )

    assert abs(max(range(-20, 21), key=at_lag)) <= 1  # in step with the offline output, not merely alike

    biggest_offline_jump = float(np.abs(np.diff(offline)).max())
    for seam in seams[seams > 0]:
        window = streamed[max(0, seam - 80) : seam + 80]
        assert np.abs(np.diff(window)).max() <= SEAM_JUMP_RATIO_MAX * biggest_offline_jump


def test_silence_gate_outputs_silence_and_a_pitch_change_applies_to_the_next_block(
    voice_kit: dict[str, Path],
) -> None:
    converter = _converter(voice_kit)
    engine = StreamEngine(converter, ConvertParams(f0_method="pm", seed=0), StreamConfig(block_s=0.1))
    quiet = np.zeros(engine.block_samples_16k, np.float32)
    for _ in range(5):
        assert not np.any(engine.process(quiet))
    assert engine.stats.gated == 5
    audio = load_audio(SPEECH, 16000)
    n = engine.block_samples_16k

    def window_f0(first: int, last: int) -> np.ndarray:
        tracks = []
        for i in range(first, last):
            engine.process(audio[i * n : (i + 1) * n])
            tracks.append(engine.last_target_f0_hz)
        f0 = np.concatenate(tracks)
        return f0[f0 > 0]

    before = window_f0(6, 14)
    engine.update(ConvertParams(f0_method="pm", seed=0, pitch_shift_semitones=12))
    after = window_f0(14, 22)
    assert np.median(after) / np.median(before) == pytest.approx(2.0, rel=0.25)


class _SlowEngine:
    """A stand-in engine whose blocks take ``delay_s`` to convert."""

    def __init__(self, delay_s: float) -> None:
        from infer.stream import StreamStats

        self.delay_s = delay_s
        self.stats = StreamStats()
        self.block_samples_out = 4

    def process(self, block: np.ndarray) -> np.ndarray:
        time.sleep(self.delay_s)
        self.stats.blocks += 1
        return np.full(4, block[0], np.float32)

    def update(self, params: ConvertParams) -> None:
        pass


def test_live_session_drops_and_fills_instead_of_blocking() -> None:
    engine = _SlowEngine(0.05)
    session = LiveSession(engine, max_pending=2)  # type: ignore[arg-type]
    started = time.perf_counter()
    for i in range(10):
        session.push(np.full(4, float(i), np.float32))
        assert session.pull().shape == (4,)
    assert time.perf_counter() - started < 0.2  # push and pull never wait for the worker
    time.sleep(0.3)
    session.close()
    assert engine.stats.dropped >= 5 and engine.stats.late >= 5
    assert engine.stats.blocks + engine.stats.dropped == 10


def test_too_slow_a_block_gets_a_suggestion() -> None:
    from infer.stream import StreamStats

    config = StreamConfig(block_s=0.1)
    assert suggest_block_s(StreamStats(compute_s=[0.05] * 20), config) is None
    suggestion = suggest_block_s(StreamStats(compute_s=[0.2] * 20), config)
    assert suggestion is not None and suggestion >= 0.3


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


def test_cli_stream_and_live_errors(voice_kit: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "streamed.flac"
    proc = _cli(
        "stream", str(SPEECH), "--output", str(out), "--model", str(voice_kit["model"]),
        "--pretrained-dir", str(voice_kit["pretrained"]), "--f0-method", "pm", "--block", "0.2",
        "--threads", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "algorithmic latency 260 ms" in proc.stderr
    info = sf.info(out)
    assert info.samplerate == RATE and abs(info.duration - sf.info(SPEECH).duration) < 0.01
    live = _cli("live", "--model", str(voice_kit["model"]), "--input-device", "99")
    assert live.returncode == 2
    assert live.stderr.strip().startswith("error: no usable audio input")
    assert len(live.stderr.strip().splitlines()) == 1


def test_live_session_reports_a_failing_engine() -> None:
    class Broken(_SlowEngine):
        def process(self, block: np.ndarray) -> np.ndarray:
            raise RuntimeError("boom")

    seen = threading.Event()
    session = LiveSession(Broken(0.0), on_error=lambda exc: seen.set())  # type: ignore[arg-type]
    session.push(np.zeros(4, np.float32))
    assert seen.wait(2.0)
    assert isinstance(session.error, RuntimeError)
    session.close()
