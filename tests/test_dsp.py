"""Tests for infer.dsp: RVC goldens for the high-pass and RMS mix, exact split/protect semantics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from infer import dsp
from tests.helpers import PIPELINE_GOLDEN_DIR


def test_highpass_golden_coefficients_and_output() -> None:
    golden = np.load(PIPELINE_GOLDEN_DIR / "highpass_16k.npz")
    b, a = dsp.butter_highpass(5, 48.0, 16000)
    np.testing.assert_allclose(b, golden["bh"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(a, golden["ah"], rtol=1e-12, atol=0)
    out = dsp.highpass_filtfilt(golden["x"])
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, golden["filtfilt_out"], rtol=0, atol=1e-6)


def test_butter_highpass_is_cached_and_read_only() -> None:
    first = dsp.butter_highpass(5, 48.0, 40000)
    second = dsp.butter_highpass(5, 48.0, 40000)
    assert first[0] is second[0]
    assert not first[0].flags.writeable
    with pytest.raises(ValueError, match="Nyquist"):
        dsp.butter_highpass(5, 9000.0, 16000)


def test_highpass_lfilter_matches_scipy_and_removes_dc() -> None:
    x = np.ones(40000) * 0.5
    out = dsp.highpass_lfilter(x, 40000)
    b, a = signal.butter(N=5, Wn=48, btype="high", fs=40000)
    np.testing.assert_allclose(out, signal.lfilter(b, a, x), rtol=0, atol=1e-12)
    assert abs(out[-1000:]).max() < 1e-3


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 0.75])
def test_rms_mix_golden(rate: float) -> None:
    golden = np.load(PIPELINE_GOLDEN_DIR / "rms_mix.npz")
    target = golden["data2_40k_f32"]
    target_before = target.copy()
    out = dsp.rms_mix(golden["data1_16k_f64"], 16000, target, 40000, rate)
    assert out.dtype == np.float32
    expected = golden[f"out_rate{rate}"]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(target, target_before)


def test_rms_mix_rate_one_keeps_target() -> None:
    rng = np.random.default_rng(1)
    target = rng.standard_normal(40000).astype(np.float32) * 0.1
    out = dsp.rms_mix(rng.standard_normal(16000) * 0.5, 16000, target, 40000, 1.0)
    np.testing.assert_array_equal(out, target)


def test_rms_mix_full_source_envelope_matches_source_level() -> None:
    # rate 0: the output takes the source's loudness; a constant-level tone at 0.1 rms over a target at
    # 0.4 rms comes out at about 0.1 rms away from the edges.
    t = np.arange(48000) / 16000
    source = np.sqrt(2) * 0.1 * np.sin(2 * np.pi * 200 * t)
    t2 = np.arange(120000) / 40000
    target = (np.sqrt(2) * 0.4 * np.sin(2 * np.pi * 300 * t2)).astype(np.float32)
    out = dsp.rms_mix(source, 16000, target, 40000, 0.0)
    middle = out[40000:80000]
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.1, rel=0.02)


def _split_signal(length: int, quiet_starts: list[int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 1.0, length) * rng.choice([-1.0, 1.0], length)
    for start in quiet_starts:
        x[start : start + 400] = 0.0
    return x


def test_find_split_points_picks_the_quiet_spot_near_each_center() -> None:
    sr = 16000
    quiet = [38 * sr + 12345, 76 * sr - 50000]
    x = _split_signal(100 * sr, quiet)
    points = dsp.find_split_points(x, x_center_s=38, x_query_s=6, x_max_s=41)
    # the moving sum covers x[j-80 : j+80]; it is first zero once the window lies inside the block
    assert points == [quiet[0] + 80, quiet[1] + 80]


def test_find_split_points_uses_the_signed_moving_sum() -> None:
    # RVC takes |sum of samples|, not the sum of |samples|: a loud alternating burst sums to zero
    sr = 16000
    x = _split_signal(50 * sr, [])
    start = 38 * sr - 3000
    x[start : start + 1000] = np.where(np.arange(1000) % 2 == 0, 0.9, -0.9)
    points = dsp.find_split_points(x, x_center_s=38, x_query_s=6, x_max_s=41)
    assert points == [start + 80]


def test_find_split_points_threshold_and_defaults() -> None:
    sr = 16000
    t_max = 41 * sr
    assert dsp.find_split_points(np.zeros(t_max - 160)) == []
    x = _split_signal(t_max - 159, [])
    points = dsp.find_split_points(x)
    assert len(points) == 1
    assert 32 * sr <= points[0] < 44 * sr
    with pytest.raises(ValueError, match="x_query_s"):
        dsp.find_split_points(x, x_center_s=5, x_query_s=6)


def test_upsample_nearest_2x() -> None:
    feats = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = dsp.upsample_nearest_2x(feats)
    np.testing.assert_array_equal(out, [[0, 1], [0, 1], [2, 3], [2, 3], [4, 5], [4, 5]])
    batched = dsp.upsample_nearest_2x(feats[None])
    assert batched.shape == (1, 6, 2)
    np.testing.assert_array_equal(batched[0], out)


def test_apply_protect_mask_semantics() -> None:
    feats = np.full((4, 3), 10.0, dtype=np.float32)
    before = np.full((4, 3), 20.0, dtype=np.float32)
    pitchf = np.array([0.0, 0.5, 100.0, 1.0], dtype=np.float32)
    out = dsp.apply_protect(feats, before, pitchf, 0.25)
    # mask: unvoiced 0 and 0.5 (pitchf < 1 wins over > 0) -> 0.25; voiced -> 1
    unvoiced = 0.25 * 10 + 0.75 * 20
    np.testing.assert_allclose(out[:, 0], [unvoiced, unvoiced, 10.0, 10.0], rtol=1e-6)
    assert out.dtype == np.float32
    unchanged = dsp.apply_protect(feats, before, pitchf, 0.5)
    np.testing.assert_array_equal(unchanged, feats)
    full_protect = dsp.apply_protect(feats, before, pitchf, 0.0)
    np.testing.assert_array_equal(full_protect[:, 0], [20.0, 20.0, 10.0, 10.0])


def test_apply_protect_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="pitchf shape"):
        dsp.apply_protect(np.zeros((4, 2)), np.zeros((4, 2)), np.zeros(5), 0.3)
