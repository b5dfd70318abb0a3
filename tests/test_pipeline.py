"""The conversion pipeline and the ``python -m infer convert`` CLI, with tiny random-weight models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from infer.audio import load_audio
from infer.diffusion.head import DiffusionHeadError
from infer.diffusion.refine import RefineParams
from infer.errors import Cancelled, ModelLoadError, TimbreError
from infer.pipeline import ConvertParams, PaddingConfig, Resources, convert, load_voice, split_points
from tests.fakes import (
    hubert_config,
    tiny_synth_config,
    write_diffusion_heads,
    write_hubert_checkpoint,
    write_rmvpe_checkpoint,
    write_voice_model,
)
from tests.helpers import EDGE_DIR, PIPELINE_GOLDEN_DIR, REPO_DIR, VOICES_DIR

V1_INDEX = PIPELINE_GOLDEN_DIR / "added_IVF30_Flat_nprobe_1_tiny_v1.index"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kit")
    pretrained = root / "pretrained"
    write_hubert_checkpoint(pretrained / "hubert_base.pt", hubert_config("v2"))
    write_rmvpe_checkpoint(pretrained / "rmvpe.pt")
    v1_hubert = write_hubert_checkpoint(root / "hubert_v1.pt", hubert_config("v1"))
    return {
        "pretrained": pretrained,
        "v1_hubert": v1_hubert,
        "v2_f0": write_voice_model(root / "v2_f0.pth", tiny_synth_config("v2", 40000, use_f0=True)),
        "v2_nof0": write_voice_model(root / "v2_nof0.pth", tiny_synth_config("v2", 48000, use_f0=False)),
        "v1_f0": write_voice_model(root / "v1_f0.pth", tiny_synth_config("v1", 32000, use_f0=True)),
    }


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(VOICES_DIR / "us2" / "speech" / "001.flac", 16000)


def test_converts_speech_to_the_model_rate_with_rvc_length(kit: dict[str, Path], speech: np.ndarray) -> None:
    voice = load_voice(kit["v2_f0"])
    result = convert(
        speech,
        voice,
        ConvertParams(f0_method="pm", seed=1),
        resources=Resources(pretrained_dir=kit["pretrained"]),
    )
    assert result.sample_rate == 40000
    # RVC: min(F0 frames, 2x HuBERT frames) of the padded input, minus the padding, times the hop.
    padded = len(speech) + 2 * 16000
    frames = min(padded // 160, 2 * ((padded - 400) // 320 + 1)) - 2 * 100
    assert result.audio.shape == (frames * 400,)
    assert np.all(np.isfinite(result.audio)) and 0 < np.abs(result.audio).max() <= 0.99 + 1e-6
    assert result.f0_method == "pm"
    assert result.f0_source_hz.shape == (padded // 160 - 200,)
    voiced = result.f0_source_hz[result.f0_source_hz > 0]
    assert 70 < np.median(voiced) < 140  # us2 is a low male voice (median ~100 Hz)
    assert {"content", "f0", "text_encoder", "decoder", "total"} <= set(result.timings_s)


def test_seed_makes_conversion_reproducible_and_pitch_shift_moves_f0(
    kit: dict[str, Path], speech: np.ndarray
) -> None:
    voice = load_voice(kit["v2_f0"])
    res = Resources(pretrained_dir=kit["pretrained"])
    a = convert(speech, voice, ConvertParams(f0_method="pm", seed=3), resources=res)
    b = convert(speech, voice, ConvertParams(f0_method="pm", seed=3), resources=res)
    c = convert(speech, voice, ConvertParams(f0_method="pm", seed=4), resources=res)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert not np.array_equal(a.audio, c.audio)
    up = convert(
        speech, voice, ConvertParams(f0_method="pm", seed=3, pitch_shift_semitones=12), resources=res
    )
    voiced = a.f0_target_hz > 0
    np.testing.assert_allclose(up.f0_target_hz[voiced], 2 * a.f0_target_hz[voiced], rtol=1e-5)


def test_no_f0_model_and_output_resampling(kit: dict[str, Path], speech: np.ndarray) -> None:
    voice = load_voice(kit["v2_nof0"])
    result = convert(
        speech,
        voice,
        ConvertParams(output_sample_rate=22050, seed=0),
        resources=Resources(pretrained_dir=kit["pretrained"]),
    )
    assert result.sample_rate == 22050
    assert result.f0_method == "none"
    assert abs(len(result.audio) / 22050 - len(speech) / 16000) < 0.03


def test_v1_model_with_its_256_dim_index(kit: dict[str, Path], speech: np.ndarray) -> None:
    voice = load_voice(kit["v1_f0"], V1_INDEX)
    res = Resources(pretrained_dir=kit["pretrained"], content_encoder=str(kit["v1_hubert"]))
    with_index = convert(speech, voice, ConvertParams(f0_method="pm", seed=0, index_rate=0.75), resources=res)
    without = convert(speech, voice, ConvertParams(f0_method="pm", seed=0, index_rate=0.0), resources=res)
    assert with_index.sample_rate == 32000
    assert not np.allclose(with_index.audio, without.audio)


def test_index_of_the_wrong_dimension_is_refused(kit: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match="256"):
        load_voice(kit["v2_f0"], V1_INDEX)


def test_long_input_is_split_like_rvc_and_progress_is_reported(kit: dict[str, Path]) -> None:
    audio = load_audio(VOICES_DIR / "mixtures" / "long_us2_speech_180s.flac", 16000)[: 16000 * 50]
    cuts = split_points(audio, PaddingConfig.cpu())
    assert len(cuts) == 1 and 32 * 16000 <= cuts[0] <= 44 * 16000 and cuts[0] % 160 == 0
    seen: list[tuple[float, str]] = []
    voice = load_voice(kit["v2_nof0"])
    result = convert(
        audio,
        voice,
        ConvertParams(seed=0),
        resources=Resources(pretrained_dir=kit["pretrained"]),
        progress=lambda f, s: seen.append((f, s)),
    )
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("chunk 2/2" in s for _, s in seen)
    # One extra hop of overlap per chunk boundary, as in RVC.
    assert abs(len(result.audio) - len(audio) * 3) <= 2 * 480 + 3 * 480


def test_should_stop_cancels_between_chunks(kit: dict[str, Path], speech: np.ndarray) -> None:
    voice = load_voice(kit["v2_f0"])
    with pytest.raises(Cancelled):
        convert(
            speech,
            voice,
            ConvertParams(f0_method="pm"),
            resources=Resources(pretrained_dir=kit["pretrained"]),
            should_stop=lambda: True,
        )


def test_bad_inputs_and_settings_give_clear_errors(kit: dict[str, Path]) -> None:
    voice = load_voice(kit["v2_f0"])
    res = Resources(pretrained_dir=kit["pretrained"])
    with pytest.raises(TimbreError, match="speaker_id 5"):
        convert(np.zeros(16000, np.float32) + 0.1, voice, ConvertParams(speaker_id=5), resources=res)
    with pytest.raises(TimbreError, match="silent"):
        convert(load_audio(EDGE_DIR / "silence_10s.wav", 16000), voice, ConvertParams(), resources=res)
    with pytest.raises(ValueError, match="index_rate"):
        ConvertParams(index_rate=1.5)
    with pytest.raises(ValueError, match="ConvertParams: unknown keys"):
        ConvertParams.from_dict({"pitch": 3})
    with pytest.raises(ModelLoadError, match="not found"):
        load_voice(kit["pretrained"] / "missing.pth")


def test_every_sampler_converts_and_a_model_without_heads_says_so(
    kit: dict[str, Path], speech: np.ndarray, tmp_path: Path
) -> None:
    config = tiny_synth_config("v2", 40000, use_f0=True)
    model_dir = tmp_path / "voice"
    model_path = write_voice_model(model_dir / "voice.pth", config)
    res = Resources(pretrained_dir=kit["pretrained"])
    bare = load_voice(model_path)
    with pytest.raises(DiffusionHeadError, match="python -m train diffusion"):
        convert(
            speech, bare, ConvertParams(f0_method="pm", refine=RefineParams(sampler="ddim")), resources=res
        )
    write_diffusion_heads(model_dir, config)
    voice = load_voice(model_path)
    off = convert(speech, voice, ConvertParams(f0_method="pm", seed=0), resources=res)
    for sampler, steps in (("ddpm", 3), ("ddim", 2), ("lcm", 2)):
        for start in ("shallow", "noise"):
            refine = RefineParams(sampler=sampler, steps=steps, guidance_weight=1.0, start=start)
            params = ConvertParams(f0_method="pm", seed=0, refine=refine)
            result = convert(speech, voice, params, resources=res)
            assert result.audio.shape == off.audio.shape
            assert np.all(np.isfinite(result.audio))
            assert not np.array_equal(result.audio, off.audio)
            assert result.timings_s["diffusion"] > 0
    with pytest.raises(ValueError, match="1 to 4 steps"):
        ConvertParams(refine=RefineParams(sampler="lcm", steps=5))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "infer", *args],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def test_cli_converts_speech_singing_long_file_and_mixture(kit: dict[str, Path], tmp_path: Path) -> None:
    inputs = [
        VOICES_DIR / "us2" / "speech" / "002.flac",
        VOICES_DIR / "en1" / "singing" / "a02_scale_la.flac",
        VOICES_DIR / "mixtures" / "long_us2_speech_180s.flac",
        VOICES_DIR / "mixtures" / "mix_en1_44k_stereo.flac",
    ]
    out = tmp_path / "out"
    proc = _cli(
        "convert",
        *map(str, inputs),
        "--model",
        str(kit["v2_f0"]),
        "--output",
        str(out),
        "--format",
        "flac",
        "--f0-method",
        "rmvpe",
        "--pretrained-dir",
        str(kit["pretrained"]),
        "--pitch-shift",
        "12",
        "--threads",
        "1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for src in inputs:
        produced = out / (src.stem + ".flac")
        info = sf.info(produced)
        assert info.samplerate == 40000 and info.channels == 1
        assert abs(info.duration - sf.info(src).duration) < 0.1, (src.name, info.duration)
    long_audio, _ = sf.read(out / "long_us2_speech_180s.flac")
    assert np.abs(long_audio).max() > 0.01


def test_cli_errors_are_one_readable_line(kit: dict[str, Path], tmp_path: Path) -> None:
    speech_file = str(VOICES_DIR / "us2" / "speech" / "001.flac")
    bad_model = _cli("convert", speech_file, "--model", str(V1_INDEX), "--output", str(tmp_path / "a.wav"))
    bad_input = _cli(
        "convert",
        str(EDGE_DIR / "not_really.mp3"),
        "--model",
        str(kit["v2_f0"]),
        "--output",
        str(tmp_path / "b.wav"),
        "--pretrained-dir",
        str(kit["pretrained"]),
    )
    missing_base = _cli(
        "convert",
        speech_file,
        "--model",
        str(kit["v2_f0"]),
        "--output",
        str(tmp_path / "c.wav"),
        "--pretrained-dir",
        str(tmp_path / "empty"),
        "--f0-method",
        "pm",
    )
    for proc, needle in (
        (bad_model, "not a readable PyTorch checkpoint"),
        (bad_input, "not audio"),
        (missing_base, "python -m infer assets download"),
    ):
        assert proc.returncode != 0
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and needle in lines[0], proc.stderr[-1500:]
        assert "Traceback" not in proc.stderr
