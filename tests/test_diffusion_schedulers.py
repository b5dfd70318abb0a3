"""Noise schedule and samplers: the acceptance items of issue 5 as value checks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from infer.diffusion.schedulers import (
    ConsistencyConfig,
    DDIMSampler,
    DDPMSampler,
    LCMSampler,
    NoiseSchedule,
    NoiseScheduleConfig,
    consistency_scalings,
    make_sampler,
)
from infer.nn.configs import ConfigError

SHAPE = (2, 4, 16)


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule(NoiseScheduleConfig())


def _fake_eps(sample: torch.Tensor, t: int) -> torch.Tensor:
    """A deterministic stand-in for a network: depends on the sample and the timestep."""
    return torch.tanh(sample) * 0.5 + 0.001 * t * torch.cos(sample)


def test_tables_follow_the_clean_state_convention(schedule: NoiseSchedule) -> None:
    assert schedule.alphas_cumprod.shape == (1001,)
    assert schedule.alphas_cumprod[0].item() == 1.0 and schedule.betas[0].item() == 0.0
    assert schedule.betas[1].item() == pytest.approx(1e-4) and schedule.betas[1000].item() == pytest.approx(
        0.02
    )
    expected_a2 = (1 - schedule.betas[1]) * (1 - schedule.betas[2])
    assert schedule.alphas_cumprod[2].item() == pytest.approx(expected_a2.item(), rel=1e-12)
    assert schedule.alphas_cumprod[1000].item() == pytest.approx(4.04e-5, rel=0.02)
    scaled = NoiseSchedule(
        NoiseScheduleConfig(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    )
    assert scaled.betas[1].item() == pytest.approx(0.00085) and scaled.betas[1000].item() == pytest.approx(
        0.012
    )
    assert scaled.betas[500].item() < (0.00085 + 0.012) / 2  # linear in sqrt(beta) lies below the chord
    cosine = NoiseSchedule(NoiseScheduleConfig(beta_schedule="cosine"))
    diffs = cosine.alphas_cumprod[1:] - cosine.alphas_cumprod[:-1]
    assert bool((diffs < 0).all()) and cosine.alphas_cumprod[1000].item() < 1e-6
    # Nichol & Dhariwal eq. 17 at t = T/2: cos^2((0.5 + s)/(1 + s) * pi/2) / cos^2(s/(1 + s) * pi/2).
    s = 0.008
    half = math.cos((0.5 + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    assert cosine.alphas_cumprod[500].item() == pytest.approx(half, rel=1e-9)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="beta_schedule"):
        NoiseScheduleConfig(beta_schedule="quadratic")
    with pytest.raises(ConfigError, match="unknown keys"):
        NoiseScheduleConfig.from_dict({"num_train_timesteps": 10, "clip_sample": True})
    assert NoiseScheduleConfig.from_dict(NoiseScheduleConfig().to_dict()) == NoiseScheduleConfig()
    with pytest.raises(ConfigError, match="divide"):
        LCMSampler(NoiseSchedule(NoiseScheduleConfig()), ConsistencyConfig(skip_interval=30))
    with pytest.raises(ConfigError, match="unknown sampler"):
        make_sampler("euler", NoiseSchedule(NoiseScheduleConfig()))


def test_noising_at_t0_returns_z0_and_matches_the_closed_form(schedule: NoiseSchedule) -> None:
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(SHAPE, generator=gen)
    noise = torch.randn(SHAPE, generator=gen)
    assert torch.equal(schedule.add_noise(z0, noise, 0), z0)
    mixed = schedule.add_noise(z0, noise, torch.tensor([0, 700]))
    assert torch.equal(mixed[0], z0[0])
    a = schedule.alphas_cumprod[700].item()
    assert torch.allclose(mixed[1], math.sqrt(a) * z0[1] + math.sqrt(1 - a) * noise[1], atol=1e-6)
    z_t = schedule.add_noise(z0, noise, 300)
    assert torch.allclose(schedule.predict_z0(z_t, noise, 300), z0, atol=1e-5)
    assert torch.allclose(schedule.predict_eps(z_t, z0, 300), noise, atol=1e-5)


def test_timesteps(schedule: NoiseSchedule) -> None:
    ddpm = DDPMSampler(schedule)
    assert ddpm.timesteps(1000) == list(range(1000, -1, -1))
    assert DDIMSampler(schedule).timesteps(4) == [1000, 750, 500, 250, 0]
    assert ddpm.timesteps(3, start_t=300) == [300, 200, 100, 0]
    with pytest.raises(ValueError, match="steps"):
        ddpm.timesteps(301, start_t=300)
    lcm = LCMSampler(schedule, ConsistencyConfig(skip_interval=20))
    assert lcm.timesteps(1) == [1000, 0]
    assert lcm.timesteps(2) == [1000, 500, 0]
    assert lcm.timesteps(4) == [1000, 760, 500, 260, 0]
    assert lcm.timesteps(2, start_t=410) == [400, 200, 0]
    assert lcm.timesteps(1, start_t=5) == [20, 0]


def test_ddim_eta0_is_deterministic_and_follows_eq12(schedule: NoiseSchedule) -> None:
    sampler = DDIMSampler(schedule)
    sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    eps = _fake_eps(sample, 800)
    first = sampler.step(eps, 800, 600, sample, generator=torch.Generator().manual_seed(11))
    second = sampler.step(eps, 800, 600, sample, generator=torch.Generator().manual_seed(22))
    assert torch.equal(first.prev_sample, second.prev_sample)
    a_t, a_prev = schedule.alphas_cumprod[800].item(), schedule.alphas_cumprod[600].item()
    z0_hat = (sample - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    expected = math.sqrt(a_prev) * z0_hat + math.sqrt(1 - a_prev) * eps
    assert torch.allclose(first.prev_sample, expected, atol=1e-5)
    assert torch.allclose(first.pred_z0, z0_hat, atol=1e-5)
    # A whole chain run twice with different generators gives the same latent.
    runs = []
    for seed in (3, 4):
        gen = torch.Generator().manual_seed(seed)
        x = sample.clone()
        ts = sampler.timesteps(10)
        for t, t_prev in itertools.pairwise(ts):
            x = sampler.step(_fake_eps(x, t), t, t_prev, x, generator=gen).prev_sample
        runs.append(x)
    assert torch.equal(runs[0], runs[1])
    # eta > 0 does use the generator.
    noisy = DDIMSampler(schedule, eta=1.0)
    c = noisy.step(eps, 800, 600, sample, generator=torch.Generator().manual_seed(11)).prev_sample
    d = noisy.step(eps, 800, 600, sample, generator=torch.Generator().manual_seed(22)).prev_sample
    assert not torch.allclose(c, d)


def test_ddpm_with_every_step_matches_the_ancestral_update(schedule: NoiseSchedule) -> None:
    sampler = DDPMSampler(schedule)
    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    gen_a = torch.Generator().manual_seed(9)
    gen_b = torch.Generator().manual_seed(9)
    ours = start.clone()
    ts = sampler.timesteps(1000)
    for t, t_prev in itertools.pairwise(ts):
        ours = sampler.step(_fake_eps(ours, t), t, t_prev, ours, generator=gen_a).prev_sample
    # Ho et al. Algorithm 2 / eq. 11 with sigma_t^2 = beta_tilde_t, written out by hand.
    ref = start.clone()
    betas, abar = schedule.betas, schedule.alphas_cumprod
    for t in range(1000, 0, -1):
        beta, alpha = betas[t].item(), 1.0 - betas[t].item()
        mean = (ref - beta / math.sqrt(1 - abar[t].item()) * _fake_eps(ref, t)) / math.sqrt(alpha)
        if t > 1:
            sigma = math.sqrt((1 - abar[t - 1].item()) / (1 - abar[t].item()) * beta)
            mean = mean + sigma * torch.randn(SHAPE, generator=gen_b, dtype=torch.float64)
        ref = mean
    assert torch.allclose(ours, ref, atol=1e-8, rtol=1e-8)
    assert ours.abs().max() > 0.1  # not a degenerate all-zero chain


def test_lcm_one_step_returns_the_consistency_function(schedule: NoiseSchedule) -> None:
    consistency = ConsistencyConfig(skip_interval=20, sigma_data=0.5, timestep_scaling=10.0)
    sampler = LCMSampler(schedule, consistency)
    sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    for t in (1000, 20, 1):
        eps = _fake_eps(sample, t)
        out = sampler.step(eps, t, 0, sample, generator=torch.Generator().manual_seed(0))
        s = 10.0 * t
        c_skip = 0.25 / (s * s + 0.25)
        c_out = s / math.sqrt(s * s + 0.25)
        a = schedule.alphas_cumprod[t].item()
        big_f = (sample - math.sqrt(1 - a) * eps) / math.sqrt(a)
        expected = c_skip * sample + c_out * big_f
        assert torch.allclose(out.prev_sample, expected, atol=1e-5)
        assert torch.equal(out.prev_sample, out.pred_z0)
    # A multistep step re-noises the estimate to t_prev with the generator's next draw.
    eps = _fake_eps(sample, 1000)
    out = sampler.step(eps, 1000, 500, sample, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(out.prev_sample, schedule.add_noise(out.pred_z0, noise, 500), atol=1e-6)


def test_boundary_condition_values() -> None:
    c_skip, c_out = consistency_scalings(0, sigma_data=0.5, timestep_scaling=10.0)
    assert c_skip.item() == 1.0 and c_out.item() == 0.0
    c_skip, c_out = consistency_scalings(torch.tensor([0, 1, 1000]), sigma_data=0.5, timestep_scaling=10.0)
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0
    assert c_skip[1].item() == pytest.approx(0.25 / 100.25) and c_out[1].item() == pytest.approx(
        10 / math.sqrt(100.25)
    )
    assert c_skip[2].item() < 1e-8 and c_out[2].item() == pytest.approx(1.0, abs=1e-8)
    like = torch.zeros(3, 4, 5)
    c_skip, _ = consistency_scalings(
        torch.tensor([0, 1, 1000]), sigma_data=0.5, timestep_scaling=10.0, like=like
    )
    assert c_skip.shape == (3, 1, 1) and c_skip.dtype == torch.float32


def _oracle_run(sampler, start: torch.Tensor, z0: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = start
    ts = sampler.timesteps(steps)
    for t, t_prev in itertools.pairwise(ts):
        eps = sampler.schedule.predict_eps(x, z0, t)
        x = sampler.step(eps, t, t_prev, x, generator=gen).prev_sample
    return x


def test_oracle_denoiser_recovers_z0(schedule: NoiseSchedule) -> None:
    z0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)) * 2.0 + 0.5
    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    ddim = _oracle_run(DDIMSampler(schedule), start, z0, 5, 0)
    assert torch.allclose(ddim, z0, atol=1e-3)
    ddpm = _oracle_run(DDPMSampler(schedule), start, z0, 1000, 0)
    assert torch.allclose(ddpm, z0, atol=1e-3)
    lcm = _oracle_run(LCMSampler(schedule, ConsistencyConfig()), start, z0, 4, 0)
    assert torch.allclose(lcm, z0, atol=1e-3)


def test_gaussian_data_oracle_gives_the_data_distribution(schedule: NoiseSchedule) -> None:
    """For z0 ~ N(mu, s^2), E[z0 | z_t] is known; DDPM and DDIM must then sample N(mu, s^2)."""
    mu, s = 1.5, 0.5
    shape = (64, 4, 64)

    def eps_of(x: torch.Tensor, t: int) -> torch.Tensor:
        a = schedule.alphas_cumprod[t].item()
        mean_z0 = mu + math.sqrt(a) * s * s / (a * s * s + 1 - a) * (x - math.sqrt(a) * mu)
        return schedule.predict_eps(x, mean_z0, t)

    def run(sampler, steps: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen)
        ts = sampler.timesteps(steps)
        for t, t_prev in itertools.pairwise(ts):
            x = sampler.step(eps_of(x, t), t, t_prev, x, generator=gen).prev_sample
        return x

    for sampler, steps in ((DDPMSampler(schedule), 1000), (DDIMSampler(schedule), 200)):
        x = run(sampler, steps)
        assert x.mean().item() == pytest.approx(mu, abs=0.03), sampler.name
        assert x.std().item() == pytest.approx(s, rel=0.03), sampler.name
    # DDIM's discretisation error shrinks with the step count (measured std 0.37 at 10 steps).
    coarse = run(DDIMSampler(schedule), 10)
    assert abs(coarse.std().item() - s) > 0.1
