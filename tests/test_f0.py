"""Pure F0 helpers: transposition, RVC's coarse pitch (golden) and its median filter."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import medfilt

from infer.pitch.f0 import f0_to_coarse, median_filter_f0, shift_semitones
from tests.helpers import PIPELINE_GOLDEN_DIR


@pytest.fixture(scope="module")
def coarse_golden() -> dict[str, np.ndarray]:
    with np.load(PIPELINE_GOLDEN_DIR / "f0_coarse.npz") as data:
        return {key: data[key] for key in data.files}


def test_coarse_golden_every_key(coarse_golden: dict[str, np.ndarray]) -> None:
    f0_in = coarse_golden["f0_in"]
    keys = [int(k) for k in coarse_golden["keys"]]
    assert keys == [0, 12, -12, 5, -7]
    for key in keys:
        pitchf = shift_semitones(f0_in, key)
        np.testing.assert_allclose(pitchf, coarse_golden[f"pitchf_key{key}"], rtol=1e-12, atol=0)
        coarse = f0_to_coarse(pitchf)
        expected = coarse_golden[f"coarse_key{key}"]
        assert coarse.dtype == np.int32
        assert coarse.shape == expected.shape
        mismatches = np.flatnonzero(coarse != expected)
        assert mismatches.size == 0, f"key {key}: coarse differs at {mismatches[:10]}"


def test_coarse_golden_covers_both_ends(coarse_golden: dict[str, np.ndarray]) -> None:
    coarse = coarse_golden["coarse_key0"]
    assert coarse.min() == 1 and coarse.max() == 255
    assert np.unique(coarse).size > 100


def test_coarse_edges_and_bad_values() -> None:
    f0 = np.array([0.0, 10.0, 50.0, 1100.0, 5000.0, np.nan, np.inf, -5.0])
    np.testing.assert_array_equal(f0_to_coarse(f0), [1, 1, 1, 255, 255, 1, 1, 1])


def test_coarse_is_monotonic_on_a_sweep() -> None:
    sweep = np.geomspace(40.0, 1200.0, 500)
    coarse = f0_to_coarse(sweep)
    assert np.all(np.diff(coarse) >= 0)
    assert coarse[0] == 1 and coarse[-1] == 255


def test_shift_semitones_keeps_unvoiced_and_dtype() -> None:
    f0 = np.array([0.0, 220.0, 440.0], dtype=np.float32)
    up = shift_semitones(f0, 12)
    assert up.dtype == np.float32
    np.testing.assert_allclose(up, [0.0, 440.0, 880.0], rtol=1e-6)
    back = shift_semitones(shift_semitones(f0.astype(np.float64), 7), -7)
    assert back.dtype == np.float64
    np.testing.assert_allclose(back, f0, rtol=1e-12)


def test_median_filter_follows_filter_radius() -> None:
    rng = np.random.default_rng(0)
    f0 = rng.uniform(80.0, 400.0, 200)
    f0[rng.random(200) < 0.2] = 0.0
    # RVC: filter_radius < 3 means no filtering...
    np.testing.assert_array_equal(median_filter_f0(f0, 0), f0)
    np.testing.assert_array_equal(median_filter_f0(f0, 2), f0)
    # ...and any radius >= 3 means scipy's 3-tap median (zero-padded ends).
    expected = medfilt(f0, 3)
    np.testing.assert_array_equal(median_filter_f0(f0, 3), expected)
    np.testing.assert_array_equal(median_filter_f0(f0, 7), expected)
    assert not np.array_equal(expected, f0)


def test_median_filter_removes_single_frame_spike() -> None:
    f0 = np.full(9, 200.0, dtype=np.float32)
    f0[4] = 400.0
    filtered = median_filter_f0(f0, 3)
    assert filtered.dtype == np.float32
    assert filtered[4] == 200.0
    assert median_filter_f0(np.zeros(0), 3).shape == (0,)
