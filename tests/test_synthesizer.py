"""Synthesizer: golden numerics against the RVC reference, config handling, training pass."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from infer.models import build_synthesizer, load_voice_model
from infer.nn import ConfigError, RelativeMultiHeadAttention, SineGenerator, sequence_mask, slice_segments
from infer.rvc import CONFIG_FIELDS as RVC_CONFIG_FIELDS
from infer.synthesizer import SynthConfig, Synthesizer
from tests.helpers import SYNTH_GOLDEN_DIR, synth_golden

ATOL = 1e-4
GOLDEN_PATHS = sorted(p for p in SYNTH_GOLDEN_DIR.glob("*.pth") if p.with_suffix(".npz").is_file())


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest single-threaded; extra OpenMP threads only contend on shared CPUs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(*, use_f0: bool = True, content_dim: int = 768) -> SynthConfig:
    """A small config with RVC's structure (two stages, hop 16)."""
    return SynthConfig(
        spec_channels=33,
        segment_size=8,
        inter_channels=8,
        hidden_channels=16,
        filter_channels=32,
        n_heads=2,
        n_layers=2,
        kernel_size=3,
        p_dropout=0.0,
        resblock="1",
        resblock_kernel_sizes=(3, 5),
        resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)),
        upsample_rates=(4, 4),
        upsample_initial_channel=16,
        upsample_kernel_sizes=(8, 8),
        spk_embed_dim=3,
        gin_channels=8,
        sample_rate=16000,
        content_dim=content_dim,
        use_f0=use_f0,
    )


def _tensors(npz: np.lib.npyio.NpzFile) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(npz[k]) for k in npz.files}


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual.float() - expected.float()).abs().max().item()
    assert err <= ATOL, f"{what}: max abs error {err:.3g} > {ATOL}"


def _assert_audio_matches(audio: torch.Tensor, ref: dict[str, torch.Tensor]) -> None:
    if "ref_audio" in ref:
        _close(audio, ref["ref_audio"], "audio")
        return
    assert audio.shape == ref["ref_audio_classic_fmod"].shape
    errors = {
        variant: (audio - ref[f"ref_audio_{variant}"]).abs().max().item()
        for variant in ("classic_fmod", "head_interp")
    }
    assert min(errors.values()) <= ATOL, f"audio matches neither SineGen variant: {errors}"


def test_golden_fixtures_present() -> None:
    assert len(GOLDEN_PATHS) >= 1, f"no *.pth + *.npz goldens in {SYNTH_GOLDEN_DIR}"


@pytest.mark.parametrize("path", GOLDEN_PATHS, ids=[p.stem for p in GOLDEN_PATHS])
def test_synth_golden(path: Path) -> None:
    ref = _tensors(np.load(path.with_suffix(".npz")))
    model = load_voice_model(path)
    synth = build_synthesizer(model, fold_weight_norm=False)
    use_f0 = model.config.use_f0
    pitch = ref["pitch"] if use_f0 else None
    pitchf = ref["pitchf"] if use_f0 else None
    sine_noise = ref["noise_sine"] if use_f0 else None

    with torch.no_grad():
        g = synth.speaker_embedding(ref["sid"])
        m_p, logs_p, x_mask = synth.prior(ref["phone"], ref["phone_lengths"], pitch, g)
        z_p = synth.sample_prior(m_p, logs_p, x_mask, noise=ref["noise_zp"])
        z = synth.flow_reverse(z_p, x_mask, g)
        audio = synth.decode(z * x_mask, pitchf, g, sine_noise=sine_noise)
    for name, value in [("m_p", m_p), ("logs_p", logs_p), ("x_mask", x_mask), ("z_p", z_p), ("z", z)]:
        _close(value, ref[f"int_{name}"], name)
    _assert_audio_matches(audio, ref)
    assert audio.shape[-1] == ref["phone"].shape[1] * model.config.hop_length

    composed = synth.infer(
        ref["phone"],
        ref["phone_lengths"],
        pitch,
        pitchf,
        ref["sid"],
        noise=ref["noise_zp"],
        sine_noise=sine_noise,
    )
    assert torch.equal(composed, audio)

    if use_f0:
        sine, uv = synth.dec.m_source.l_sin_gen(pitchf, model.config.hop_length, noise=sine_noise)
        harmonic = synth.dec.source(pitchf, noise=sine_noise).transpose(1, 2)
        for name, value in [("sine_waves", sine), ("har_source", harmonic)]:
            assert value.shape == ref[f"int_{name}_classic_fmod"].shape
            errors = {
                variant: (value - ref[f"int_{name}_{variant}"]).abs().max().item()
                for variant in ("classic_fmod", "head_interp")
            }
            assert min(errors.values()) <= ATOL, f"{name} matches neither SineGen variant: {errors}"
        assert torch.equal(uv[0, :, 0], (pitchf[0] > 0).float().repeat_interleave(model.config.hop_length))


@pytest.mark.parametrize("path", GOLDEN_PATHS, ids=[p.stem for p in GOLDEN_PATHS])
def test_synth_golden_folded_weight_norm(path: Path) -> None:
    ref = _tensors(np.load(path.with_suffix(".npz")))
    model = load_voice_model(path)
    synth = build_synthesizer(model, fold_weight_norm=True)
    assert synth.is_weight_norm_folded
    keys = list(synth.state_dict())
    assert not any(k.endswith(("weight_g", "weight_v")) for k in keys)
    assert "dec.ups.0.weight" in keys
    use_f0 = model.config.use_f0
    audio = synth.infer(
        ref["phone"],
        ref["phone_lengths"],
        ref["pitch"] if use_f0 else None,
        ref["pitchf"] if use_f0 else None,
        ref["sid"],
        noise=ref["noise_zp"],
        sine_noise=ref["noise_sine"] if use_f0 else None,
    )
    _assert_audio_matches(audio, ref)


def test_bfloat16_build_runs_close_to_golden() -> None:
    path = synth_golden("v2", use_f0=True, sample_rate=40000)
    ref = _tensors(np.load(path.with_suffix(".npz")))
    synth = build_synthesizer(load_voice_model(path), dtype=torch.bfloat16)
    assert {p.dtype for p in synth.parameters()} == {torch.bfloat16}
    audio = synth.infer(
        ref["phone"],
        ref["phone_lengths"],
        ref["pitch"],
        ref["pitchf"],
        ref["sid"],
        noise=ref["noise_zp"],
        sine_noise=ref["noise_sine"],
    )
    expected = ref["ref_audio_classic_fmod"]
    assert audio.dtype == torch.float32
    relative_rms = ((audio - expected).pow(2).mean() / expected.pow(2).mean()).sqrt()
    assert relative_rms < 0.05


def test_fold_then_unfold_keeps_output() -> None:
    torch.manual_seed(0)
    synth = Synthesizer(tiny_config(), use_posterior_encoder=False).eval()
    frames = 12
    args = _tiny_inputs(synth.config, frames)
    noise = torch.randn(1, synth.config.inter_channels, frames)
    sine_noise = torch.randn(1, frames * synth.config.hop_length)
    before = synth.infer(*args, noise=noise, sine_noise=sine_noise)
    synth.fold_weight_norm()
    folded = synth.infer(*args, noise=noise, sine_noise=sine_noise)
    assert torch.allclose(before, folded, atol=1e-5)
    from infer.nn import unfold_weight_norm

    assert unfold_weight_norm(synth) > 0
    assert "dec.ups.0.weight_g" in synth.state_dict()
    unfolded = synth.infer(*args, noise=noise, sine_noise=sine_noise)
    assert torch.allclose(before, unfolded, atol=1e-5)


def _tiny_inputs(config: SynthConfig, frames: int, batch: int = 1) -> tuple:
    phone = torch.randn(batch, frames, config.content_dim)
    lengths = torch.full((batch,), frames, dtype=torch.long)
    pitch = torch.randint(1, 256, (batch, frames)) if config.use_f0 else None
    pitchf = (torch.rand(batch, frames) * 300 + 80) if config.use_f0 else None
    sid = torch.zeros(batch, dtype=torch.long)
    return phone, lengths, pitch, pitchf, sid


def test_infer_is_deterministic_with_generator() -> None:
    torch.manual_seed(1)
    synth = Synthesizer(tiny_config(), use_posterior_encoder=False).eval()
    args = _tiny_inputs(synth.config, 10)
    first = synth.infer(*args, generator=torch.Generator().manual_seed(5))
    second = synth.infer(*args, generator=torch.Generator().manual_seed(5))
    other = synth.infer(*args, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert first.shape == (1, 1, 10 * synth.config.hop_length)
    assert first.abs().max() <= 1.0


@pytest.mark.parametrize("use_f0", [True, False], ids=["f0", "nof0"])
def test_training_forward_shapes_and_backward(use_f0: bool) -> None:
    torch.manual_seed(2)
    config = tiny_config(use_f0=use_f0, content_dim=256)
    synth = Synthesizer(config).train()
    batch, frames = 2, 20
    phone, lengths, pitch, pitchf, sid = _tiny_inputs(config, frames, batch)
    lengths = torch.tensor([frames, 15])
    spec = torch.rand(batch, config.spec_channels, frames)
    out = synth(phone, lengths, pitch, pitchf, spec, lengths, sid, generator=torch.Generator().manual_seed(0))
    audio, ids_slice, x_mask, y_mask, (z, z_p, m_p, logs_p, m_q, logs_q) = out
    assert audio.shape == (batch, 1, config.segment_size * config.hop_length)
    assert ids_slice.dtype == torch.long and ids_slice.shape == (batch,)
    assert bool(((ids_slice >= 0) & (ids_slice <= lengths - config.segment_size)).all())
    assert x_mask.shape == y_mask.shape == (batch, 1, frames)
    assert x_mask[1, 0, 15:].sum() == 0 and x_mask[1, 0, :15].sum() == 15
    for tensor in (z, z_p, m_p, logs_p, m_q, logs_q):
        assert tensor.shape == (batch, config.inter_channels, frames)
    assert z[1, :, 15:].abs().sum() == 0
    loss = audio.pow(2).mean() + (z_p - m_p).pow(2).mean() + logs_q.mean()
    loss.backward()
    grads = [p.grad for p in synth.parameters() if p.grad is not None]
    assert len(grads) > 0.8 * len(list(synth.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert synth.enc_q is not None and synth.enc_q.pre.weight.grad.abs().sum() > 0


def test_flow_forward_inverts_reverse() -> None:
    torch.manual_seed(3)
    synth = Synthesizer(tiny_config())
    for param in synth.flow.parameters():  # post convs start at zero (identity); make it non-trivial
        param.data.normal_(0, 0.2)
    z = torch.randn(1, synth.config.inter_channels, 9)
    mask = torch.ones(1, 1, 9)
    g = synth.speaker_embedding(torch.tensor([1]))
    with torch.no_grad():
        z_p = synth.flow(z, mask, g=g)
        back = synth.flow_reverse(z_p, mask, g)
    assert not torch.allclose(z_p, z, atol=1e-3)
    assert torch.allclose(back, z, atol=1e-5)


def _naive_relative_attention(attn: RelativeMultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """Direct sum over (i, j) of Shaw et al.'s relative attention with a shared window table."""
    batch, channels, length = x.shape
    heads, dim, window = attn.n_heads, attn.k_channels, attn.window_size
    q = attn.conv_q(x).view(batch, heads, dim, length).transpose(2, 3) / math.sqrt(dim)
    k = attn.conv_k(x).view(batch, heads, dim, length).transpose(2, 3)
    v = attn.conv_v(x).view(batch, heads, dim, length).transpose(2, 3)
    scores = q @ k.transpose(-2, -1)
    for i in range(length):
        for j in range(length):
            if abs(j - i) <= window:
                scores[..., i, j] += q[..., i, :] @ attn.emb_rel_k[0, j - i + window]
    p = torch.softmax(scores, dim=-1)
    out = p @ v
    for i in range(length):
        for j in range(length):
            if abs(j - i) <= window:
                out[..., i, :] += p[..., i, j, None] * attn.emb_rel_v[0, j - i + window]
    return attn.conv_o(out.transpose(2, 3).reshape(batch, channels, length))


@pytest.mark.parametrize("length", [1, 5, 11, 30])
def test_relative_attention_matches_direct_sum(length: int) -> None:
    torch.manual_seed(length)
    attn = RelativeMultiHeadAttention(8, 2, window_size=10)
    x = torch.randn(2, 8, length)
    with torch.no_grad():
        fast = attn(x)
        slow = _naive_relative_attention(attn, x)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_sine_generator_phase_is_running_sum_of_f0() -> None:
    sample_rate, hop = 8000, 80
    f0 = torch.tensor([[0.0, 100.0, 100.0, 220.0, 440.0, 0.0, 1000.0]])
    gen = SineGenerator(sample_rate)
    zeros = torch.zeros(1, f0.shape[1] * hop)
    sine, uv = gen(f0, hop, noise=zeros)
    per_sample = f0[0].double().repeat_interleave(hop) / sample_rate
    expected = torch.sin(2 * math.pi * torch.cumsum(per_sample, 0)) * 0.1
    expected = expected * (per_sample > 0)
    assert sine.shape == (1, f0.shape[1] * hop, 1)
    assert torch.allclose(sine[0, :, 0].double(), expected, atol=1e-5)
    assert torch.equal(uv[0, :, 0], (per_sample > 0).float())


def test_sine_generator_noise_amplitudes() -> None:
    f0 = torch.tensor([[0.0, 200.0]])
    ones = torch.ones(1, 2 * 10)
    sine, _ = SineGenerator(16000)(f0, 10, noise=ones)
    assert torch.allclose(sine[0, :10, 0], torch.full((10,), 0.1 / 3))
    voiced = SineGenerator(16000)(f0, 10, noise=torch.zeros(1, 20))[0]
    assert torch.allclose(sine[0, 10:, 0] - voiced[0, 10:, 0], torch.full((10,), 0.003))


def test_masks_and_slices() -> None:
    mask = sequence_mask(torch.tensor([3, 1]), 4)
    assert mask.tolist() == [[True, True, True, False], [True, False, False, False]]
    x = torch.arange(2 * 3 * 10).view(2, 3, 10)
    cut = slice_segments(x, torch.tensor([2, 5]), 4)
    assert torch.equal(cut[0], x[0, :, 2:6]) and torch.equal(cut[1], x[1, :, 5:9])
    flat = slice_segments(x[:, 0], torch.tensor([0, 6]), 4)
    assert torch.equal(flat, torch.stack([x[0, 0, 0:4], x[1, 0, 6:10]]))


# ------------------------------------------------------------------ config


def test_config_rvc_round_trip_keeps_types() -> None:
    config = SynthConfig.preset("v2", 48000, use_f0=True)
    rvc = config.to_rvc_config()
    assert len(rvc) == len(RVC_CONFIG_FIELDS) == 18
    assert rvc == [1025, 32, 192, 192, 768, 2, 6, 3, 0, "1", [3, 7, 11], [[1, 3, 5]] * 3, [12, 10, 2, 2], 512,
                   [24, 20, 4, 4], 109, 256, 48000]  # fmt: skip
    assert type(rvc[8]) is int and type(rvc[10]) is list and type(rvc[11][0]) is list
    again = SynthConfig.from_rvc_config(rvc, version="v2", use_f0=True)
    assert again == config
    assert config.hop_length == 480
    assert SynthConfig.from_rvc_config([*rvc[:-1], "48k"], version="v2", use_f0=True) == config


def test_config_dict_round_trip_and_validation() -> None:
    config = tiny_config()
    data = config.to_dict()
    assert data["resblock_dilation_sizes"] == [[1, 3, 5], [1, 3, 5]]
    assert SynthConfig.from_dict(data) == config
    with pytest.raises(ConfigError, match="unknown keys"):
        SynthConfig.from_dict({**data, "n_flows": 4})
    with pytest.raises(ConfigError, match="missing keys"):
        SynthConfig.from_dict({k: v for k, v in data.items() if k != "gin_channels"})
    bad_values = {
        "content_dim": 512,
        "n_heads": 3,
        "p_dropout": 1.5,
        "resblock": "3",
        "upsample_kernel_sizes": [8],
        "inter_channels": 7,
        "use_f0": 1,
        "upsample_rates": [4, 3],
        "spk_embed_dim": 0,
    }
    for key, value in bad_values.items():
        with pytest.raises(ConfigError):
            SynthConfig.from_dict({**data, key: value})
    with pytest.raises(ConfigError, match="no synthesizer preset"):
        SynthConfig.preset("v3", 40000, use_f0=True)


def test_v2_40k_preset_is_v1_40k_decoder() -> None:
    v1 = SynthConfig.preset("v1", 40000, use_f0=True)
    v2 = SynthConfig.preset("v2", 40000, use_f0=True)
    assert v1.to_rvc_config() == v2.to_rvc_config()
    assert (v1.content_dim, v2.content_dim) == (256, 768)


@pytest.mark.parametrize("use_f0", [True, False], ids=["f0", "nof0"])
@pytest.mark.parametrize(("frames", "window"), [((0, 700), 256), ((37, 650), 100), ((300, 301), 512)])
def test_windowed_decode_matches_whole_decode(use_f0: bool, frames: tuple[int, int], window: int) -> None:
    """Decoding a frame range window by window (partial windows widened) gives the same samples."""
    torch.manual_seed(4)
    synth = Synthesizer(tiny_config(use_f0=use_f0), use_posterior_encoder=False).eval()
    total = 700
    hop = synth.config.hop_length
    z = torch.randn(1, synth.config.inter_channels, total)
    pitchf = torch.rand(1, total) * 300 + 80 if use_f0 else None
    g = synth.speaker_embedding(torch.zeros(1, dtype=torch.long))
    noise = torch.randn(1, total * hop, 1)
    with torch.inference_mode():
        whole = synth.decode(z, pitchf, g, sine_noise=noise)
        part = synth.decode(z, pitchf, g, sine_noise=noise, frames=frames, window_frames=window)
    start, stop = frames
    assert part.shape == (1, 1, (stop - start) * hop)
    torch.testing.assert_close(part, whole[..., start * hop : stop * hop], atol=1e-5, rtol=0)


def test_receptive_margin_of_rvc_40k_decoder() -> None:
    with torch.device("meta"):
        synth = Synthesizer(SynthConfig.preset("v2", 40000, True), use_posterior_encoder=False)
    assert synth.dec.receptive_margin_frames == 11
