"""HiFi-GAN multi-period + scale discriminator, varied by a config of periods and widths (RVC presets)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from infer import rvc
from infer.nn.configs import ConfigError, check_config_keys
from infer.nn.weight_norm import WeightNormConv1d, WeightNormConv2d

__all__ = ["DiscriminatorConfig", "MultiPeriodDiscriminator", "PeriodDiscriminator", "ScaleDiscriminator"]

LEAKY_SLOPE = 0.1
SCALE_CHANNELS = (16, 64, 256, 1024, 1024, 1024)
"""Output widths of RVC's six ``DiscriminatorS`` convs."""
SCALE_GROUPS = (1, 4, 16, 64, 256, 1)
"""Group counts of RVC's six ``DiscriminatorS`` convs."""
PERIOD_CHANNELS = (32, 128, 512, 1024, 1024)
"""Output widths of RVC's five ``DiscriminatorP`` convs (the last one has stride 1)."""
# (kernel, stride, padding) of the scale discriminator's convs, fixed in RVC's class.
_SCALE_SHAPES = ((15, 1, 7), (41, 4, 20), (41, 4, 20), (41, 4, 20), (41, 4, 20), (5, 1, 2))
_WIDTH_DIVISORS = (1, 2, 4, 8, 16)


def _int_tuple(name: str, value: Any, length: int) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != length:
        raise ConfigError(f"DiscriminatorConfig.{name} must be {length} ints, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"DiscriminatorConfig.{name} must hold positive ints, got {value!r}")
        out.append(v)
    return tuple(out)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Periods and widths of the multi-period discriminator (the scale discriminator comes first).

    Kernels, strides and paddings are RVC's; only the widths vary, so that narrow discriminators
    (tests, the training goldens) keep RVC's key names and forward code.

    Attributes:
        periods: one :class:`PeriodDiscriminator` per entry, each >= 1 (RVC v1: 2..17, v2: 2..37).
        kernel_size: period-discriminator kernel along time.
        stride: period-discriminator stride along time.
        scale_channels: output width of each of the six scale-discriminator convs.
        scale_groups: group count of each of the six scale-discriminator convs.
        period_channels: output width of each of the five period-discriminator convs.
        width_divisor: divide every width and group count above by this (at least 1 each);
            1 = as given, larger values give small discriminators for tests and quick trials.
    """

    periods: tuple[int, ...]
    kernel_size: int = 5
    stride: int = 3
    scale_channels: tuple[int, ...] = SCALE_CHANNELS
    scale_groups: tuple[int, ...] = SCALE_GROUPS
    period_channels: tuple[int, ...] = PERIOD_CHANNELS
    width_divisor: int = 1

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if isinstance(self.periods, (str, bytes)) or not isinstance(self.periods, Sequence):
            raise ConfigError(f"DiscriminatorConfig.periods must be a list of ints, got {self.periods!r}")
        set_(self, "periods", tuple(int(p) for p in self.periods))
        if not self.periods:
            raise ConfigError("DiscriminatorConfig.periods must not be empty")
        if any(p < 1 for p in self.periods):
            raise ConfigError(f"DiscriminatorConfig.periods must be >= 1, got {self.periods}")
        if self.kernel_size < 1 or self.stride < 1:
            raise ConfigError("DiscriminatorConfig.kernel_size and stride must be >= 1")
        if self.width_divisor not in _WIDTH_DIVISORS:
            raise ConfigError(
                f"DiscriminatorConfig.width_divisor must be one of {_WIDTH_DIVISORS}, "
                f"got {self.width_divisor}"
            )
        set_(self, "scale_channels", _int_tuple("scale_channels", self.scale_channels, len(SCALE_CHANNELS)))
        set_(self, "scale_groups", _int_tuple("scale_groups", self.scale_groups, len(SCALE_GROUPS)))
        set_(
            self, "period_channels", _int_tuple("period_channels", self.period_channels, len(PERIOD_CHANNELS))
        )
        widths = self.scale_widths()
        for index, (c_in, c_out, groups) in enumerate(widths):
            if c_in % groups or c_out % groups:
                raise ConfigError(
                    f"DiscriminatorConfig: scale conv {index} has {c_in} -> {c_out} channels, which "
                    f"{groups} groups do not divide"
                )

    def _narrow(self, width: int) -> int:
        return max(1, width // self.width_divisor)

    def scale_widths(self) -> list[tuple[int, int, int]]:
        """``(in, out, groups)`` of each scale-discriminator conv, ``width_divisor`` applied."""
        outs = [self._narrow(c) for c in self.scale_channels]
        groups = [self._narrow(g) for g in self.scale_groups]
        ins = [1, *outs[:-1]]
        return list(zip(ins, outs, groups, strict=True))

    def period_widths(self) -> list[int]:
        """Output width of each period-discriminator conv, ``width_divisor`` applied."""
        return [self._narrow(c) for c in self.period_channels]

    @classmethod
    def preset(cls, version: str) -> DiscriminatorConfig:
        """RVC's discriminator for ``version`` ``'v1'`` (6 periods) or ``'v2'`` (8 periods)."""
        try:
            return cls(periods=rvc.layout(version).discriminator_periods)
        except rvc.LayoutError as exc:
            raise ConfigError(f"unknown discriminator preset: {exc}") from exc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiscriminatorConfig:
        """Build from a plain dict; unknown keys are an error."""
        check_config_keys(cls, data, require_all=False)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-friendly dict."""
        return {
            "periods": list(self.periods),
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "scale_channels": list(self.scale_channels),
            "scale_groups": list(self.scale_groups),
            "period_channels": list(self.period_channels),
            "width_divisor": self.width_divisor,
        }


class ScaleDiscriminator(nn.Module):
    """Grouped strided 1-D convs over the raw waveform (HiFi-GAN/MelGAN "DiscriminatorS").

    Args:
        widths: ``(in, out, groups)`` of the six convs (:meth:`DiscriminatorConfig.scale_widths`);
            None = RVC's.
    """

    def __init__(self, widths: Sequence[tuple[int, int, int]] | None = None) -> None:
        super().__init__()
        if widths is None:
            widths = DiscriminatorConfig(periods=(2,)).scale_widths()
        self.convs = nn.ModuleList(
            [
                WeightNormConv1d(c_in, c_out, kernel, stride, groups=groups, padding=padding)
                for (c_in, c_out, groups), (kernel, stride, padding) in zip(
                    widths, _SCALE_SHAPES, strict=True
                )
            ]
        )
        self.conv_post = WeightNormConv1d(widths[-1][1], 1, 3, 1, padding=1)

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
    """2-D convs over the waveform folded to (L / period, period) (HiFi-GAN "DiscriminatorP").

    Args:
        period: fold length.
        kernel_size: kernel along time.
        stride: stride along time of every conv but the last.
        channels: output width of each of the five convs.
    """

    def __init__(
        self,
        period: int,
        kernel_size: int = 5,
        stride: int = 3,
        channels: Sequence[int] = PERIOD_CHANNELS,
    ) -> None:
        super().__init__()
        self.period = period
        pad = ((kernel_size - 1) // 2, 0)
        ins = [1, *channels[:-1]]
        strides = [stride] * (len(channels) - 1) + [1]
        self.convs = nn.ModuleList(
            [
                WeightNormConv2d(c_in, c_out, (kernel_size, 1), (s, 1), padding=pad)
                for c_in, c_out, s in zip(ins, channels, strides, strict=True)
            ]
        )
        self.conv_post = WeightNormConv2d(channels[-1], 1, (3, 1), (1, 1), padding=(1, 0))

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
        discriminators: list[nn.Module] = [ScaleDiscriminator(config.scale_widths())]
        discriminators += [
            PeriodDiscriminator(p, config.kernel_size, config.stride, config.period_widths())
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
