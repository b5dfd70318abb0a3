"""The latent denoiser eps_theta(z_t, t, x, f0, e): a non-causal WaveNet-style residual stack.

DiffSVC-like (Liu et al. 2021, after DiffWave, Kong et al. 2021): every residual layer adds a
projection of the diffusion-step embedding to its input, runs a dilated convolution, adds a 1x1
projection of the condition, gates ``tanh(a) * sigmoid(b)`` and splits a 1x1 output into residual
and skip paths. The condition is the sum of three branches, each at the latent frame rate:

* content: linear projection of x, then speaker-conditional layer norm (scale and shift predicted
  from the speaker embedding e, as in Meta-StyleSpeech's style-adaptive layer norm);
* pitch: log2(f0 / 440 Hz) and a voicing flag through a 1x1 convolution;
* speaker: a linear projection of e, broadcast over time.

For classifier-free guidance (Ho & Salimans 2022) each branch has a learned null embedding that
replaces it for the items flagged by ``drop_cond``. The LCM student also embeds the guidance weight
w (Luo et al. 2023, Sec. 4.2): sinusoidal features of ``1000 w`` through an MLP added to the
step embedding, its last layer zero-initialised so the student starts as the teacher.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from infer.nn.configs import ConfigError, check_config_keys

__all__ = [
    "F0_REF_HZ",
    "W_EMBEDDING_KEYS_PREFIX",
    "Denoiser",
    "DenoiserConfig",
    "SpeakerConditionalLayerNorm",
    "f0_features",
    "sinusoidal_embedding",
]

F0_REF_HZ = 440.0
"""Reference pitch of the log-F0 input: log2(f0_hz / 440)."""
W_EMBEDDING_SCALE = 1000.0
"""w is multiplied by this before its sinusoidal embedding (as LCM does)."""
W_EMBEDDING_KEYS_PREFIX = "w_embed."
"""State-dict prefix of the w-embedding (absent from a teacher's weights)."""
SINUSOID_MAX_PERIOD = 10000.0
TIME_MLP_EXPANSION = 4


@dataclass(frozen=True)
class DenoiserConfig:
    """Size of a :class:`Denoiser`.

    Attributes:
        latent_channels: width C of the latent z (the synthesizer's ``inter_channels``: 192).
        content_dim: width of the content features x (256 or 768 for HuBERT layers).
        gin_channels: width of the speaker embedding e (the synthesizer's ``gin_channels``: 256).
        residual_channels: width R of the residual stream.
        n_layers: residual layers.
        kernel_size: kernel of the dilated convolutions (odd).
        dilation_cycle: layer i uses dilation ``2 ** (i % dilation_cycle)``.
        use_w_embedding: embed the guidance weight w (the distilled LCM student).
    """

    latent_channels: int = 192
    content_dim: int = 768
    gin_channels: int = 256
    residual_channels: int = 256
    n_layers: int = 20
    kernel_size: int = 3
    dilation_cycle: int = 4
    use_w_embedding: bool = False

    def __post_init__(self) -> None:
        for name in (
            "latent_channels",
            "content_dim",
            "gin_channels",
            "residual_channels",
            "n_layers",
            "kernel_size",
            "dilation_cycle",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"DenoiserConfig.{name} must be a positive int, got {value!r}")
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"DenoiserConfig.kernel_size must be odd (non-causal), got {self.kernel_size}")
        if self.residual_channels % 2:
            raise ConfigError(f"DenoiserConfig.residual_channels must be even, got {self.residual_channels}")
        if not isinstance(self.use_w_embedding, bool):
            raise ConfigError(f"DenoiserConfig.use_w_embedding must be a bool, got {self.use_w_embedding!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DenoiserConfig:
        """Build from a plain dict; unknown keys are a :class:`ConfigError`."""
        check_config_keys(cls, data, require_all=False)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field."""
        return asdict(self)


def sinusoidal_embedding(values: Tensor, dim: int) -> Tensor:
    """Transformer-style sinusoidal features: values (B,) float -> (B, dim) ``[sin, cos]``."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(SINUSOID_MAX_PERIOD) * torch.arange(half, device=values.device, dtype=torch.float32) / half
    )
    angles = values.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def f0_features(f0_hz: Tensor) -> Tensor:
    """f0_hz (B, T) float, 0 when unvoiced -> (B, 2, T): log2(f0 / 440) (0 when unvoiced) and voicing."""
    voiced = f0_hz > 0
    log_f0 = torch.where(voiced, torch.log2(f0_hz.clamp(min=1e-3) / F0_REF_HZ), torch.zeros_like(f0_hz))
    return torch.stack([log_f0, voiced.to(f0_hz.dtype)], dim=1)


def _mlp(in_dim: int, dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, dim * TIME_MLP_EXPANSION), nn.SiLU(), nn.Linear(dim * TIME_MLP_EXPANSION, dim)
    )


class SpeakerConditionalLayerNorm(nn.Module):
    """Layer norm over channels whose scale and shift are predicted from the speaker embedding.

    ``y = (1 + gamma(e)) * LN(h) + beta(e)``; gamma and beta start at zero (plain layer norm).

    Args:
        channels: width of h.
        gin_channels: width of e.
    """

    def __init__(self, channels: int, gin_channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.affine = nn.Linear(gin_channels, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        """h: (B, T, channels), e: (B, gin) -> (B, T, channels)."""
        gamma, beta = self.affine(e).unsqueeze(1).chunk(2, dim=-1)
        return (1.0 + gamma) * F.layer_norm(h, (self.channels,)) + beta


class ResidualLayer(nn.Module):
    """One gated, dilated, conditioned residual layer (DiffWave Fig. 2)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.step_proj = nn.Linear(channels, channels)
        self.dilated_conv = nn.Conv1d(
            channels, 2 * channels, kernel_size, dilation=dilation, padding=dilation * (kernel_size - 1) // 2
        )
        self.cond_proj = nn.Conv1d(channels, 2 * channels, 1)
        self.out_proj = nn.Conv1d(channels, 2 * channels, 1)

    def forward(self, h: Tensor, step: Tensor, cond: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """h, cond: (B, R, T); step: (B, R); mask: (B, 1, T) -> (residual out, skip), both (B, R, T)."""
        y = self.dilated_conv((h + self.step_proj(step).unsqueeze(-1)) * mask) + self.cond_proj(cond)
        gate, filt = y.chunk(2, dim=1)
        residual, skip = self.out_proj(torch.sigmoid(gate) * torch.tanh(filt)).chunk(2, dim=1)
        return (h + residual) * (mask / math.sqrt(2.0)), skip


class Denoiser(nn.Module):
    """eps_theta(z_t, t, x, f0, e [, w]) over VITS posterior latents; see the module docstring.

    Args:
        config: the sizes.
    """

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        width = c.residual_channels
        self.input_proj = nn.Conv1d(c.latent_channels, width, 1)
        self.step_embed = _mlp(width, width)
        self.w_embed = _mlp(width, width) if c.use_w_embedding else None
        if self.w_embed is not None:
            nn.init.zeros_(self.w_embed[-1].weight)
            nn.init.zeros_(self.w_embed[-1].bias)
        self.content_proj = nn.Linear(c.content_dim, width)
        self.content_norm = SpeakerConditionalLayerNorm(width, c.gin_channels)
        self.f0_proj = nn.Conv1d(2, width, 1)
        self.speaker_proj = nn.Linear(c.gin_channels, width)
        self.null_content = nn.Parameter(torch.randn(width) * 0.02)
        self.null_f0 = nn.Parameter(torch.randn(width) * 0.02)
        self.null_speaker = nn.Parameter(torch.randn(c.gin_channels) * 0.02)
        self.layers = nn.ModuleList(
            ResidualLayer(width, c.kernel_size, 2 ** (i % c.dilation_cycle)) for i in range(c.n_layers)
        )
        self.skip_proj = nn.Conv1d(width, width, 1)
        self.output_proj = nn.Conv1d(width, c.latent_channels, 1)
        nn.init.zeros_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def condition(self, x: Tensor, f0_hz: Tensor, e: Tensor, drop_cond: Tensor | None = None) -> Tensor:
        """The summed condition branches.

        Args:
            x: (B, T, content_dim) content features at the latent frame rate.
            f0_hz: (B, T) float f0 in Hz, 0 when unvoiced.
            e: (B, gin, 1) speaker embedding.
            drop_cond: (B,) bool; True replaces every branch by its null embedding.

        Returns:
            (B, R, T) float.
        """
        speaker = e.squeeze(-1).to(self.null_speaker.dtype)
        if drop_cond is not None:
            speaker = torch.where(drop_cond[:, None], self.null_speaker[None, :], speaker)
        content = self.content_norm(self.content_proj(x.to(speaker.dtype)), speaker).transpose(1, 2)
        pitch = self.f0_proj(f0_features(f0_hz.float()).to(speaker.dtype))
        if drop_cond is not None:
            flags = drop_cond[:, None, None]
            content = torch.where(flags, self.null_content[None, :, None], content)
            pitch = torch.where(flags, self.null_f0[None, :, None], pitch)
        return content + pitch + self.speaker_proj(speaker).unsqueeze(-1)

    def forward(
        self,
        z_t: Tensor,
        t: Tensor,
        x: Tensor,
        f0_hz: Tensor,
        e: Tensor,
        x_mask: Tensor,
        *,
        drop_cond: Tensor | None = None,
        w: Tensor | None = None,
    ) -> Tensor:
        """Predict the noise in ``z_t``.

        Args:
            z_t: (B, C, T) noisy latent (scaled).
            t: (B,) int64 or float timesteps in 0..T.
            x: (B, T, content_dim) content features.
            f0_hz: (B, T) float f0 in Hz, 0 when unvoiced.
            e: (B, gin, 1) speaker embedding.
            x_mask: (B, 1, T) float, 1 on valid frames.
            drop_cond: (B,) bool, True for items to run unconditionally (null embeddings).
            w: (B,) float guidance weights; required with ``use_w_embedding``, refused without.

        Returns:
            (B, C, T) eps prediction, masked.
        """
        if self.w_embed is None and w is not None:
            raise ValueError("this denoiser has no w-embedding (a teacher); apply guidance outside it")
        if self.w_embed is not None and w is None:
            raise ValueError("this denoiser embeds the guidance weight (an LCM student); pass w (B,)")
        width = self.config.residual_channels
        step = self.step_embed(sinusoidal_embedding(t, width))
        if self.w_embed is not None and w is not None:
            step = step + self.w_embed(sinusoidal_embedding(w * W_EMBEDDING_SCALE, width))
        mask = x_mask.to(step.dtype)
        cond = self.condition(x, f0_hz, e, drop_cond) * mask
        h = self.input_proj(z_t.to(step.dtype)) * mask
        skips: Tensor | None = None
        for layer in self.layers:
            h, skip = layer(h, step, cond, mask)
            skips = skip if skips is None else skips + skip
        assert skips is not None
        out = F.silu(self.skip_proj(skips * (mask / math.sqrt(len(self.layers)))))
        return self.output_proj(out) * mask

    def load_teacher_weights(self, teacher_state: Mapping[str, Tensor]) -> None:
        """Initialise an LCM student from a teacher's state dict (everything but the w-embedding).

        Raises:
            ValueError: the weights do not fit, or keys other than the w-embedding are missing.
        """
        try:
            missing, unexpected = self.load_state_dict(dict(teacher_state), strict=False)
        except RuntimeError as exc:
            raise ValueError(f"teacher weights do not fit this denoiser: {exc}") from exc
        other_missing = [k for k in missing if not k.startswith(W_EMBEDDING_KEYS_PREFIX)]
        if other_missing or unexpected:
            raise ValueError(
                f"teacher weights do not fit this denoiser: missing {other_missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
