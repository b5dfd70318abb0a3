"""Tests for train.slicing against RVC's slicer/preprocess goldens and synthetic signals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import PIPELINE_GOLDEN_DIR
from train.slicing import (
    SliceConfig,
    frame_rms,
    highpass,
    norm_segment,
    plan_segments,
    preprocess_audio,
    resample_to_16k,
    slice_ranges,
    slicer_frames,
    split_segments,
)


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(PIPELINE_GOLDEN_DIR / "slicer.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def raw(golden: dict[str, np.ndarray]) -> np.ndarray:
    # RVC's load_audio yields float32; the fixture stores the same signal as pcm16.
    return (golden["pcm16"] / 32768).astype(np.float32)


def test_golden_slicer_frame_parameters() -> None:
    facts = json.loads((PIPELINE_GOLDEN_DIR / "slicer_facts.json").read_text())
    derived = facts["params"]["derived"]
    frames = slicer_frames(facts["params"]["sr"], SliceConfig())
    assert frames.hop_samples == derived["hop_samples"] == 480
    assert frames.win_samples == derived["win_samples"] == 1920
    assert frames.min_length_frames == derived["min_length_frames"]
    assert frames.min_interval_frames == derived["min_interval_frames"]
    assert frames.max_sil_kept_frames == derived["max_sil_kept_frames"]
    assert frames.threshold == pytest.approx(derived["threshold_lin"], rel=1e-15)


def test_golden_rms_frames(golden: dict[str, np.ndarray], raw: np.ndarray) -> None:
    rms = frame_rms(raw, 1920, 480)
    assert rms.dtype == np.float32
    assert rms.shape == golden["rms_raw"].shape == (1054,)
    np.testing.assert_array_equal(rms, golden["rms_raw"])


def test_golden_cuts_raw(golden: dict[str, np.ndarray], raw: np.ndarray) -> None:
    cuts = slice_ranges(raw, int(golden["sr"]), SliceConfig())
    assert cuts == [tuple(r) for r in golden["cuts_raw"].tolist()]


def test_golden_cuts_highpassed(golden: dict[str, np.ndarray], raw: np.ndarray) -> None:
    filtered = highpass(raw, int(golden["sr"]))
    assert filtered.dtype == np.float64
    cuts = slice_ranges(filtered, int(golden["sr"]), SliceConfig())
    assert cuts == [tuple(r) for r in golden["cuts_highpassed"].tolist()]


def test_golden_preprocess_segments_and_peaks(golden: dict[str, np.ndarray], raw: np.ndarray) -> None:
    sr = int(golden["sr"])
    plan = plan_segments(highpass(raw, sr), sr, SliceConfig())
    rows = [[s.chunk_index, s.start - s.chunk_start, s.end - s.chunk_start, s.start, s.end] for s in plan]
    assert rows == golden["preprocess_segments"].tolist()
    np.testing.assert_allclose([s.peak for s in plan], golden["preprocess_segment_absmax"], rtol=1e-12)
    assert all(s.is_kept for s in plan)


def test_golden_preprocess_audio_outputs(golden: dict[str, np.ndarray], raw: np.ndarray) -> None:
    sr = int(golden["sr"])
    segments = preprocess_audio(raw, sr, SliceConfig())
    expected = golden["preprocess_segments"]
    assert [(s.source_start, s.source_end) for s in segments] == [tuple(r) for r in expected[:, 3:5].tolist()]
    assert [s.chunk_index for s in segments] == expected[:, 0].tolist()
    filtered = highpass(raw, sr)
    for seg, peak in zip(segments, golden["preprocess_segment_absmax"], strict=True):
        length = seg.source_end - seg.source_start
        assert seg.audio.dtype == np.float32 and seg.audio.shape == (length,)
        assert seg.audio_16k.dtype == np.float32 and seg.audio_16k.shape == (int(np.ceil(length / 2)),)
        assert np.abs(seg.audio).max() == pytest.approx(0.675 + 0.25 * peak, rel=1e-6)
        source = filtered[seg.source_start : seg.source_end]
        np.testing.assert_allclose(seg.audio, source / peak * 0.675 + 0.25 * source, atol=1e-7)
        # The 16 kHz copy is the same signal: compare energies.
        assert np.sqrt(np.mean(seg.audio_16k**2)) == pytest.approx(np.sqrt(np.mean(seg.audio**2)), rel=0.02)


def test_norm_segment_formula_and_zero_input() -> None:
    x = np.array([0.1, -0.5, 0.25], dtype=np.float64)
    np.testing.assert_allclose(norm_segment(x), x / 0.5 * 0.675 + 0.25 * x, rtol=1e-15)
    assert np.abs(norm_segment(x)).max() == pytest.approx(0.9 * 0.75 + 0.25 * 0.5)
    zeros = np.zeros(4)
    out = norm_segment(zeros)
    assert np.array_equal(out, zeros) and out is not zeros


def test_split_segments_boundaries() -> None:
    sr = 40000
    # Exactly 4.0 s is not "longer than segment + overlap": one segment.
    assert split_segments(160000, sr) == [(0, 160000)]
    assert split_segments(160001, sr) == [(0, 148000), (136000, 160001)]
    assert split_segments(10 * sr, sr) == [(0, 148000), (136000, 284000), (272000, 400000)]
    assert split_segments(0, sr) == []
    assert split_segments(100, sr) == [(0, 100)]


def _tone_with_gaps(sr: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    rng = np.random.default_rng(0)
    parts, tones, pos = [], [], 0
    for kind, seconds in [("sil", 0.5), ("tone", 2.5), ("sil", 1.0), ("tone", 6.0), ("sil", 0.6)]:
        n = int(seconds * sr)
        if kind == "tone":
            t = np.arange(n) / sr
            parts.append(0.5 * np.sin(2 * np.pi * 220 * t))
            tones.append((pos, pos + n))
        else:
            parts.append(1e-4 * rng.standard_normal(n))
        pos += n
    return np.concatenate(parts).astype(np.float32), tones


def test_slicer_cuts_at_long_silence_only() -> None:
    sr = 16000
    audio, tones = _tone_with_gaps(sr)
    cuts = slice_ranges(audio, sr)
    assert len(cuts) == 2
    for (start, end), (tone_start, tone_end) in zip(cuts, tones, strict=True):
        assert start <= tone_start and end >= tone_end
        # At most max_sil_kept (500 ms) of silence is kept on either side.
        assert tone_start - start <= 0.5 * sr + 240 and end - tone_end <= 0.5 * sr + 240
    assert slice_ranges(np.zeros(5 * sr, dtype=np.float32), sr) == []
    assert slice_ranges(np.zeros(0, dtype=np.float32), sr) == []
    assert slice_ranges(np.full(50, 0.5, dtype=np.float32), sr) == [(0, 50)]


def test_modes_and_normalisation_switch() -> None:
    sr = 16000
    audio, _ = _tone_with_gaps(sr)
    n = audio.shape[0]
    auto = preprocess_audio(audio, sr, SliceConfig(mode="auto"))
    fixed = preprocess_audio(audio, sr, SliceConfig(mode="fixed"))
    off = preprocess_audio(audio, sr, SliceConfig(mode="off", use_normalization=False, use_highpass=False))
    # auto: a 3.0 s chunk (one segment) and a ~6.5 s chunk (two segments).
    assert len(auto) == 3 and [s.chunk_index for s in auto] == [0, 1, 1]
    assert [(s.source_start, s.source_end) for s in fixed] == split_segments(n, sr)
    assert len(off) == 1 and (off[0].source_start, off[0].source_end) == (0, n)
    np.testing.assert_array_equal(off[0].audio, audio)
    assert off[0].audio_16k is not off[0].audio and np.array_equal(off[0].audio_16k, audio)
    raw_fixed = preprocess_audio(audio, sr, SliceConfig(mode="fixed", use_normalization=False))
    filtered = highpass(audio, sr)
    for raw_seg, norm_seg in zip(raw_fixed, fixed, strict=True):
        peak = np.abs(filtered[raw_seg.source_start : raw_seg.source_end]).max()
        assert np.abs(raw_seg.audio).max() == pytest.approx(peak, rel=1e-6)
        assert np.abs(norm_seg.audio).max() == pytest.approx(0.675 + 0.25 * peak, rel=1e-6)


def test_loud_and_silent_segments_are_dropped() -> None:
    sr = 16000
    t = np.arange(3 * sr) / sr
    loud = (3.0 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    assert preprocess_audio(loud, sr, SliceConfig(mode="off")) == []
    assert preprocess_audio(np.zeros(sr, dtype=np.float32), sr, SliceConfig(mode="fixed")) == []
    mixed = np.concatenate([0.3 * np.sin(2 * np.pi * 300 * t), np.zeros(5 * sr)]).astype(np.float32)
    kept = preprocess_audio(mixed, sr, SliceConfig(mode="fixed", use_highpass=False))
    plan = plan_segments(mixed.astype(np.float64), sr, SliceConfig(mode="fixed"))
    assert [s.is_kept for s in plan] == [True, False, False]
    assert [(s.source_start, s.source_end) for s in kept] == [(plan[0].start, plan[0].end)]


def test_config_validation_and_round_trip() -> None:
    config = SliceConfig(mode="fixed", segment_s=3.0, overlap_s=0.5)
    assert SliceConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown slice config keys \\['segment_len'\\]"):
        SliceConfig.from_dict({"segment_len": 3.0})
    with pytest.raises(ValueError, match="slice mode"):
        SliceConfig(mode="smart")
    with pytest.raises(ValueError, match="min_length_ms >= min_interval_ms"):
        SliceConfig(min_length_ms=100, min_interval_ms=400)
    with pytest.raises(ValueError, match="overlap_s"):
        SliceConfig(segment_s=3.0, overlap_s=3.0)
    with pytest.raises(ValueError, match="threshold_db"):
        SliceConfig(threshold_db=3.0)
    with pytest.raises(ValueError, match="mono"):
        preprocess_audio(np.zeros((2, 100), dtype=np.float32), 16000)


def test_resample_to_16k_matches_librosa_default() -> None:
    import librosa

    rng = np.random.default_rng(5)
    for sr, n in [(40000, 86081), (48000, 177600), (32000, 88321), (40000, 3)]:
        x = rng.standard_normal(n)
        ours = resample_to_16k(x, sr)
        ref = librosa.resample(x, orig_sr=sr, target_sr=16000)
        assert ours.shape == ref.shape and ours.dtype == ref.dtype
        np.testing.assert_allclose(ours, ref, atol=1e-12)
    x16 = rng.standard_normal(10).astype(np.float32)
    assert np.array_equal(resample_to_16k(x16, 16000), x16)
