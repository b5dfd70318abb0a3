"""Streaming synthesizer path (RVC's ``skip_head`` / ``return_length`` / ``return_length2``) vs goldens.

Cases are discovered: every ``<name>_skiphead.npz`` in ``TIMBRE_FIXTURES_DIR``'s synth goldens
with its ``<name>.pth`` and the ``<name>.npz`` holding the inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from infer.models import build_synthesizer, load_voice_model
from infer.synthesizer import FLOW_CONTEXT_FRAMES
from tests.helpers import SYNTH_GOLDEN_DIR

ATOL = 1e-4
CASES = sorted(
    p
    for p in SYNTH_GOLDEN_DIR.glob("*_skiphead.npz")
    if (SYNTH_GOLDEN_DIR / f"{p.stem.removesuffix('_skiphead')}.pth").is_file()
    and (SYNTH_GOLDEN_DIR / f"{p.stem.removesuffix('_skiphead')}.npz").is_file()
)


def _case(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Path]:
    stem = path.stem.removesuffix("_skiphead")
    inputs = {k: torch.from_numpy(v) for k, v in np.load(SYNTH_GOLDEN_DIR / f"{stem}.npz").items()}
    ref = {k: torch.from_numpy(v) for k, v in np.load(path).items()}
    return inputs, ref, SYNTH_GOLDEN_DIR / f"{stem}.pth"


def _window(ref: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    return int(ref["skip_head"][0]), int(ref["return_length"][0]), int(ref["return_length2"][0])


def _run(path: Path, **overrides: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    inputs, ref, pth = _case(path)
    model = load_voice_model(pth)
    synth = build_synthesizer(model, fold_weight_norm=False)
    args = {**inputs, **overrides}
    audio = synth.infer_window(
        args["phone"],
        args["phone_lengths"],
        args["pitch"],
        args["pitchf"],
        args["sid"],
        _window(ref),
        noise=ref["noise_zp"],
        sine_noise=ref["noise_sine"],
    )
    return audio, ref, model.config.hop_length


def _audio_error(audio: torch.Tensor, ref: dict[str, torch.Tensor]) -> float:
    return min((audio - ref[f"ref_audio_{v}"]).abs().max().item() for v in ("classic_fmod", "head_interp"))


def test_skiphead_cases_present() -> None:
    assert CASES, f"no *_skiphead.npz with its .pth and .npz in {SYNTH_GOLDEN_DIR}"


@pytest.mark.parametrize("path", CASES, ids=[f"skiphead-{p.stem.removesuffix('_skiphead')}" for p in CASES])
def test_skiphead_golden(path: Path) -> None:
    audio, ref, hop = _run(path)
    _, length, length2 = _window(ref)
    assert audio.shape == (1, 1, length2 * hop)
    assert _audio_error(audio, ref) <= ATOL

    inputs, _, pth = _case(path)
    synth = build_synthesizer(load_voice_model(pth), fold_weight_norm=False)
    skip_head = _window(ref)[0]
    flow_head = max(skip_head - FLOW_CONTEXT_FRAMES, 0)
    with torch.no_grad():
        g = synth.speaker_embedding(inputs["sid"])
        m_p, logs_p, x_mask = synth.prior(
            inputs["phone"], inputs["phone_lengths"], inputs["pitch"], g, skip_head=flow_head
        )
        z_p = synth.sample_prior(m_p, logs_p, x_mask, noise=ref["noise_zp"])
        z = synth.flow_reverse(z_p, x_mask, g)
    dec_head = skip_head - flow_head
    assert (m_p - ref["int_m_p"]).abs().max().item() <= ATOL
    assert (z[:, :, dec_head : dec_head + length] - ref["int_z_sliced"]).abs().max().item() <= ATOL


@pytest.mark.parametrize("path", CASES, ids=[f"skiphead-{p.stem.removesuffix('_skiphead')}" for p in CASES])
def test_skiphead_golden_catches_a_wrong_window(path: Path) -> None:
    """Feeding the pitch shifted by one frame moves the audio far past the tolerance: the test can fail."""
    inputs, _, _ = _case(path)
    shifted = torch.roll(inputs["pitchf"], 1, dims=1)
    audio, ref, _ = _run(path, pitchf=shifted)
    assert _audio_error(audio, ref) > 100 * ATOL
