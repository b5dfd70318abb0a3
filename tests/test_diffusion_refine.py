"""Denoiser, diffusion head files and the refine loop with guidance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from infer.diffusion.denoiser import Denoiser, DenoiserConfig, f0_features
from infer.diffusion.head import (
    LCM_FILENAME,
    TEACHER_FILENAME,
    DiffusionHead,
    DiffusionHeadError,
    load_head,
    load_head_for_sampler,
)
from infer.diffusion.refine import RefineError, RefineParams, guided_eps, refine
from infer.diffusion.schedulers import ConsistencyConfig, NoiseSchedule, NoiseScheduleConfig
from infer.errors import Cancelled, ModelLoadError
from infer.nn.configs import ConfigError

C, CX, GIN, FRAMES = 6, 10, 4, 24
TINY = DenoiserConfig(
    latent_channels=C, content_dim=CX, gin_channels=GIN, residual_channels=16, n_layers=3, dilation_cycle=2
)


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Give every parameter random values (the output layer is zero-initialised otherwise)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def _inputs(batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    f0 = 100 + 200 * torch.rand(batch, FRAMES, generator=gen)
    f0[:, :3] = 0.0  # unvoiced frames
    mask = torch.ones(batch, 1, FRAMES)
    mask[1, :, FRAMES - 5 :] = 0.0
    return {
        "x": torch.randn(batch, FRAMES, CX, generator=gen),
        "f0_hz": f0,
        "e": torch.randn(batch, GIN, 1, generator=gen),
        "x_mask": mask,
    }


def _head(kind: str = "teacher", seed: int = 0, latent_scale: float = 2.0) -> DiffusionHead:
    config = TINY if kind == "teacher" else DenoiserConfig(**{**TINY.to_dict(), "use_w_embedding": True})
    torch.manual_seed(seed)
    model = _randomise(Denoiser(config), seed)
    return DiffusionHead(
        kind=kind,
        denoiser_config=config,
        schedule_config=NoiseScheduleConfig(),
        state_dict=model.state_dict(),
        latent_scale=latent_scale,
        consistency=ConsistencyConfig() if kind == "lcm" else None,
        metadata={"steps": 3, "note": "test"},
    )


def test_f0_features() -> None:
    feats = f0_features(torch.tensor([[0.0, 440.0, 220.0, 880.0]]))
    assert torch.allclose(feats[0, 0], torch.tensor([0.0, 0.0, -1.0, 1.0]))
    assert torch.equal(feats[0, 1], torch.tensor([0.0, 1.0, 1.0, 1.0]))


def test_denoiser_shapes_masking_and_null_conditions() -> None:
    model = _randomise(Denoiser(TINY), 1)
    inp = _inputs()
    z = torch.randn(2, C, FRAMES)
    t = torch.tensor([10, 900])
    out = model(z, t, **inp)
    assert out.shape == (2, C, FRAMES)
    assert out[1, :, FRAMES - 5 :].abs().max() == 0.0 and out[1, :, : FRAMES - 5].abs().min() > 0
    # Frames outside the mask do not influence the valid ones.
    z2, x2 = z.clone(), inp["x"].clone()
    z2[1, :, FRAMES - 5 :] = 50.0
    x2[1, FRAMES - 5 :] = -50.0
    out2 = model(z2, t, **{**inp, "x": x2})
    assert torch.allclose(out2, out, atol=1e-5)
    # Conditions matter when kept and are ignored when dropped.
    other = _inputs(seed=5)
    other["x_mask"] = inp["x_mask"]
    drop = torch.tensor([True, False])
    a = model(z, t, **inp, drop_cond=drop)
    b = model(z, t, **other, drop_cond=drop)
    assert torch.allclose(a[0], b[0], atol=1e-6)
    assert (a[1] - b[1]).abs().max() > 1e-3
    assert (a[0] - out[0]).abs().max() > 1e-3


def test_w_embedding_starts_as_the_teacher_and_is_required() -> None:
    teacher = _randomise(Denoiser(TINY), 2)
    student = Denoiser(DenoiserConfig(**{**TINY.to_dict(), "use_w_embedding": True}))
    student.load_teacher_weights(teacher.state_dict())
    student.eval()
    inp = _inputs()
    z = torch.randn(2, C, FRAMES)
    t = torch.tensor([50, 500])
    expected = teacher(z, t, **inp)
    for w in (0.0, 2.5):
        assert torch.allclose(student(z, t, **inp, w=torch.full((2,), w)), expected, atol=1e-6)
    with pytest.raises(ValueError, match="pass w"):
        student(z, t, **inp)
    with pytest.raises(ValueError, match="no w-embedding"):
        teacher(z, t, **inp, w=torch.zeros(2))
    with pytest.raises(ValueError, match="do not fit"):
        student.load_teacher_weights({"input_proj.weight": torch.zeros(1)})


def test_guidance_weight_zero_is_the_conditional_prediction() -> None:
    model = _randomise(Denoiser(TINY), 3)
    inp = _inputs()
    z = torch.randn(2, C, FRAMES)
    t = torch.tensor([300, 300])
    cond = model(z, t, **inp)
    assert torch.equal(guided_eps(model, z, t, inp["x"], inp["f0_hz"], inp["e"], inp["x_mask"], 0.0), cond)
    uncond = model(z, t, **inp, drop_cond=torch.ones(2, dtype=torch.bool))
    guided = guided_eps(model, z, t, inp["x"], inp["f0_hz"], inp["e"], inp["x_mask"], 1.5)
    assert torch.allclose(guided, 2.5 * cond - 1.5 * uncond, atol=1e-5)
    assert (guided - cond).abs().max() > 1e-3


def test_head_round_trip_and_strict_loading(tmp_path: Path) -> None:
    head = _head("lcm")
    path = head.save(tmp_path / LCM_FILENAME)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "timbre-diffusion-head-1" and raw["kind"] == "lcm"
    loaded = load_head(path)
    assert loaded.kind == "lcm" and loaded.filename == LCM_FILENAME
    assert loaded.denoiser_config == head.denoiser_config and loaded.consistency == head.consistency
    assert loaded.schedule_config == head.schedule_config and loaded.latent_scale == 2.0
    assert loaded.metadata == {"steps": 3, "note": "test"}
    for key, value in head.state_dict.items():
        assert torch.equal(loaded.state_dict[key], value)
    model = loaded.build_denoiser()
    assert not model.training and all(not p.requires_grad for p in model.parameters())

    broken = dict(raw)
    broken["state_dict"] = {**raw["state_dict"], "input_proj.weight": torch.zeros(3, 3, 1)}
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ModelLoadError, match="wrong shape"):
        load_head(tmp_path / "broken.pt")
    missing = dict(raw)
    missing["state_dict"] = {k: v for k, v in raw["state_dict"].items() if not k.startswith("w_embed.")}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ModelLoadError, match="missing"):
        load_head(tmp_path / "missing.pt")
    torch.save({**raw, "extra": 1}, tmp_path / "extra.pt")
    with pytest.raises(ModelLoadError, match="unknown keys"):
        load_head(tmp_path / "extra.pt")
    torch.save({**raw, "denoiser": {**raw["denoiser"], "n_layers": 0}}, tmp_path / "bad_cfg.pt")
    with pytest.raises(ModelLoadError, match="n_layers"):
        load_head(tmp_path / "bad_cfg.pt")
    torch.save({"weight": {}}, tmp_path / "rvc.pt")
    with pytest.raises(ModelLoadError, match="not a Timbre diffusion head"):
        load_head(tmp_path / "rvc.pt")
    with pytest.raises(ConfigError, match="use_w_embedding"):
        DiffusionHead(
            kind="teacher",
            denoiser_config=head.denoiser_config,
            schedule_config=NoiseScheduleConfig(),
            state_dict={},
            latent_scale=1.0,
        )


def test_missing_heads_say_which_stage_makes_them(tmp_path: Path) -> None:
    with pytest.raises(DiffusionHeadError, match="python -m train diffusion"):
        load_head_for_sampler(tmp_path, "ddim")
    _head("teacher").save(tmp_path / TEACHER_FILENAME)
    assert load_head_for_sampler(tmp_path, "ddpm").kind == "teacher"
    with pytest.raises(DiffusionHeadError, match=r"python -m train distill.*\(ddpm, ddim\)"):
        load_head_for_sampler(tmp_path, "lcm")
    head = _head("teacher")
    with pytest.raises(DiffusionHeadError, match="retrain"):
        head.check_compatible(latent_channels=192, content_dim=CX, gin_channels=GIN)
    head.check_compatible(latent_channels=C, content_dim=CX, gin_channels=GIN)


def test_refine_params_validation() -> None:
    with pytest.raises(ConfigError, match="1 to 4"):
        RefineParams(sampler="lcm", steps=5)
    with pytest.raises(ConfigError, match="sampler"):
        RefineParams(sampler="off")
    with pytest.raises(ConfigError, match="strength"):
        RefineParams(start="shallow", strength=0.0)
    with pytest.raises(ConfigError, match="unknown keys"):
        RefineParams.from_dict({"sampler": "ddim", "eta": 0.0})
    params = RefineParams.from_dict({"sampler": "ddim", "steps": 50, "guidance_weight": 1})
    assert params.guidance_weight == 1.0 and RefineParams.from_dict(params.to_dict()) == params


def test_refine_refuses_a_head_that_does_not_fit_the_sampler() -> None:
    inp = _inputs()
    with pytest.raises(DiffusionHeadError, match="python -m train distill"):
        refine(_head("teacher"), **inp, params=RefineParams(sampler="lcm", steps=2))
    with pytest.raises(DiffusionHeadError, match="choose the lcm sampler"):
        refine(_head("lcm"), **inp, params=RefineParams(sampler="ddim", steps=2))
    with pytest.raises(RefineError, match="z_init"):
        refine(_head("teacher"), **inp, params=RefineParams(sampler="ddim", steps=2, start="shallow"))
    with pytest.raises(RefineError, match=r"\(B, T, 10\)"):
        refine(_head("teacher"), **{**inp, "x": inp["x"][..., :3]}, params=RefineParams(sampler="ddim"))
    with pytest.raises(RefineError, match="guidance weights"):
        refine(_head("lcm"), **inp, params=RefineParams(sampler="lcm", guidance_weight=9.0))


class _Oracle(nn.Module):
    """Predicts eps exactly for a known clean latent z0 (already scaled); counts its calls."""

    def __init__(self, schedule: NoiseSchedule, z0_scaled: torch.Tensor) -> None:
        super().__init__()
        self.schedule = schedule
        self.z0 = z0_scaled
        self.calls: list[int] = []

    def forward(self, z_t, t, x, f0_hz, e, x_mask, *, drop_cond=None, w=None):
        self.calls.append(z_t.shape[0])
        z0 = self.z0.repeat(z_t.shape[0] // self.z0.shape[0], 1, 1)
        return self.schedule.predict_eps(z_t, z0, t) * x_mask


@pytest.mark.parametrize(
    ("kind", "sampler", "steps", "start"),
    [
        ("teacher", "ddim", 4, "noise"),
        ("teacher", "ddpm", 60, "noise"),
        ("teacher", "ddim", 3, "shallow"),
        ("teacher", "ddpm", 20, "shallow"),
        ("lcm", "lcm", 1, "noise"),
        ("lcm", "lcm", 4, "noise"),
        ("lcm", "lcm", 2, "shallow"),
    ],
)
def test_refine_with_an_oracle_recovers_the_latent(kind: str, sampler: str, steps: int, start: str) -> None:
    head = _head(kind, latent_scale=2.0)
    inp = _inputs()
    z0 = torch.randn(2, C, FRAMES, generator=torch.Generator().manual_seed(8)) * 0.5 * inp["x_mask"]
    oracle = _Oracle(head.schedule(), z0 * head.latent_scale)
    w = 1.0
    params = RefineParams(sampler=sampler, steps=steps, guidance_weight=w, start=start, strength=0.4, seed=3)
    fractions: list[float] = []
    z_init = z0 + 0.3 * torch.randn(z0.shape, generator=torch.Generator().manual_seed(1))
    out = refine(
        head,
        **inp,
        params=params,
        z_init=z_init if start == "shallow" else None,
        denoiser=oracle,  # type: ignore[arg-type]
        progress=lambda f, _m: fractions.append(f),
    )
    assert out.shape == (2, C, FRAMES)
    assert torch.allclose(out, z0, atol=2e-3)  # unscaled back by latent_scale and masked
    assert len(oracle.calls) == steps and fractions[-1] == 1.0
    # Teachers batch cond + uncond in one forward; the LCM student runs once per step on the batch.
    assert set(oracle.calls) == ({4} if kind == "teacher" else {2})


def test_refine_is_seeded_and_cancellable() -> None:
    head = _head("teacher")
    inp = _inputs()
    model = head.build_denoiser()
    params = RefineParams(sampler="ddpm", steps=8, guidance_weight=0.5, seed=1)
    a = refine(head, **inp, params=params, denoiser=model)
    b = refine(head, **inp, params=params, denoiser=model)
    c = refine(head, **inp, params=RefineParams(sampler="ddpm", steps=8, guidance_weight=0.5, seed=2))
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert (a - c).abs().max() > 1e-3
    assert a[1, :, FRAMES - 5 :].abs().max() == 0.0
    with pytest.raises(Cancelled):
        refine(head, **inp, params=params, should_stop=lambda: True)
