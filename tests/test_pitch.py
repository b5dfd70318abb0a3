"""Pitch extractors: known tones, a sung take with exact F0, silence, lengths, registry, reference code."""

from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from infer.errors import AssetError, AudioDecodeError, Cancelled, TimbreError
from infer.pitch import (
    PitchExtractor,
    PitchMethodUnavailable,
    available_methods,
    default_method,
    get_pitch_extractor,
    pitch_methods,
)
from infer.pitch.classic import HarvestExtractor
from tests.helpers import REPO_DIR, RMVPE_FIXTURES, VOICES_DIR

SAMPLE_RATE = 16000
TONE_F0_HZ = 220.0
CPU_METHODS = ("pm", "harvest", "crepe-tiny", "fcpe")
TAKE = VOICES_DIR / "us1" / "singing" / "a02_scale_la.flac"


def harmonic_tone(f0_hz: float, duration_s: float) -> np.ndarray:
    t = np.arange(int(duration_s * SAMPLE_RATE)) / SAMPLE_RATE
    tone = sum(0.3 / k * np.sin(2 * np.pi * f0_hz * k * t) for k in range(1, 5))
    return tone.astype(np.float32)


def cents(estimate: np.ndarray, reference: np.ndarray | float) -> np.ndarray:
    return np.abs(1200.0 * np.log2(estimate / reference))


@pytest.fixture(scope="module")
def rmvpe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pretrained")
    shutil.copy(RMVPE_FIXTURES / "tiny_rmvpe_fp16.pt", folder / "rmvpe.pt")
    return folder


@pytest.fixture(scope="module")
def take() -> tuple[np.ndarray, np.ndarray]:
    audio, rate = sf.read(TAKE, dtype="float32")
    assert rate == SAMPLE_RATE and audio.ndim == 1
    truth = np.loadtxt(TAKE.with_suffix(".f0.csv"), delimiter=",", skiprows=1)
    np.testing.assert_allclose(truth[:5, 0], [0.0, 0.01, 0.02, 0.03, 0.04])
    return audio, truth[:, 1].astype(np.float32)


@pytest.mark.parametrize("method", CPU_METHODS)
def test_harmonic_tone_within_20_cents(method: str) -> None:
    extractor = get_pitch_extractor(method)
    assert isinstance(extractor, PitchExtractor) and extractor.name == method
    f0 = extractor.extract(harmonic_tone(TONE_F0_HZ, 1.0))
    assert f0.shape == (100,) and f0.dtype == np.float32
    interior = f0[5:-5]
    assert (interior > 0).mean() >= 0.95
    assert cents(interior[interior > 0], TONE_F0_HZ).max() < 20.0


@pytest.mark.parametrize("method", ("fcpe", "pm"))
def test_sung_take_against_ground_truth(method: str, take: tuple[np.ndarray, np.ndarray]) -> None:
    audio, truth = take
    f0 = get_pitch_extractor(method).extract(audio, p_len=truth.shape[0])
    assert f0.shape == truth.shape
    both = (f0 > 0) & (truth > 0)
    assert both.sum() > 0.8 * (truth > 0).sum()
    error = cents(f0[both], truth[both])
    assert np.median(error) < 5.0
    assert (error > 50.0).mean() < 0.03
    assert ((f0 > 0) != (truth > 0)).mean() < 0.03


@pytest.mark.parametrize("method", CPU_METHODS)
def test_silence_is_unvoiced(method: str) -> None:
    f0 = get_pitch_extractor(method).extract(np.zeros(SAMPLE_RATE, dtype=np.float32))
    assert f0.shape == (100,)
    assert not np.isnan(f0).any()
    assert np.all(f0 == 0.0)


@pytest.mark.parametrize("method", pitch_methods())
def test_output_length_is_p_len(method: str, rmvpe_dir: Path) -> None:
    extractor = get_pitch_extractor(method, pretrained_dir=rmvpe_dir)
    audio = harmonic_tone(180.0, 0.3)
    natural = audio.shape[0] // 160
    for p_len in (None, natural - 7, natural + 3, 0):
        f0 = extractor.extract(audio, p_len=p_len)
        expected = natural if p_len is None else p_len
        assert f0.shape == (expected,)
        assert f0.dtype == np.float32 and np.all(np.isfinite(f0)) and np.all(f0 >= 0)
    short = extractor.extract(audio[:700], p_len=6)
    assert short.shape == (6,) and np.all(np.isfinite(short))


def test_f0_range_limits_every_method(rmvpe_dir: Path) -> None:
    audio = harmonic_tone(TONE_F0_HZ, 0.6)
    for method in CPU_METHODS:
        f0 = get_pitch_extractor(method).extract(audio, f0_min_hz=300.0, f0_max_hz=1000.0)
        voiced = f0[f0 > 0]
        assert np.all((voiced >= 300.0) & (voiced <= 1000.0)), method
    with pytest.raises(TimbreError, match="F0 range"):
        get_pitch_extractor("pm").extract(audio, f0_min_hz=500.0, f0_max_hz=100.0)


def test_default_method_follows_rmvpe_file(tmp_path: Path, rmvpe_dir: Path) -> None:
    assert default_method(tmp_path) == "fcpe"
    assert default_method(None) == "fcpe"
    assert "rmvpe" not in available_methods(tmp_path)
    assert default_method(rmvpe_dir) == "rmvpe"
    methods = available_methods(rmvpe_dir)
    assert methods == list(pitch_methods())


def test_registry_caches_and_explains_errors(tmp_path: Path, rmvpe_dir: Path) -> None:
    first = get_pitch_extractor("fcpe")
    assert get_pitch_extractor("FCPE ") is first
    rmvpe = get_pitch_extractor("rmvpe", pretrained_dir=rmvpe_dir)
    assert get_pitch_extractor("rmvpe", rmvpe_path=rmvpe_dir / "rmvpe.pt") is rmvpe
    with pytest.raises(PitchMethodUnavailable, match="choose one of"):
        get_pitch_extractor("yin")
    with pytest.raises(AssetError, match=r"rmvpe\.pt"):
        get_pitch_extractor("rmvpe", pretrained_dir=tmp_path)


def test_bad_audio_is_refused() -> None:
    extractor = get_pitch_extractor("pm")
    with pytest.raises(AudioDecodeError, match="mono"):
        extractor.extract(np.zeros((2, 1600), dtype=np.float32))
    with pytest.raises(AudioDecodeError, match="NaN"):
        extractor.extract(np.full(1600, np.nan, dtype=np.float32))


def test_cancel_stops_long_work() -> None:
    extractor = get_pitch_extractor("crepe-tiny")
    with pytest.raises(Cancelled):
        extractor.extract(harmonic_tone(TONE_F0_HZ, 1.0), should_stop=lambda: True)


def test_harvest_without_pyworld_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyworld", None)
    with pytest.raises(TimbreError, match="pyworld"):
        HarvestExtractor()


def _install_fake_torchaudio(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchcrepe / torchfcpe import torchaudio, which is unusable here: give them a stand-in."""
    from scipy.signal import resample_poly

    class Resample(torch.nn.Module):
        def __init__(self, orig_freq: int, new_freq: int, **_options: object) -> None:
            super().__init__()
            self.orig_freq, self.new_freq = int(orig_freq), int(new_freq)

        def forward(self, waveform: torch.Tensor) -> torch.Tensor:
            out = resample_poly(waveform.numpy(), self.new_freq, self.orig_freq, axis=-1)
            return torch.from_numpy(out.astype(np.float32))

    fake = types.ModuleType("torchaudio")
    transforms = types.ModuleType("torchaudio.transforms")
    transforms.Resample = Resample  # type: ignore[attr-defined]
    fake.transforms = transforms  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchaudio", fake)
    monkeypatch.setitem(sys.modules, "torchaudio.transforms", transforms)


def test_crepe_tiny_matches_torchcrepe(
    monkeypatch: pytest.MonkeyPatch, take: tuple[np.ndarray, np.ndarray]
) -> None:
    _install_fake_torchaudio(monkeypatch)
    import torchcrepe

    # torchcrepe dithers bin centres with random noise; Timbre does not, so compare without it.
    monkeypatch.setattr(torchcrepe.convert, "dither", lambda cents: cents)
    audio = take[0][: SAMPLE_RATE * 4]
    f0_ref, periodicity = torchcrepe.predict(
        torch.from_numpy(audio)[None],
        SAMPLE_RATE,
        160,
        50.0,
        1100.0,
        "tiny",
        batch_size=512,
        device="cpu",
        return_periodicity=True,
    )
    periodicity = torchcrepe.filter.median(periodicity, 3)
    f0_ref = torchcrepe.filter.mean(f0_ref, 3)
    f0_ref[periodicity < 0.1] = 0
    reference = f0_ref[0].numpy()
    ours = get_pitch_extractor("crepe-tiny").extract(audio, p_len=reference.shape[0])
    assert (reference > 0).mean() > 0.5
    np.testing.assert_array_equal(ours > 0, reference > 0)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-3)


def test_fcpe_matches_torchfcpe(monkeypatch: pytest.MonkeyPatch, take: tuple[np.ndarray, np.ndarray]) -> None:
    _install_fake_torchaudio(monkeypatch)
    import torchfcpe

    model = torchfcpe.spawn_bundled_infer_model(device="cpu")
    extractor = get_pitch_extractor("fcpe")
    for audio in (take[0][: SAMPLE_RATE * 6], take[0][SAMPLE_RATE : SAMPLE_RATE + 700]):
        reference = (
            model.infer(
                torch.from_numpy(audio)[None], sr=SAMPLE_RATE, decoder_mode="local_argmax", threshold=0.006
            )
            .squeeze(-1)[0]
            .numpy()
        )
        ours = extractor.infer_f0(audio)  # type: ignore[attr-defined]
        assert ours.shape == reference.shape
        np.testing.assert_array_equal(ours > 0, reference > 0)
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-2)
    assert (reference > 0).any()


def test_fcpe_segments_match_single_pass(take: tuple[np.ndarray, np.ndarray]) -> None:
    from infer.pitch.fcpe import FcpeExtractor

    single = get_pitch_extractor("fcpe")
    audio = take[0][: SAMPLE_RATE * 2]
    segmented = FcpeExtractor(_fcpe_weights(), segment_frames=64, context_frames=96)
    expected = single.salience(audio)  # type: ignore[attr-defined]
    np.testing.assert_allclose(segmented.salience(audio), expected, atol=1e-4)


def _fcpe_weights() -> Path:
    from infer.pitch.base import package_asset

    path = package_asset("torchfcpe", "assets", "fcpe_c_v001.pt")
    assert path is not None
    return path


def test_shipped_code_never_imports_torchaudio() -> None:
    script = (
        "import sys, numpy as np\n"
        "from infer.pitch import get_pitch_extractor\n"
        "audio = np.zeros(8000, dtype=np.float32)\n"
        "for name in ('crepe-tiny', 'fcpe', 'pm'):\n"
        "    get_pitch_extractor(name).extract(audio)\n"
        "bad = [m for m in ('torchaudio', 'torchcrepe', 'torchfcpe') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_DIR, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "clean"
