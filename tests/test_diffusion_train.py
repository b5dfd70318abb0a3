"""Teacher LDM and consistency-distillation trainers on a tiny synthetic latent set, then refinement."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from infer.diffusion.denoiser import DenoiserConfig
from infer.diffusion.head import LCM_FILENAME, TEACHER_FILENAME, DiffusionHeadError, load_head
from infer.diffusion.refine import RefineParams, refine
from infer.errors import Cancelled
from infer.nn.configs import ConfigError
from infer.synthesizer import SynthConfig, Synthesizer
from train.diffusion import (
    DiffusionTrainConfig,
    DiffusionTrainer,
    LatentDataError,
    LatentDataset,
    LatentItem,
    UtteranceFeatures,
    build_latent_dataset,
    synthesizer_encoder,
)
from train.distill import DistillConfig, DistillTrainer, pseudo_huber
from train.trainer import ResumeError, TrainerConfig

C, CX, GIN, FRAMES, UTTERANCES = 16, 32, 8, 40, 8
DENOISER = DenoiserConfig(
    latent_channels=C, content_dim=CX, gin_channels=GIN, residual_channels=32, n_layers=4, dilation_cycle=2
)
TRAIN = DiffusionTrainConfig(batch_size=8, segment_frames=32, learning_rate=1e-2, lr_decay=1.0, ema_decay=0.9)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions are fastest single-threaded (and the CI machine is shared)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _dataset() -> LatentDataset:
    """z0 is a fixed nonlinear function of content and pitch (learnable), with std about 3."""
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(CX, C, generator=gen) / math.sqrt(CX)
    speaker = torch.randn(GIN, 1, generator=gen)
    items = []
    for i in range(UTTERANCES):
        content = torch.randn(FRAMES, CX, generator=gen)
        f0 = 150 + 100 * torch.sin(torch.linspace(0, 3, FRAMES) + i)
        f0[: 4 + i % 3] = 0.0
        z0 = 3.0 * torch.tanh(content @ mix).T + torch.log2(f0.clamp(min=1) / 440)[None, :]
        items.append(LatentItem(z0=z0, content=content.half(), f0_hz=f0, speaker=speaker, name=f"u{i}"))
    return LatentDataset(items)


def _teacher(run_dir: Path, epochs: int, **kwargs) -> DiffusionTrainer:
    return DiffusionTrainer(
        TrainerConfig(run_dir=run_dir, epochs=epochs, save_every_epochs=max(1, epochs)),
        _dataset(),
        denoiser_config=DENOISER,
        train_config=kwargs.pop("train_config", TRAIN),
        **kwargs,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("diffusion")
    trainer = _teacher(root / "teacher", epochs=100, head_path=root / "model" / TEACHER_FILENAME)
    probe = _dataset().batch(list(range(UTTERANCES)), 40, torch.Generator().manual_seed(0))
    before = trainer.evaluate(probe)
    trainer.fit()
    after = trainer.evaluate(probe)
    return {"root": root, "trainer": trainer, "before": before, "after": after}


def test_latent_dataset_scale_batches_and_file(tmp_path: Path) -> None:
    data = _dataset()
    every = torch.cat([item.z0.flatten() for item in data.items]).double()
    assert data.latent_scale() == pytest.approx(1.0 / every.std(unbiased=False).item(), rel=1e-9)
    batch = data.batch([0, 3], 32, torch.Generator().manual_seed(1))
    assert (
        batch.z0.shape == (2, C, 32)
        and batch.content.shape == (2, 32, CX)
        and batch.content.dtype == torch.float32
    )
    assert batch.mask.sum() == 64 and batch.speaker.shape == (2, GIN, 1)
    # The window is a contiguous slice of the utterance.
    z = data[0].z0
    starts = [s for s in range(FRAMES - 32 + 1) if torch.equal(z[:, s : s + 32], batch.z0[0])]
    assert len(starts) == 1 and torch.equal(batch.f0_hz[0], data[0].f0_hz[starts[0] : starts[0] + 32])
    long_window = data.batch([1], 64, torch.Generator().manual_seed(1))
    assert long_window.z0.shape[-1] == FRAMES and torch.equal(long_window.z0[0], data[1].z0)
    data.save(tmp_path / "latents.pt")
    again = LatentDataset.load(tmp_path / "latents.pt")
    assert len(again) == UTTERANCES and torch.equal(again[5].z0, data[5].z0) and again[5].name == "u5"
    with pytest.raises(LatentDataError, match="do not match"):
        bad = LatentItem(
            z0=torch.zeros(C, 5),
            content=torch.zeros(6, CX),
            f0_hz=torch.zeros(5),
            speaker=torch.zeros(GIN, 1),
        )
        LatentDataset([data[0], bad])


def test_build_latent_dataset_with_the_synthesizer_posterior() -> None:
    torch.manual_seed(0)
    config = SynthConfig(
        spec_channels=17, segment_size=8, inter_channels=C, hidden_channels=16, filter_channels=32, n_heads=2,
        n_layers=1, kernel_size=3, p_dropout=0.0, resblock="1", resblock_kernel_sizes=(3,),
        resblock_dilation_sizes=((1, 3, 5),), upsample_rates=(4, 4), upsample_initial_channel=16,
        upsample_kernel_sizes=(8, 8), spk_embed_dim=2, gin_channels=GIN, sample_rate=16000, content_dim=256,
        use_f0=True,
    )  # fmt: skip
    synth = Synthesizer(config).eval()
    encode, speaker = synthesizer_encoder(synth, sid=1)
    assert torch.equal(speaker, synth.emb_g.weight[1][:, None])
    gen = torch.Generator().manual_seed(2)
    spec_a, spec_b = torch.rand(17, 30, generator=gen), torch.rand(17, 12, generator=gen)
    utts = [
        UtteranceFeatures("a", spec_a, torch.randn(31, 256, generator=gen), torch.full((29,), 200.0)),
        UtteranceFeatures("b", spec_b, torch.randn(12, 256, generator=gen), torch.zeros(12)),
    ]
    fractions: list[float] = []
    data = build_latent_dataset(utts, encode, speaker, total=2, progress=lambda f, _m: fractions.append(f))
    assert [item.frames for item in data.items] == [29, 12] and fractions == [0.5, 1.0]
    with torch.no_grad():
        _z, m_q, _logs, _mask = synth.encode_posterior(
            utts[0].spec[None, :, :29], torch.tensor([29]), speaker[None]
        )
    assert torch.allclose(data[0].z0, m_q[0], atol=1e-6)
    assert data.content_dim == 256 and data.gin_channels == GIN and data.latent_channels == C
    bad = [UtteranceFeatures("c", torch.rand(17, 30), torch.randn(20, 256), torch.zeros(30))]
    with pytest.raises(LatentDataError, match="same clip"):
        build_latent_dataset(bad, encode, speaker)


def test_teacher_loss_falls_and_the_head_is_exported(trained: dict) -> None:
    before, after = trained["before"], trained["after"]
    assert 0.6 < before < 1.4  # an untrained eps-prediction (zero output) scores about E[eps^2] = 1
    assert after < 0.6 * before, (before, after)  # measured: 0.98 -> 0.43
    trainer = trained["trainer"]
    assert trainer.step == 100
    head = load_head(trained["root"] / "model" / TEACHER_FILENAME)
    assert head.kind == "teacher" and head.metadata["steps"] == 100
    assert head.latent_scale == pytest.approx(_dataset().latent_scale())
    for key, value in trainer.ema.state_dict().items():
        assert torch.equal(head.state_dict[key], value)


def test_teacher_resume_after_cancel_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    config = DiffusionTrainConfig(batch_size=4, segment_frames=16, learning_rate=1e-3, ema_decay=0.9)
    reference = _teacher(tmp_path / "ref", epochs=3, train_config=config)
    reference.fit()
    calls = {"n": 0}

    def stop_after_3() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    first = _teacher(tmp_path / "run", epochs=3, train_config=config, should_stop=stop_after_3)
    with pytest.raises(Cancelled):
        first.fit()
    second = _teacher(tmp_path / "run", epochs=3, train_config=config)
    assert second.resume() and second.step == 3
    second.fit()
    assert second.step == reference.step == 6
    for name in ("denoiser", "ema"):
        ref_state = reference.modules()[name].state_dict()
        for key, value in second.modules()[name].state_dict().items():
            assert torch.equal(value, ref_state[key]), (name, key)


def test_distillation_writes_an_lcm_head_and_every_sampler_refines(trained: dict) -> None:
    root = trained["root"]
    teacher = load_head(root / "model" / TEACHER_FILENAME)
    config = DistillConfig(batch_size=8, segment_frames=32, learning_rate=1e-3, guidance_max=2.0)
    distiller = DistillTrainer(
        TrainerConfig(run_dir=root / "distill", epochs=4),
        _dataset(),
        teacher,
        distill_config=config,
        head_path=root / "model" / LCM_FILENAME,
    )
    # The zero-initialised w-embedding makes the student start as the teacher.
    probe = _dataset().batch([0, 1], 32, torch.Generator().manual_seed(3))
    z = torch.randn(2, C, 32)
    t = torch.tensor([100, 700])
    conds = (probe.content, probe.f0_hz, probe.speaker, probe.mask)
    with torch.no_grad():
        expected = distiller.teacher(z, t, *conds)
        got = distiller.student(z, t, *conds, w=torch.tensor([0.5, 1.7]))
    assert torch.allclose(got, expected, atol=1e-5)
    losses: list[float] = []
    distiller.on_metrics = lambda _step, row: losses.append(row["loss"])
    distiller.fit()
    assert len(losses) == 4 and all(math.isfinite(v) and v > 0 for v in losses)
    head = load_head(root / "model" / LCM_FILENAME)
    assert head.kind == "lcm" and head.denoiser_config.use_w_embedding
    assert head.consistency is not None and head.consistency.guidance_max == 2.0
    assert head.latent_scale == teacher.latent_scale and head.metadata["steps"] == 4
    w_weight = head.state_dict["w_embed.2.weight"]
    assert w_weight.abs().max() > 0  # the w-embedding learned something
    for key, value in distiller.target.state_dict().items():
        assert torch.equal(head.state_dict[key], value)

    # A different teacher cannot resume this run.
    other = dataclasses.replace(teacher, latent_scale=teacher.latent_scale * 2)
    with pytest.raises(ResumeError, match="another teacher"):
        DistillTrainer(
            TrainerConfig(root / "distill", epochs=4), _dataset(), other, distill_config=config
        ).resume()

    batch = _dataset().batch([2, 5], 40, torch.Generator().manual_seed(4))
    batch.mask[1, :, 30:] = 0.0
    inputs = {"x": batch.content, "f0_hz": batch.f0_hz, "e": batch.speaker, "x_mask": batch.mask}
    z_vits = batch.z0 * batch.mask
    cases = [
        (teacher, RefineParams(sampler="ddpm", steps=25, guidance_weight=1.0)),
        (teacher, RefineParams(sampler="ddim", steps=8, guidance_weight=0.0)),
        (teacher, RefineParams(sampler="ddim", steps=4, start="shallow", strength=0.3, guidance_weight=0.5)),
        (head, RefineParams(sampler="lcm", steps=1, guidance_weight=1.0)),
        (head, RefineParams(sampler="lcm", steps=4, guidance_weight=2.0)),
        (head, RefineParams(sampler="lcm", steps=2, start="shallow", strength=0.5)),
    ]
    for which, params in cases:
        out = refine(which, **inputs, params=params, z_init=z_vits)
        assert out.shape == (2, C, 40) and torch.isfinite(out).all(), params
        assert out[1, :, 30:].abs().max() == 0.0 and out[0].std().item() > 0.1, params
    # A shallow start keeps the VITS latent's structure even with this 100-step teacher.
    shallow_params = RefineParams(sampler="ddim", steps=4, start="shallow", strength=0.1)
    shallow = refine(teacher, **inputs, params=shallow_params, z_init=z_vits)
    rmse = ((shallow - z_vits) ** 2 * batch.mask).sum() / (batch.mask.sum() * C)
    assert rmse.sqrt().item() < 0.6 * z_vits[0].std().item()
    with pytest.raises(DiffusionHeadError, match="distill"):
        refine(teacher, **inputs, params=RefineParams(sampler="lcm", steps=2))


def test_pseudo_huber_values() -> None:
    pred = torch.zeros(2, 3, 4)
    target = torch.zeros(2, 3, 4)
    target[0] = 2.0
    mask = torch.ones(2, 1, 4)
    c = 0.00054
    # Item 0: mean square 4 -> sqrt(4 + c^2) - c; item 1: 0.
    assert pseudo_huber(pred, target, mask, c).item() == pytest.approx(
        (math.sqrt(4 + c * c) - c) / 2, rel=1e-6
    )
    mask[0, :, 2:] = 0.0
    target[0, :, 2:] = 100.0  # padding is ignored
    assert pseudo_huber(pred, target, mask, c).item() == pytest.approx(
        (math.sqrt(4 + c * c) - c) / 2, rel=1e-6
    )


def test_training_configs_validate() -> None:
    with pytest.raises(ConfigError, match="unknown keys"):
        DiffusionTrainConfig.from_dict({"batch_size": 4, "epochs": 3})
    with pytest.raises(ConfigError, match="cond_drop_prob"):
        DiffusionTrainConfig(cond_drop_prob=1.0)
    with pytest.raises(ConfigError, match="distance"):
        DistillConfig(distance="lpips")
    with pytest.raises(ConfigError, match="guidance_min <= guidance_max"):
        DistillConfig(guidance_min=2.0, guidance_max=1.0)
    config = DistillConfig.from_dict({"skip_interval": 10, "adam_betas": [0.8, 0.99]})
    assert config.adam_betas == (0.8, 0.99) and DistillConfig.from_dict(config.to_dict()) == config
    assert config.consistency().skip_interval == 10
