"""State-dict layout at RVC's real sizes, checked against the reference manifests (meta device)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from infer.nn import DiscriminatorConfig, MultiPeriodDiscriminator
from infer.synthesizer import POSTERIOR_ENCODER_PREFIX, SynthConfig, Synthesizer
from tests.helpers import MANIFESTS_DIR

SYNTH_MANIFESTS = sorted(MANIFESTS_DIR.glob("synth_*.json"))
DISC_MANIFESTS = {
    "v1": MANIFESTS_DIR / "disc_MultiPeriodDiscriminator_v1.json",
    "v2": MANIFESTS_DIR / "disc_MultiPeriodDiscriminatorV2_v2.json",
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small CPU work runs fastest single-threaded; extra OpenMP threads only contend on shared CPUs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _parse_name(path: Path) -> tuple[str, int, bool]:
    """synth_v2_f0_40k.json -> ('v2', 40000, True)."""
    _, version, pitch, rate = path.stem.split("_")
    return version, int(rate.rstrip("k")) * 1000, pitch == "f0"


def _rows(module: torch.nn.Module) -> list[list]:
    return [[k, list(v.shape)] for k, v in module.state_dict().items()]


def _build(config: SynthConfig, *, use_posterior_encoder: bool) -> Synthesizer:
    with torch.device("meta"):
        return Synthesizer(config, use_posterior_encoder=use_posterior_encoder)


def test_all_twelve_manifests_present() -> None:
    assert len(SYNTH_MANIFESTS) == 12
    assert all(path.is_file() for path in DISC_MANIFESTS.values())


@pytest.mark.parametrize("path", SYNTH_MANIFESTS, ids=[p.stem for p in SYNTH_MANIFESTS])
def test_synth_manifest(path: Path) -> None:
    manifest = json.loads(path.read_text())
    version, sample_rate, use_f0 = _parse_name(path)
    preset = SynthConfig.preset(version, sample_rate, use_f0)
    assert preset.to_rvc_config() == manifest["constructor_args_positional"]
    from_args = SynthConfig.from_rvc_config(
        manifest["constructor_args_positional"], version=version, use_f0=use_f0
    )
    assert from_args == preset

    expected_full = [[k, shape] for k, shape, _ in manifest["G_state_dict"]]
    expected_small = [[k, shape] for k, shape, _ in manifest["small_weight"]]
    assert all(dtype == "float16" for _, _, dtype in manifest["small_weight"])
    for config in (preset, from_args):
        full = _build(config, use_posterior_encoder=True)
        assert _rows(full) == expected_full
        assert sum(p.numel() for p in full.parameters()) == manifest["G_num_params"]
        small = _build(config, use_posterior_encoder=False)
        assert _rows(small) == expected_small
        assert sum(p.numel() for p in small.parameters()) == manifest["small_num_params"]
        dropped = [k for k in full.state_dict() if k.startswith(POSTERIOR_ENCODER_PREFIX)]
        assert dropped == manifest["dropped_in_small"]
        assert len(dropped) == 103


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_discriminator_manifest(version: str) -> None:
    manifest = json.loads(DISC_MANIFESTS[version].read_text())
    with torch.device("meta"):
        disc = MultiPeriodDiscriminator(DiscriminatorConfig.preset(version))
    assert _rows(disc) == [[k, shape] for k, shape, _ in manifest["state_dict"]]
    assert sum(p.numel() for p in disc.parameters()) == manifest["num_params"]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_discriminator_forward_structure(version: str) -> None:
    config = DiscriminatorConfig.preset(version)
    with torch.device("meta"):
        disc = MultiPeriodDiscriminator(config)
        y = torch.empty(2, 1, 3001)
        y_d_rs, y_d_gs, fmap_rs, fmap_gs = disc(y, torch.empty(2, 1, 3001))
    n_discs = 1 + len(config.periods)
    assert len(y_d_rs) == len(y_d_gs) == len(fmap_rs) == len(fmap_gs) == n_discs
    assert all(
        s.shape == g.shape and s.shape[0] == 2 and s.dim() == 2 for s, g in zip(y_d_rs, y_d_gs, strict=True)
    )
    assert [len(f) for f in fmap_rs] == [7] + [6] * len(config.periods)
    # Period discriminators fold time into (L/period, period): the last fmap dim is the period.
    assert [f[0].shape[-1] for f in fmap_rs[1:]] == list(config.periods)


def test_discriminator_scores_real_and_fake_separately() -> None:
    torch.manual_seed(0)
    from infer.nn import PeriodDiscriminator

    disc = PeriodDiscriminator(3)
    real, fake = torch.randn(1, 1, 100), torch.randn(1, 1, 100)
    with torch.no_grad():
        score_real, fmap_real = disc(real)
        again, _ = disc(real)
        score_fake, _ = disc(fake)
    assert torch.equal(score_real, again)
    assert not torch.allclose(score_real, score_fake)
    assert fmap_real[0].shape == (1, 32, 12, 3)  # 100 -> reflect-pad 102 -> (34, 3) -> k5 s3 p2 -> 12


def test_discriminator_config_validation() -> None:
    assert DiscriminatorConfig.preset("v2").periods == (2, 3, 5, 7, 11, 17, 23, 37)
    config = DiscriminatorConfig.from_dict({"periods": [2, 3]})
    assert config.to_dict()["periods"] == [2, 3]
    assert DiscriminatorConfig.from_dict(config.to_dict()) == config
    with torch.device("meta"):
        full = MultiPeriodDiscriminator(config)
        small = MultiPeriodDiscriminator(DiscriminatorConfig(periods=(2, 3), width_divisor=16))
    n_full = sum(p.numel() for p in full.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small * 100 < n_full
    from infer.nn import ConfigError

    with pytest.raises(ConfigError, match="width_divisor"):
        DiscriminatorConfig(periods=(2,), width_divisor=3)
    with pytest.raises(ConfigError, match="groups do not divide"):
        DiscriminatorConfig(periods=(2,), scale_channels=(16, 64, 256, 1024, 1000, 1024))

    with pytest.raises(ConfigError, match="unknown keys"):
        DiscriminatorConfig.from_dict({"periods": [2], "use_spectral_norm": True})
    with pytest.raises(ConfigError):
        DiscriminatorConfig(periods=())
    with pytest.raises(ConfigError):
        DiscriminatorConfig.preset("v3")
