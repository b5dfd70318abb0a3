"""ONNX export with RVC's signature, parity with the torch synthesizer, and ``--engine onnx``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from infer.models import build_synthesizer, load_voice_model
from infer.onnx_synth import (
    INPUT_NAMES_F0,
    INPUT_NAMES_NO_F0,
    OnnxError,
    OnnxSynthesizer,
    example_inputs,
    export_onnx,
    nsf_noise_from,
)
from infer.pipeline import Converter, ConvertParams, Resources, load_voice
from tests.fakes import tiny_synth_config, write_voice_model
from tests.helpers import VOICES_DIR

REPO_DIR = Path(__file__).resolve().parents[1]
PARITY_SNR_DB = 60.0


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / max(np.sum((reference - other) ** 2), 1e-30)))


def torch_reference(synth, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """The torch fp32 synthesizer on the same inputs and the same noise as the graph."""
    use_f0 = synth.config.use_f0
    with torch.no_grad():
        return synth.infer(
            inputs["phone"],
            inputs["phone_lengths"],
            inputs.get("pitch"),
            inputs.get("pitchf"),
            inputs["ds"],
            noise_scale=1.0,
            noise=inputs["rnd"],
            sine_noise=nsf_noise_from(inputs["rnd"], synth.config.hop_length) if use_f0 else None,
        ).numpy()


@pytest.fixture(scope="module")
def exported(voice_kit, tmp_path_factory):
    synth = build_synthesizer(load_voice_model(voice_kit["model"]))
    path = export_onnx(synth, tmp_path_factory.mktemp("onnx") / "voice.onnx")
    return synth, path


def test_graph_has_rvcs_names_shapes_and_dynamic_frames(exported):
    import onnx

    synth, path = exported
    graph = onnx.load(str(path)).graph
    inputs = {i.name: i.type.tensor_type for i in graph.input}
    assert tuple(inputs) == INPUT_NAMES_F0
    assert [o.name for o in graph.output] == ["audio"]
    dims = {name: [d.dim_param or d.dim_value for d in t.shape.dim] for name, t in inputs.items()}
    c = synth.config
    assert dims["phone"] == [1, "frames", c.content_dim]
    assert dims["phone_lengths"] == [1] and dims["ds"] == [1]
    assert dims["pitch"] == [1, "frames"] and dims["pitchf"] == [1, "frames"]
    assert dims["rnd"] == [1, c.inter_channels, "frames"]
    int64, float32 = onnx.TensorProto.INT64, onnx.TensorProto.FLOAT
    assert {n: t.elem_type for n, t in inputs.items()} == {
        "phone": float32, "phone_lengths": int64, "pitch": int64, "pitchf": float32,
        "ds": int64, "rnd": float32,
    }  # fmt: skip


@pytest.mark.parametrize("frames", [37, 200, 613])
def test_onnxruntime_matches_torch_fp32(exported, frames):
    synth, path = exported
    session = OnnxSynthesizer.load(path, threads=1)
    inputs = example_inputs(synth, frames, seed=frames)
    audio = session.run({k: v.numpy() for k, v in inputs.items()})
    reference = torch_reference(synth, inputs)
    assert audio.shape == reference.shape == (1, 1, frames * synth.config.hop_length)
    assert np.abs(reference).max() > 1e-3  # not a silent comparison
    assert snr_db(reference, audio) >= PARITY_SNR_DB


def test_noise_comes_from_rnd_so_runs_repeat_and_differ_with_it(exported):
    synth, path = exported
    session = OnnxSynthesizer.load(path, threads=1)
    inputs = {k: v.numpy() for k, v in example_inputs(synth, 80, seed=1).items()}
    first, again = session.run(inputs), session.run(inputs)
    np.testing.assert_array_equal(first, again)
    inputs["rnd"] = inputs["rnd"][:, :, ::-1].copy()
    assert np.abs(session.run(inputs) - first).max() > 1e-4  # the noise reaches the output


def test_model_without_pitch_exports_four_inputs(tmp_path):
    model = write_voice_model(tmp_path / "nof0.pth", tiny_synth_config("v1", 40000, use_f0=False))
    synth = build_synthesizer(load_voice_model(model))
    session = OnnxSynthesizer.load(export_onnx(synth, tmp_path / "nof0.onnx"), threads=1)
    assert session.input_names == INPUT_NAMES_NO_F0
    inputs = example_inputs(synth, 64, seed=2)
    audio = session.run({k: v.numpy() for k, v in inputs.items()})
    assert snr_db(torch_reference(synth, inputs), audio) >= PARITY_SNR_DB


def test_inter_channels_that_do_not_divide_the_hop(tmp_path):
    """RVC's real shapes (inter 192, hop 400): the NSF noise's repeat count must be a graph constant."""
    from dataclasses import replace

    config = replace(tiny_synth_config("v2", 40000, use_f0=True), inter_channels=24)
    synth = build_synthesizer(load_voice_model(write_voice_model(tmp_path / "odd.pth", config)))
    session = OnnxSynthesizer.load(export_onnx(synth, tmp_path / "odd.onnx"), threads=1)
    inputs = example_inputs(synth, 91, seed=4)
    audio = session.run({k: v.numpy() for k, v in inputs.items()})
    assert snr_db(torch_reference(synth, inputs), audio) >= PARITY_SNR_DB


def test_a_file_that_is_not_a_synthesizer_is_one_error(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    with pytest.raises(OnnxError, match="cannot load"):
        OnnxSynthesizer.load(junk)


def test_engine_onnx_converts_like_torch(voice_kit, tmp_path, monkeypatch):
    from infer.audio import load_audio

    monkeypatch.setenv("TIMBRE_ONNX_CACHE", str(tmp_path / "cache"))
    audio = load_audio(VOICES_DIR / "us2" / "speech" / "001.flac", 16000)[: 16000 * 2]
    voice = load_voice(voice_kit["model"])
    params = ConvertParams(f0_method="pm", seed=3, noise_scale=0.0)  # no prior noise: same path
    results = {}
    for engine in ("torch", "onnx"):
        resources = Resources(pretrained_dir=voice_kit["pretrained"], precision="fp32", engine=engine)
        results[engine] = Converter(voice, resources).convert(audio, params).audio
    assert results["onnx"].shape == results["torch"].shape
    assert np.abs(results["torch"]).max() > 1e-3
    # The NSF noise differs (the graph takes it from rnd, torch draws its own): about 20-30 dB apart.
    assert snr_db(results["torch"], results["onnx"]) > 15
    assert list((tmp_path / "cache").glob("*.onnx"))  # exported once, into the cache


def test_the_live_student_is_not_a_file_conversion_engine():
    with pytest.raises(ValueError, match="engine must be one of"):
        Resources(engine="student")


def test_cli_export_onnx_and_convert_with_the_onnx_engine(voice_kit, tmp_path):
    out = tmp_path / "voice.onnx"
    base = [sys.executable, "-m", "infer"]
    done = subprocess.run(
        [*base, "export-onnx", str(voice_kit["model"]), "--output", str(out)],
        cwd=REPO_DIR, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.is_file() and done.stdout.strip() == str(out)
    wav = tmp_path / "out.wav"
    src = VOICES_DIR / "us2" / "speech" / "001.flac"
    done = subprocess.run(
        [*base, "convert", "--model", str(voice_kit["model"]),
         "--pretrained-dir", str(voice_kit["pretrained"]), "--f0-method", "pm", "--engine", "onnx",
         str(src), "--output", str(wav)],
        cwd=REPO_DIR, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "TIMBRE_ONNX_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert wav.stat().st_size > 1000
