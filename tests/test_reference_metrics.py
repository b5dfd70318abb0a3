"""Ground-truth measures: MCD, DTW-aligned MCD, log-mel L1, log-F0 correlation on known cases."""

from __future__ import annotations

import numpy as np
import pytest

from infer.metrics import (
    dtw_mcd,
    dtw_path,
    log_f0_correlation,
    log_mel,
    log_mel_l1,
    mcd,
    mel_cepstrum,
)

SR = 16000


def _chirp(duration_s: float, *, seed: int = 0) -> np.ndarray:
    """A gliding harmonic tone whose pitch path depends only on the fraction of the clip elapsed."""
    n = int(duration_s * SR)
    phase_rate = 150 + 100 * np.sin(np.linspace(0, 2 * np.pi, n))  # Hz along the clip
    phase = 2 * np.pi * np.cumsum(phase_rate) / SR
    audio = sum(np.sin(k * phase) / k for k in range(1, 6))
    return (0.2 * audio).astype(np.float32)


def test_identical_signals_score_zero() -> None:
    audio = _chirp(1.0)
    mel = log_mel(audio, SR)
    cep = mel_cepstrum(mel)
    assert mel.shape == (101, 80) and cep.shape == (101, 24)
    assert mcd(cep, cep) == 0.0 and log_mel_l1(mel, mel) == 0.0
    assert dtw_mcd(cep, cep)[0] == 0.0


def test_a_time_stretched_copy_is_close_after_dtw_and_far_without() -> None:
    base = mel_cepstrum(log_mel(_chirp(1.0), SR))
    stretched = np.repeat(base, 2, axis=0)  # every frame twice: the same sounds at half the pace
    aligned, (i, j) = dtw_mcd(base, stretched)
    assert aligned == pytest.approx(0.0, abs=1e-9)
    assert mcd(base, stretched) > 1.0
    assert i[0] == j[0] == 0 and i[-1] == len(base) - 1 and j[-1] == len(stretched) - 1
    # On audio: a 1.3x slower rendering of the same glide.
    slow = mel_cepstrum(log_mel(_chirp(1.3), SR))
    aligned_audio, _ = dtw_mcd(base, slow)
    assert aligned_audio < 0.5 * mcd(base, slow)


def test_dtw_path_on_a_hand_matrix() -> None:
    cost = np.array([[0.0, 5.0, 5.0], [5.0, 0.0, 0.0]])
    i, j = dtw_path(cost)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 0), (1, 1), (1, 2)]
    i, j = dtw_path(np.array([[0.0, 1.0, 9.0], [9.0, 1.0, 0.0]]))
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 0), (0, 1), (1, 2)]


def test_mcd_scale_of_a_known_cepstral_difference() -> None:
    a = np.zeros((10, 24))
    b = a.copy()
    b[:, 0] = 1.0  # one coefficient off by 1: (10 / ln 10) * sqrt(2) dB
    assert mcd(a, b) == pytest.approx(10 / np.log(10) * np.sqrt(2))


def test_log_f0_correlation_ignores_the_pitch_offset() -> None:
    f0 = np.array([0, 100, 120, 140, 130, 0, 110, 150], dtype=float)
    corr, offset = log_f0_correlation(f0 * 2.0, f0)
    assert corr == pytest.approx(1.0) and offset == pytest.approx(12.0)
    flat = np.where(f0 > 0, 150.0, 0.0)
    corr_flat, _ = log_f0_correlation(flat, f0)
    assert np.isnan(corr_flat)
    reversed_corr, _ = log_f0_correlation(np.array([0, 140, 120, 100, 110, 0, 130, 90.0]), f0)
    assert reversed_corr < 0
    assert all(np.isnan(v) for v in log_f0_correlation(np.zeros(8), f0))
