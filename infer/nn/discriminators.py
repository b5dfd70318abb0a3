"""HiFi-GAN multi-period + scale discriminator, varied by a config of periods (RVC v1/v2 presets)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from infer import rvc
from infer.nn.configs import ConfigError, check_config_keys
from infer.nn.weight_norm import WeightNormConv1d, WeightNormConv2d

__all__ = ["DiscriminatorConfig", "MultiPeriodDiscriminator", "PeriodDiscriminator", "ScaleDiscriminator"]

LEAKY_SLOPE = 0.1


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Periods of the period sub-discriminators (the scale discriminator always comes first).

    Attributes:
        periods: one :class:`PeriodDiscriminator` per entry, each >= 2 (RVC v1: 2..17, v2: 2..37).
        kernel_size: period-discriminator kernel along time.
        stride: period-discriminator stride along time.
        width_divisor: divide every hidden width (and group count) by this; 1 = RVC's networks,
            larger values give small discriminators for tests and quick trials.
    """

    periods: tuple[int, ...]
    kernel_size: int = 5
    stride: int = 3
    width_divisor: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "periods", tuple(int(p) for p in self.periods))
        if not self.periods:
            raise ConfigError("DiscriminatorConfig.periods must not be empty")
        if any(p < 1 for p in self.periods):
            raise ConfigError(f"DiscriminatorConfig.periods must be >= 1, got {self.periods}")
        if self.kernel_size < 1 or self.stride < 1:
            raise ConfigError("DiscriminatorConfig.kernel_size and stride must be >= 1")
        if self.width_divisor not in (1, 2, 4, 8, 16):
            raise ConfigError(
                f"DiscriminatorConfig.width_divisor must be 1, 2, 4, 8 or 16, got {self.width_divisor}"
            )

    @classmethod
    def preset(cls, version: str) -> DiscriminatorConfig:
        """RVC's discriminator for ``version`` ``'v1'`` (6 periods) or ``'v2'`` (8 periods)."""
        try:
            return cls(periods=rvc.layout(version).discriminator_periods)
        except rvc.LayoutError as exc:
            raise ConfigError(f"unknown discriminator preset: {exc}") from exc

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiscriminatorConfig:
        """Build from a plain dict; unknown keys are an error."""
        check_config_keys(cls, data, require_all=False)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-friendly dict."""
        return {
            "periods": list(self.periods),
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "width_divisor": self.width_divisor,
        }


class ScaleDiscriminator(nn.Module):
    """Grouped strided 1-D convs over the raw waveform (HiFi-GAN/MelGAN "DiscriminatorS")."""

    def __init__(self, width_divisor: int = 1) -> None:
        super().__init__()

        def w(channels: int) -> int:
            return max(1, channels // width_divisor)

        self.convs = nn.ModuleList(
            [
                WeightNormConv1d(1, w(16), 15, 1, padding=7),
                WeightNormConv1d(w(16), w(64), 41, 4, groups=w(4), padding=20),
                WeightNormConv1d(w(64), w(256), 41, 4, groups=w(16), padding=20),
                WeightNormConv1d(w(256), w(1024), 41, 4, groups=w(64), padding=20),
                WeightNormConv1d(w(1024), w(1024), 41, 4, groups=w(256), padding=20),
                WeightNormConv1d(w(1024), w(1024), 5, 1, padding=2),
            ]
        )
        self.conv_post = WeightNormConv1d(w(1024), 1, 3, 1, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """x: (B, 1, L) -> (logits (B, N), feature maps)."""
        fmap = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LEAKY_SLOPE)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return x.flatten(1), fmap


class PeriodDiscriminator(nn.Module):
    """2-D convs over the waveform folded to (L / period, period) (HiFi-GAN "DiscriminatorP")."""

    def __init__(self, period: int, kernel_size: int = 5, stride: int = 3, width_divisor: int = 1) -> None:
        super().__init__()
        self.period = period
        pad = ((kernel_size - 1) // 2, 0)
        widths = [1] + [max(1, c // width_divisor) for c in (32, 128, 512, 1024)]
        layers = [
            WeightNormConv2d(c_in, c_out, (kernel_size, 1), (stride, 1), padding=pad)
            for c_in, c_out in itertools.pairwise(widths)
        ]
        layers.append(WeightNormConv2d(widths[-1], widths[-1], (kernel_size, 1), (1, 1), padding=pad))
        self.convs = nn.ModuleList(layers)
        self.conv_post = WeightNormConv2d(widths[-1], 1, (3, 1), (1, 1), padding=(1, 0))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """x: (B, 1, L) -> (logits (B, N), feature maps); L is reflect-padded to a multiple of period."""
        batch, channels, length = x.shape
        if length % self.period:
            n_pad = self.period - length % self.period
            x = F.pad(x, (0, n_pad), "reflect")
            length += n_pad
        x = x.view(batch, channels, length // self.period, self.period)
        fmap = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LEAKY_SLOPE)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return x.flatten(1), fmap


class MultiPeriodDiscriminator(nn.Module):
    """A scale discriminator followed by one period discriminator per configured period.

    State-dict keys match RVC's ``MultiPeriodDiscriminator`` (v1 preset) and
    ``MultiPeriodDiscriminatorV2`` (v2 preset) with ``use_spectral_norm=False``.
    """

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        discriminators: list[nn.Module] = [ScaleDiscriminator(config.width_divisor)]
        discriminators += [
            PeriodDiscriminator(p, config.kernel_size, config.stride, config.width_divisor)
            for p in config.periods
        ]
        self.discriminators = nn.ModuleList(discriminators)

    def forward(
        self, y: Tensor, y_hat: Tensor
    ) -> tuple[list[Tensor], list[Tensor], list[list[Tensor]], list[list[Tensor]]]:
        """Score real ``y`` and generated ``y_hat``, both (B, 1, L).

        Returns:
            ``(y_d_rs, y_d_gs, fmap_rs, fmap_gs)``: per-discriminator logits for real and
            generated audio and their feature-map lists, in discriminator order.
        """
        y_d_rs, y_d_gs, fmap_rs, fmap_gs = [], [], [], []
        for disc in self.discriminators:
            y_d_r, fmap_r = disc(y)
            y_d_g, fmap_g = disc(y_hat)
            y_d_rs.append(y_d_r)
            y_d_gs.append(y_d_g)
            fmap_rs.append(fmap_r)
            fmap_gs.append(fmap_g)
        return y_d_rs, y_d_gs, fmap_rs, fmap_gs
