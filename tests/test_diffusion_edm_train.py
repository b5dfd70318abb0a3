"""EDM teacher, consistency and ACDD trainers: a few steps each, exported heads, exact resume."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from infer.diffusion.denoiser import DenoiserConfig
from infer.diffusion.edm import Conditions, EDMConfig, edm_denoise, guided_denoise
from infer.diffusion.head import DiffusionHeadError
from infer.diffusion.schedulers import NoiseScheduleConfig
from infer.nn.discriminators import MultiPeriodDiscriminator
from infer.synthesizer import Synthesizer
from tests.fakes import tiny_synth_config
from train.diffusion import DiffusionTrainConfig, LatentDataset, LatentItem
from train.diffusion_edm import EDMTrainer, edm_loss_weight, sample_sigmas
from train.distill_acdd import AcddConfig, AcddTrainer, score_distillation_target
from train.distill_cm import ConsistencyDistillConfig, ConsistencyTrainer
from train.trainer import TrainerConfig
from train.vits import VitsTrainConfig

SYNTH = tiny_synth_config()
C, CX, GIN = SYNTH.inter_channels, SYNTH.content_dim, SYNTH.gin_channels
DENOISER = DenoiserConfig(
    latent_channels=C, content_dim=CX, gin_channels=GIN, residual_channels=16, n_layers=2
)


def _dataset(count: int = 4, frames: int = 20) -> LatentDataset:
    gen = torch.Generator().manual_seed(0)
    items = [
        LatentItem(
            z0=torch.randn(C, frames, generator=gen) * 0.5,
            content=torch.randn(frames, CX, generator=gen).half(),
            f0_hz=150 + 50 * torch.rand(frames, generator=gen),
            speaker=torch.randn(GIN, 1, generator=gen),
            name=f"u{i}",
        )
        for i in range(count)
    ]
    return LatentDataset(items)


def _teacher(tmp_path: Path, steps: int = 3) -> EDMTrainer:
    trainer = EDMTrainer(
        TrainerConfig(run_dir=tmp_path / "edm", epochs=10, max_steps=steps),
        _dataset(),
        denoiser_config=DENOISER,
        train_config=DiffusionTrainConfig(batch_size=2, segment_frames=16),
    )
    trainer.fit()
    return trainer


def test_edm_teacher_trains_and_exports_an_edm_head(tmp_path: Path) -> None:
    trainer = _teacher(tmp_path)
    head = trainer.export_head()
    assert head.kind == "teacher" and head.parameterisation == "edm" and head.schedule_config is None
    assert trainer.step == 3 and head.metadata["trainer"] == "diffusion-edm"
    assert edm_loss_weight(torch.tensor([1.0]), 1.0).item() == pytest.approx(2.0)
    batch = next(iter(trainer.batches(1)))
    loss = trainer.evaluate(batch)
    assert 0 < loss < 1e3 and loss == trainer.evaluate(batch)


def test_consistency_trainer_resumes_exactly_and_refuses_an_eps_teacher(tmp_path: Path) -> None:
    teacher = _teacher(tmp_path).export_head()
    config = ConsistencyDistillConfig(batch_size=2, segment_frames=16, num_scales=5)

    def make(steps: int) -> ConsistencyTrainer:
        return ConsistencyTrainer(
            TrainerConfig(run_dir=tmp_path / "cm", epochs=10, max_steps=steps),
            _dataset(),
            teacher,
            distill_config=config,
        )

    first = make(2)
    first.fit()
    second = make(4)
    assert second.resume() and second.step == 2
    second.fit()
    straight = ConsistencyTrainer(
        TrainerConfig(run_dir=tmp_path / "cm_straight", epochs=10, max_steps=4),
        _dataset(),
        teacher,
        distill_config=config,
    )
    straight.fit()
    for a, b in zip(second.target.parameters(), straight.target.parameters(), strict=True):
        assert torch.equal(a, b)
    head = second.export_head()
    assert head.kind == "cm" and head.metadata["steps"] == 4
    eps_teacher = replace(teacher, parameterisation="eps", edm=None, schedule_config=NoiseScheduleConfig())
    with pytest.raises(DiffusionHeadError, match="EDM teacher"):
        ConsistencyTrainer(TrainerConfig(run_dir=tmp_path / "x"), _dataset(), eps_teacher)


def test_acdd_trainer_steps_and_its_distillation_target_reduces_without_guidance(tmp_path: Path) -> None:
    teacher_head = _teacher(tmp_path).export_head()
    synth = Synthesizer(SYNTH).eval()
    disc = MultiPeriodDiscriminator(
        VitsTrainConfig.tiny(sample_rate=40000, version="v2").discriminator_config()
    )
    trainer = AcddTrainer(
        TrainerConfig(run_dir=tmp_path / "acdd", epochs=10, max_steps=2),
        _dataset(),
        teacher_head,
        synthesizer=synth,
        discriminator=disc,
        acdd_config=AcddConfig(batch_size=2, segment_frames=8),
    )
    rows: list[dict[str, float]] = []
    trainer.on_metrics = lambda step, row: rows.append(row)
    trainer.fit()
    assert trainer.step == 2 and len(rows) == 2
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in rows)
    assert rows[0]["loss_d"] > 0 and rows[0]["loss_dist"] > 0
    head = trainer.export_head()
    assert head.kind == "acdd" and head.metadata["strength_range"] == [0.3, 0.6]
    # w = 0: the score-distillation target is the conditional teacher's denoising of the re-noised z.
    gen = torch.Generator().manual_seed(1)
    cond = Conditions(
        torch.randn(2, 8, CX, generator=gen),
        torch.full((2, 8), 150.0),
        torch.randn(2, GIN, 1, generator=gen),
        torch.ones(2, 1, 8),
    )
    z = torch.randn(2, C, 8, generator=gen)
    teacher = teacher_head.build_denoiser()
    torch.manual_seed(7)
    target = score_distillation_target(teacher, z, cond, teacher_head, 0.0)
    torch.manual_seed(7)
    sigma = sample_sigmas(2, EDMConfig())
    noisy = z + sigma.float().view(-1, 1, 1) * torch.randn(z.shape)
    assert torch.allclose(target, edm_denoise(teacher, noisy, sigma, cond, EDMConfig()), atol=1e-6)
    assert torch.allclose(target, guided_denoise(teacher, noisy, sigma, cond, EDMConfig(), 0.0), atol=1e-6)
