"""Choosing the conversion arithmetic: ``auto`` / ``fp32`` / ``bf16``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from infer import precision as precision_mod
from infer.audio import load_audio
from infer.pipeline import ConvertParams, Resources, convert, load_voice
from infer.precision import cpu_flags, resolve_precision
from tests.fakes import hubert_config, tiny_synth_config, write_hubert_checkpoint, write_voice_model
from tests.helpers import REPO_DIR, VOICES_DIR

CPUINFO_BF16 = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni
processor\t: 1
flags\t\t: fpu vme sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni
"""
CPUINFO_PLAIN = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO_BF16)
    assert {"avx512_bf16", "avx512f", "avx2"} <= cpu_flags(info)
    info.write_text(CPUINFO_PLAIN)
    assert "avx512_bf16" not in cpu_flags(info) and "fma" in cpu_flags(info)
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(("native", "device", "expected"), [
    (True, "cpu", "bf16"),
    (False, "cpu", "fp32"),
    (True, "cuda", "fp32"),  # CUDA keeps RVC's choice: fp32, or fp16 weights with use_half
])  # fmt: skip
def test_auto_picks_bf16_only_on_cpus_with_native_bf16(
    monkeypatch: pytest.MonkeyPatch, native: bool, device: str, expected: str
) -> None:
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", device, torch.float32) == expected
    assert resolve_precision("fp32", device, torch.float32) == "fp32"
    assert resolve_precision("bf16", device, torch.float32) == (
        "bf16" if native or device != "cpu" else "fp32"
    )


AVX2_ONLY = frozenset({"fpu", "sse2", "avx", "avx2", "fma"})
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_bf16"}
AMX = AVX2_ONLY | {"amx_tile", "amx_bf16"}


@pytest.mark.parametrize(("flags", "auto", "explicit"), [
    (AVX2_ONLY, "fp32", "fp32"),
    (AVX512_BF16, "bf16", "bf16"),
    (AMX, "bf16", "bf16"),
])  # fmt: skip
def test_explicit_bf16_never_takes_the_emulated_path(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    flags: frozenset[str],
    auto: str,
    explicit: str,
) -> None:
    monkeypatch.setattr(precision_mod.platform, "machine", lambda: "x86_64")
    with caplog.at_level("WARNING", logger="infer.precision"):
        assert resolve_precision("auto", "cpu", torch.float32, flags=flags) == auto
        assert not caplog.records
        assert resolve_precision("bf16", "cpu", torch.float32, flags=flags) == explicit
    refused = explicit == "fp32"
    assert bool(caplog.records) == refused
    if refused:
        (record,) = caplog.records
        assert "no native bfloat16" in record.getMessage() and "fp32 instead" in record.getMessage()
    assert resolve_precision("bf16", "cuda", torch.float32, flags=flags) == "bf16"


def test_half_weights_and_bad_names_are_refused_or_reported() -> None:
    assert resolve_precision("auto", "cuda", torch.float16) == "fp16"
    with pytest.raises(ValueError, match="bf16 cannot be combined with fp16 weights"):
        resolve_precision("bf16", "cuda", torch.float16)
    with pytest.raises(ValueError, match="bf16 cannot be combined"):
        Resources(device="cuda", use_half=True, precision="bf16")
    with pytest.raises(ValueError, match=r"precision must be one of \('auto', 'fp32', 'bf16'\), got 'fp16'"):
        Resources(precision="fp16")


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("precision")
    pretrained = root / "pretrained"
    write_hubert_checkpoint(pretrained / "hubert_base.pt", hubert_config("v2"))
    return {
        "pretrained": pretrained,
        "model": write_voice_model(root / "v2_f0.pth", tiny_synth_config("v2", 40000, use_f0=True)),
    }


def _snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    n = min(len(reference), len(other))
    noise = reference[:n] - other[:n]
    return float(10 * np.log10(np.sum(reference[:n] ** 2) / max(np.sum(noise**2), 1e-30)))


def test_bf16_conversion_stays_close_to_fp32_and_auto_follows_the_cpu(
    kit: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    speech = load_audio(VOICES_DIR / "us2" / "speech" / "001.flac", 16000)
    voice = load_voice(kit["model"])
    params = ConvertParams(f0_method="pm", seed=3)
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: True)  # runs the bf16 path anywhere
    results = {
        name: convert(
            speech, voice, params, resources=Resources(pretrained_dir=kit["pretrained"], precision=name)
        )
        for name in ("fp32", "bf16")
    }
    assert results["fp32"].precision == "fp32" and results["bf16"].precision == "bf16"
    fp32, bf16 = results["fp32"].audio, results["bf16"].audio
    assert fp32.shape == bf16.shape
    assert not np.array_equal(fp32, bf16)  # the bf16 path really ran in another arithmetic
    assert _snr_db(fp32, bf16) > 25.0

    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda native=native: native)
        auto = convert(speech, voice, params, resources=Resources(pretrained_dir=kit["pretrained"]))
        assert auto.precision == expected
        np.testing.assert_array_equal(auto.audio, results[expected].audio)


def test_a_conversion_asked_for_bf16_on_an_emulating_cpu_runs_fp32_and_says_so(
    kit: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: False)
    speech = load_audio(VOICES_DIR / "us2" / "speech" / "001.flac", 16000)[:32000]
    voice = load_voice(kit["model"])
    params = ConvertParams(f0_method="pm", seed=3)
    results = {
        name: convert(
            speech, voice, params, resources=Resources(pretrained_dir=kit["pretrained"], precision=name)
        )
        for name in ("bf16", "fp32")
    }
    assert results["bf16"].precision == "fp32"
    assert any("no native bfloat16" in w for w in results["bf16"].warnings)
    assert not any("bfloat16" in w for w in results["fp32"].warnings)
    np.testing.assert_array_equal(results["bf16"].audio, results["fp32"].audio)


def test_cli_precision_flag(kit: dict[str, Path], tmp_path: Path) -> None:
    src = VOICES_DIR / "us2" / "speech" / "001.flac"
    base = [sys.executable, "-m", "infer", "convert", "--model", str(kit["model"]), "--f0-method", "pm",
            "--pretrained-dir", str(kit["pretrained"]), "--seed", "1"]  # fmt: skip
    out = tmp_path / "out.wav"
    done = subprocess.run(
        [*base, "--precision", "fp32", str(src), "--output", str(out)],
        cwd=REPO_DIR, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.is_file() and "fp32 arithmetic" in done.stderr
    bad = subprocess.run(
        [*base, "--half", "--precision", "bf16", str(src), "--output", str(tmp_path / "x.wav")],
        cwd=REPO_DIR, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert bad.returncode != 0
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert lines == ["error: bf16 cannot be combined with fp16 weights (use_half); choose one"], bad.stderr
