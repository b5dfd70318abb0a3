"""The EDM family: preconditioning, the Heun sampler, consistency boundary, ACDD, guidance, heads."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from infer.diffusion.denoiser import Denoiser, DenoiserConfig
from infer.diffusion.edm import (
    Conditions,
    EDMConfig,
    HeunSampler,
    boundary_scalings,
    edm_denoise,
    edm_scalings,
    guided_denoise,
    karras_sigmas,
)
from infer.diffusion.head import (
    TEACHER_FILENAME,
    DiffusionHead,
    DiffusionHeadError,
    load_head,
    load_head_for_sampler,
)
from infer.diffusion.refine import RefineParams, network_evaluations, refine
from infer.diffusion.schedulers import NoiseScheduleConfig
from infer.nn.configs import ConfigError

C, CX, GIN, FRAMES = 6, 10, 4, 24
TINY = DenoiserConfig(
    latent_channels=C, content_dim=CX, gin_channels=GIN, residual_channels=16, n_layers=3, dilation_cycle=2
)
EDM = EDMConfig()


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def _cond(batch: int = 2, seed: int = 0) -> Conditions:
    gen = torch.Generator().manual_seed(seed)
    f0 = 100 + 200 * torch.rand(batch, FRAMES, generator=gen)
    f0[:, :3] = 0.0
    mask = torch.ones(batch, 1, FRAMES)
    mask[-1, :, FRAMES - 5 :] = 0.0
    return Conditions(
        torch.randn(batch, FRAMES, CX, generator=gen), f0, torch.randn(batch, GIN, 1, generator=gen), mask
    )


def _edm_head(kind: str = "teacher", seed: int = 0) -> DiffusionHead:
    model = _randomise(Denoiser(TINY), seed)
    return DiffusionHead(
        kind=kind,
        parameterisation="edm",
        edm=EDM,
        denoiser_config=TINY,
        schedule_config=None,
        state_dict=model.state_dict(),
        latent_scale=2.0,
    )


def _refine_inputs(cond: Conditions) -> dict[str, torch.Tensor]:
    return {"x": cond.content, "f0_hz": cond.f0_hz, "e": cond.speaker, "x_mask": cond.mask}


class Counting(nn.Module):
    """Counts forwards of a wrapped denoiser (and records each batch size)."""

    def __init__(self, inner: Denoiser) -> None:
        super().__init__()
        self.inner = inner
        self.batches: list[int] = []

    def forward(
        self, z_t: torch.Tensor, t: torch.Tensor, *args: torch.Tensor, **kwargs: object
    ) -> torch.Tensor:
        self.batches.append(int(z_t.shape[0]))
        return self.inner(z_t, t, *args, **kwargs)


def test_edm_preconditioning_boundary_values() -> None:
    sd = 0.5
    c_skip, c_out, c_in, c_noise = edm_scalings(torch.tensor([1e-9, sd, 1e6]), sd)
    assert c_skip[0] == pytest.approx(1.0) and c_out[0] == pytest.approx(0.0, abs=1e-8)
    assert c_skip[1] == pytest.approx(0.5) and c_out[1] == pytest.approx(sd / math.sqrt(2))
    assert c_in[1] == pytest.approx(1 / (sd * math.sqrt(2))) and c_noise[1] == pytest.approx(math.log(sd) / 4)
    assert c_skip[2] == pytest.approx(0.0, abs=1e-12) and c_out[2] == pytest.approx(sd, rel=1e-6)
    # Song et al.'s scalings hit the boundary exactly at sigma_min.
    b_skip, b_out = boundary_scalings(
        torch.tensor([EDM.sigma_min, 80.0], dtype=torch.float64), EDM.sigma_min, 1.0
    )
    assert b_skip[0].item() == 1.0 and b_out[0].item() == 0.0
    assert b_skip[1] == pytest.approx(1 / (79.998**2 + 1)) and b_out[1] == pytest.approx(
        79.998 / math.sqrt(6401)
    )


def test_karras_sigmas_follow_eq_5() -> None:
    sigmas = karras_sigmas(3, EDM)
    assert sigmas[0] == pytest.approx(80.0) and sigmas[2] == pytest.approx(0.002) and sigmas[3] == 0.0
    middle = ((80.0 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7
    assert sigmas[1] == pytest.approx(middle)
    assert karras_sigmas(1, EDM, 2.5) == [2.5, 0.0]
    assert EDM.sigma_at(0.0) == pytest.approx(0.002) and EDM.sigma_at(1.0) == pytest.approx(80.0)
    with pytest.raises(ConfigError, match="sigma_min"):
        EDMConfig(sigma_min=1.0, sigma_max=0.5)


def test_one_heun_step_matches_a_hand_computation() -> None:
    a = 0.25
    x = torch.tensor([[[1.0, -2.0, 4.0]]])

    def denoise(sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return a * sample

    # s = 2 -> s' = 1: d = (1 - a) x / 2; x_e = x - d; d' = (1 - a) x_e; x' = x - (d + d') / 2.
    d = (1 - a) * x / 2
    euler = x - d
    d_next = (1 - a) * euler
    expected = x - 0.5 * (d + d_next)
    out = HeunSampler(EDM).step(denoise, 2.0, 1.0, x)
    assert torch.allclose(out, expected)
    assert torch.allclose(out, x * 0.578125)  # 1 - (0.375 + 0.375 * 0.625) / 2
    # The last step (to sigma = 0) is Euler's: x' = D(x).
    assert torch.allclose(HeunSampler(EDM).step(denoise, 2.0, 0.0, x), a * x)
    assert HeunSampler.evaluations(8) == 15


def test_consistency_boundary_returns_the_input_at_sigma_min() -> None:
    model = _randomise(Denoiser(TINY), 3)
    cond = _cond()
    x = torch.randn(2, C, FRAMES) * cond.mask
    sigma = torch.full((2,), EDM.sigma_min, dtype=torch.float64)
    assert torch.equal(edm_denoise(model, x, sigma, cond, EDM, use_boundary=True), x * cond.mask)
    far = edm_denoise(model, x, torch.full((2,), 10.0, dtype=torch.float64), cond, EDM, use_boundary=True)
    assert (far - x).abs().max() > 1e-2


@pytest.mark.parametrize("sampler", ["edm", "cm", "acdd"])
def test_no_guidance_is_the_conditional_pass_alone(sampler: str) -> None:
    kind = {"edm": "teacher", "cm": "cm", "acdd": "acdd"}[sampler]
    head = _edm_head(kind, seed=1)
    cond = _cond()
    z_init = torch.randn(2, C, FRAMES)
    steps = {"edm": 3, "cm": 2, "acdd": 1}[sampler]
    counting = Counting(head.build_denoiser())
    params = RefineParams(sampler=sampler, steps=steps, start="shallow", strength=0.4, seed=5)
    plain = refine(head, **_refine_inputs(cond), params=params, z_init=z_init, denoiser=counting)  # type: ignore[arg-type]
    assert all(b == 2 for b in counting.batches), counting.batches  # no unconditional half
    assert len(counting.batches) == network_evaluations(params)
    # By hand with the conditional denoiser only.
    net = head.build_denoiser()
    use_boundary = kind == "cm"
    gen = torch.Generator().manual_seed(5)
    sigma0 = EDM.sigma_at(0.4)
    x = (z_init * 2.0 + sigma0 * torch.randn(2, C, FRAMES, generator=gen)) * cond.mask

    def denoise(sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return edm_denoise(net, sample, sigma, cond, EDM, use_boundary=use_boundary)

    if sampler == "edm":
        sigmas = karras_sigmas(steps, EDM, sigma0)
        for s, s_next in itertools.pairwise(sigmas):
            x = HeunSampler(EDM).step(denoise, s, s_next, x) * cond.mask
    elif sampler == "cm":
        levels = karras_sigmas(steps, EDM, sigma0)[:-1]
        for i, s in enumerate(levels):
            if i:
                x = (
                    x
                    + math.sqrt(s**2 - EDM.sigma_min**2)
                    * torch.randn(2, C, FRAMES, generator=gen)
                    * cond.mask
                )
            x = denoise(x, torch.full((2,), s, dtype=torch.float64)) * cond.mask
    else:
        x = denoise(x, torch.full((2,), sigma0, dtype=torch.float64)) * cond.mask
    assert torch.allclose(plain, x / 2.0, atol=1e-5)
    guided = refine(
        head,
        **_refine_inputs(cond),
        params=RefineParams(**{**params.to_dict(), "guidance_weight": 1.5}),
        z_init=z_init,
    )
    assert (guided - plain).abs().max() > 1e-4


def test_guided_denoise_with_zero_weight_per_item_matches_the_conditional_one() -> None:
    model = _randomise(Denoiser(TINY), 2)
    cond = _cond()
    x = torch.randn(2, C, FRAMES)
    sigma = torch.tensor([0.5, 3.0], dtype=torch.float64)
    cond_only = edm_denoise(model, x, sigma, cond, EDM)
    assert torch.allclose(guided_denoise(model, x, sigma, cond, EDM, torch.zeros(2)), cond_only, atol=1e-6)
    assert torch.equal(guided_denoise(model, x, sigma, cond, EDM, 0.0), cond_only)


def test_acdd_is_one_deterministic_evaluation_of_the_right_shape() -> None:
    head = _edm_head("acdd", seed=4)
    cond = _cond(batch=3)
    z_init = torch.randn(3, C, FRAMES)
    counting = Counting(head.build_denoiser())
    params = RefineParams(sampler="acdd", steps=1, start="shallow", strength=0.45, seed=9)
    a = refine(head, **_refine_inputs(cond), params=params, z_init=z_init, denoiser=counting)  # type: ignore[arg-type]
    b = refine(head, **_refine_inputs(cond), params=params, z_init=z_init)
    c = refine(
        head, **_refine_inputs(cond), params=RefineParams(**{**params.to_dict(), "seed": 10}), z_init=z_init
    )
    assert a.shape == (3, C, FRAMES) and counting.batches == [3]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.all(a[-1, :, FRAMES - 5 :] == 0)
    with pytest.raises(ConfigError, match="1 to 1 steps"):
        RefineParams(sampler="acdd", steps=2)


def test_edm_heads_round_trip_and_refuse_the_wrong_sampler(tmp_path: Path) -> None:
    head = _edm_head("teacher")
    head.save(tmp_path / TEACHER_FILENAME)
    loaded = load_head_for_sampler(tmp_path, "edm")
    assert loaded.parameterisation == "edm" and loaded.edm == EDM and loaded.schedule_config is None
    with pytest.raises(DiffusionHeadError, match=r"eps-parameterised teacher.*choose edm"):
        load_head_for_sampler(tmp_path, "ddim")
    with pytest.raises(DiffusionHeadError, match=r"python -m train cm.*\(edm\)"):
        load_head_for_sampler(tmp_path, "cm")
    with pytest.raises(ConfigError, match="EDMConfig"):
        DiffusionHead(
            kind="cm", parameterisation="edm", edm=None, denoiser_config=TINY,
            schedule_config=NoiseScheduleConfig(), state_dict={}, latent_scale=1.0,
        )  # fmt: skip
    with pytest.raises(ConfigError, match="edm-parameterised"):
        DiffusionHead(
            kind="acdd",
            denoiser_config=TINY,
            schedule_config=NoiseScheduleConfig(),
            state_dict={},
            latent_scale=1.0,
        )
    # A file from before the parameterisation key reads as an eps teacher.
    data = torch.load(tmp_path / TEACHER_FILENAME, weights_only=True)
    data.update({"schedule": NoiseScheduleConfig().to_dict(), "edm": None})
    del data["parameterisation"]
    torch.save(data, tmp_path / "old.pt")
    assert load_head(tmp_path / "old.pt").parameterisation == "eps"
