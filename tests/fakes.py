"""Random-weight checkpoints in the real file formats, for tests (tiny) and benchmarks (real size).

Real pretrained weights cannot be downloaded here; these files exercise the same readers and the
same arithmetic at a chosen size.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from infer.content.hubert import (
    BASE_CONV_LAYERS,
    FOLDED_WEIGHT_NORM_KEYS,
    HubertConfig,
    HubertModel,
)
from infer.models import ModelMetadata, save_voice_model
from infer.pitch.rmvpe import RmvpeConfig, RmvpeNet
from infer.synthesizer import SynthConfig, Synthesizer

TINY_CONV_LAYERS = ((16, 10, 5),) + ((16, 3, 2),) * 4 + ((16, 2, 2),) * 2


def hubert_config(version: str, *, tiny: bool = True) -> HubertConfig:
    """A HuBERT whose v1 (layer 9 + final_proj, 256-d) or v2 (last layer, 768-d) output is real-sized."""
    if not tiny:
        return HubertConfig.base()
    if version == "v1":
        return HubertConfig(
            conv_layers=TINY_CONV_LAYERS,
            embed_dim=32,
            ffn_dim=64,
            num_heads=2,
            num_layers=9,
            conv_pos=16,
            conv_pos_groups=4,
            final_dim=256,
        )
    return HubertConfig(
        conv_layers=TINY_CONV_LAYERS,
        embed_dim=768,
        ffn_dim=64,
        num_heads=12,
        num_layers=1,
        conv_pos=16,
        conv_pos_groups=16,
        final_dim=256,
    )


def write_hubert_checkpoint(path: Path, config: HubertConfig, *, seed: int = 0) -> Path:
    """A fairseq-layout ``hubert_base.pt`` (``{'model': ..., 'cfg': ...}``) with random weights."""
    torch.manual_seed(seed)
    model = HubertModel(config)
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key in FOLDED_WEIGHT_NORM_KEYS:
            g_key, v_key = FOLDED_WEIGHT_NORM_KEYS[key]
            state[g_key] = torch.linalg.vector_norm(value, dim=(0, 1), keepdim=True)
            state[v_key] = value.clone()
        else:
            state[key] = value.clone()
    conv_spec = " + ".join(f"[({c},{k},{s})]" for c, k, s in config.conv_layers)
    cfg = {
        "model": {
            "_name": "hubert",
            "extractor_mode": "default",
            "encoder_layers": config.num_layers,
            "encoder_embed_dim": config.embed_dim,
            "encoder_ffn_embed_dim": config.ffn_dim,
            "encoder_attention_heads": config.num_heads,
            "activation_fn": "gelu",
            "layer_norm_first": False,
            "conv_feature_layers": conv_spec,
            "conv_bias": False,
            "conv_pos": config.conv_pos,
            "conv_pos_groups": config.conv_pos_groups,
            "final_dim": config.final_dim,
        },
        "task": {"_name": "hubert_pretraining", "normalize": False, "sample_rate": 16000},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {k: v.half() for k, v in state.items()}, "cfg": cfg}, path)
    return path


def write_rmvpe_checkpoint(path: Path, *, tiny: bool = True, seed: int = 0) -> Path:
    """A plain ``rmvpe.pt``-style state dict with random weights."""
    torch.manual_seed(seed)
    net = RmvpeNet(RmvpeConfig.tiny() if tiny else RmvpeConfig.real())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}, path)
    return path


def tiny_synth_config(version: str = "v2", sample_rate: int = 40000, *, use_f0: bool = True) -> SynthConfig:
    """The real preset shrunk to a few channels (same upsampling, so the same hop)."""
    preset = SynthConfig.preset(version, sample_rate, use_f0)
    return replace(
        preset,
        inter_channels=16,
        hidden_channels=32,
        filter_channels=32,
        n_heads=2,
        n_layers=2,
        upsample_initial_channel=64,
        spk_embed_dim=2,
        gin_channels=16,
    )


def write_voice_model(
    path: Path,
    config: SynthConfig,
    *,
    name: str = "fake",
    seed: int = 0,
    content_encoder: str = "hubert_base",
) -> Path:
    """An RVC inference ``.pth`` (plus Timbre metadata) with random weights."""
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    synth = Synthesizer(config)
    version = "v2" if config.content_dim == 768 else "v1"
    metadata = ModelMetadata(
        name=name,
        version=version,
        sample_rate=config.sample_rate,
        use_f0=config.use_f0,
        info="0epoch",
        content_encoder=content_encoder,
    )
    return save_voice_model(path, synth, config, metadata)


__all__ = [
    "BASE_CONV_LAYERS",
    "hubert_config",
    "tiny_synth_config",
    "write_diffusion_heads",
    "write_diffusion_heads_sized",
    "write_hubert_checkpoint",
    "write_rmvpe_checkpoint",
    "write_voice_model",
]


def write_diffusion_heads(model_dir: Path, config: SynthConfig, *, seed: int = 0) -> None:
    """Small random-weight teacher and LCM heads that fit ``config`` (for wiring tests, not quality)."""
    write_diffusion_heads_sized(model_dir, config, residual_channels=16, n_layers=2, seed=seed)


def write_diffusion_heads_sized(
    model_dir: Path, config: SynthConfig, *, residual_channels: int, n_layers: int, seed: int = 0
) -> None:
    """Random-weight teacher and LCM heads of a chosen size (benchmarks use the real size)."""
    from infer.diffusion.denoiser import Denoiser, DenoiserConfig
    from infer.diffusion.head import DiffusionHead
    from infer.diffusion.schedulers import ConsistencyConfig, NoiseScheduleConfig

    torch.manual_seed(seed)
    for kind in ("teacher", "lcm"):
        denoiser_config = DenoiserConfig(
            latent_channels=config.inter_channels,
            content_dim=config.content_dim,
            gin_channels=config.gin_channels,
            residual_channels=residual_channels,
            n_layers=n_layers,
            use_w_embedding=kind == "lcm",
        )
        head = DiffusionHead(
            kind=kind,
            denoiser_config=denoiser_config,
            schedule_config=NoiseScheduleConfig(),
            state_dict=Denoiser(denoiser_config).state_dict(),
            latent_scale=1.0,
            consistency=ConsistencyConfig() if kind == "lcm" else None,
        )
        head.save(model_dir / head.filename)
