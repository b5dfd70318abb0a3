"""The synthesizer's typed config: RVC's 18 positional values plus content width and pitch use."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from infer import rvc
from infer.nn.configs import ConfigError, check_config_keys

__all__ = ["WHISPER_CONTENT_DIM", "SynthConfig"]

WHISPER_CONTENT_DIM = rvc.WHISPER_CONTENT_DIM
_CONTENT_DIMS = tuple(sorted({d for v in rvc.versions() for d in rvc.allowed_content_dims(v)}))


def _as_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"SynthConfig.{name} must be an int, got {value!r}")
    if value < minimum:
        raise ConfigError(f"SynthConfig.{name} must be >= {minimum}, got {value}")
    return value


def _as_int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ConfigError(f"SynthConfig.{name} must be a non-empty list of ints, got {value!r}")
    return tuple(_as_int(name, v) for v in value)


@dataclass(frozen=True)
class SynthConfig:
    """Synthesizer hyper-parameters: RVC's 18 config positions plus content width and pitch use.

    Attributes:
        spec_channels: linear-spectrogram bins of the posterior encoder (n_fft // 2 + 1).
        segment_size: training window in latent frames.
        inter_channels: latent width.
        hidden_channels: text-encoder / WaveNet width.
        filter_channels: text-encoder FFN width.
        n_heads: attention heads.
        n_layers: transformer layers.
        kernel_size: FFN conv kernel.
        p_dropout: dropout probability (training only).
        resblock: HiFi-GAN resblock type, ``"1"`` or ``"2"``.
        resblock_kernel_sizes: kernel of each resblock in a stage (odd).
        resblock_dilation_sizes: dilations of each resblock (3 for type "1", 2 for type "2").
        upsample_rates: decoder stage strides; their product is the hop length.
        upsample_initial_channel: decoder width after ``conv_pre``.
        upsample_kernel_sizes: transposed-conv kernel of each stage.
        spk_embed_dim: number of speakers in ``emb_g``.
        gin_channels: speaker-embedding width.
        sample_rate: output sample rate in Hz.
        content_dim: content-feature width (256: HuBERT layer 9 + final_proj; 768: layer 12;
            384: Timbre's offline ``whisper-tiny-en`` encoder, a model RVC and Applio cannot run:
            their loaders build a 256- or 768-wide content projection from the file's version).
        use_f0: pitch model (coarse-pitch embedding + NSF decoder) or not.
    """

    spec_channels: int
    segment_size: int
    inter_channels: int
    hidden_channels: int
    filter_channels: int
    n_heads: int
    n_layers: int
    kernel_size: int
    p_dropout: float
    resblock: str
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    upsample_rates: tuple[int, ...]
    upsample_initial_channel: int
    upsample_kernel_sizes: tuple[int, ...]
    spk_embed_dim: int
    gin_channels: int
    sample_rate: int
    content_dim: int
    use_f0: bool

    def __post_init__(self) -> None:
        for name in (
            "spec_channels",
            "segment_size",
            "inter_channels",
            "hidden_channels",
            "filter_channels",
            "n_heads",
            "n_layers",
            "kernel_size",
            "upsample_initial_channel",
            "spk_embed_dim",
            "gin_channels",
            "sample_rate",
        ):
            _as_int(name, getattr(self, name))
        set_ = object.__setattr__
        if isinstance(self.p_dropout, bool) or not isinstance(self.p_dropout, (int, float)):
            raise ConfigError(f"SynthConfig.p_dropout must be a number, got {self.p_dropout!r}")
        set_(self, "p_dropout", float(self.p_dropout))
        if not 0.0 <= self.p_dropout < 1.0:
            raise ConfigError(f"SynthConfig.p_dropout must be in [0, 1), got {self.p_dropout}")
        if not isinstance(self.use_f0, bool):
            raise ConfigError(f"SynthConfig.use_f0 must be a bool, got {self.use_f0!r}")
        if self.content_dim not in _CONTENT_DIMS:
            raise ConfigError(
                f"SynthConfig.content_dim must be one of {_CONTENT_DIMS}, got {self.content_dim!r}"
            )
        if self.resblock not in ("1", "2"):
            raise ConfigError(f"SynthConfig.resblock must be '1' or '2', got {self.resblock!r}")
        for name in ("resblock_kernel_sizes", "upsample_rates", "upsample_kernel_sizes"):
            set_(self, name, _as_int_tuple(name, getattr(self, name)))
        dilations = self.resblock_dilation_sizes
        if isinstance(dilations, (str, bytes)) or not isinstance(dilations, Sequence):
            raise ConfigError(
                f"SynthConfig.resblock_dilation_sizes must be a list of lists, got {dilations!r}"
            )
        set_(
            self,
            "resblock_dilation_sizes",
            tuple(_as_int_tuple("resblock_dilation_sizes", d) for d in dilations),
        )
        self._check_shapes()

    def _check_shapes(self) -> None:
        if self.inter_channels % 2:
            raise ConfigError(
                f"SynthConfig.inter_channels must be even (the flow splits it), got {self.inter_channels}"
            )
        if self.hidden_channels % self.n_heads:
            raise ConfigError(
                f"SynthConfig.hidden_channels ({self.hidden_channels}) must be divisible by "
                f"n_heads ({self.n_heads})"
            )
        if len(self.resblock_dilation_sizes) != len(self.resblock_kernel_sizes):
            raise ConfigError("SynthConfig.resblock_dilation_sizes needs one entry per resblock kernel size")
        per_block = 3 if self.resblock == "1" else 2
        if any(len(d) != per_block for d in self.resblock_dilation_sizes):
            raise ConfigError(
                f"SynthConfig: resblock '{self.resblock}' takes {per_block} dilations per block"
            )
        if any(k % 2 == 0 for k in self.resblock_kernel_sizes):
            raise ConfigError(
                f"SynthConfig.resblock_kernel_sizes must be odd, got {self.resblock_kernel_sizes}"
            )
        if len(self.upsample_kernel_sizes) != len(self.upsample_rates):
            raise ConfigError("SynthConfig.upsample_kernel_sizes needs one entry per upsample rate")
        for rate, kernel in zip(self.upsample_rates, self.upsample_kernel_sizes, strict=True):
            if kernel < rate or (kernel - rate) % 2:
                raise ConfigError(
                    f"SynthConfig: upsample kernel {kernel} must be >= its rate {rate} and differ from it "
                    "by an even number"
                )
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            raise ConfigError(
                f"SynthConfig.upsample_initial_channel ({self.upsample_initial_channel}) must be divisible "
                "by "
                f"2**{len(self.upsample_rates)} (it halves at every stage)"
            )
        if self.use_f0:
            strides = [math.prod(self.upsample_rates[i + 1 :]) for i in range(len(self.upsample_rates) - 1)]
            if any(s % 2 for s in strides):
                raise ConfigError(
                    "SynthConfig: with use_f0 every product of trailing upsample rates must be even, "
                    f"got {strides}"
                )

    @property
    def hop_length(self) -> int:
        """Output samples per latent frame (product of ``upsample_rates``)."""
        return math.prod(self.upsample_rates)

    @classmethod
    def preset(cls, version: str, sample_rate: int, use_f0: bool) -> SynthConfig:
        """RVC's real-size config for ``version`` ``'v1'``/``'v2'`` at 32000, 40000 or 48000 Hz."""
        try:
            spec_channels, rates, kernels = rvc.decoder_preset(version, sample_rate)
        except rvc.LayoutError as exc:
            raise ConfigError(f"no synthesizer preset: {exc}") from exc
        return cls(
            spec_channels=spec_channels,
            segment_size=32,
            inter_channels=192,
            hidden_channels=192,
            filter_channels=768,
            n_heads=2,
            n_layers=6,
            kernel_size=3,
            p_dropout=0.0,
            resblock="1",
            resblock_kernel_sizes=(3, 7, 11),
            resblock_dilation_sizes=((1, 3, 5), (1, 3, 5), (1, 3, 5)),
            upsample_rates=rates,
            upsample_initial_channel=512,
            upsample_kernel_sizes=kernels,
            spk_embed_dim=109,
            gin_channels=256,
            sample_rate=sample_rate,
            content_dim=rvc.content_dim(version),
            use_f0=use_f0,
        )

    @classmethod
    def from_rvc_config(
        cls, config_list: Sequence[Any], *, version: str, use_f0: bool, content_dim: int | None = None
    ) -> SynthConfig:
        """Build from RVC's 18-item ``config`` list (a ``'40k'``-style sample rate is accepted).

        ``content_dim`` None takes the version's HuBERT width; 384 (whisper-tiny-en) is valid only
        with version ``'v2'``, whose file layout such models keep.
        """
        try:
            values = rvc.config_values(config_list)
            allowed = rvc.allowed_content_dims(version)
        except rvc.LayoutError as exc:
            raise ConfigError(str(exc)) from exc
        if content_dim is None:
            content_dim = allowed[0]
        elif content_dim not in allowed:
            raise ConfigError(
                f"a version {version!r} model cannot have {content_dim}-dim content; "
                f"{WHISPER_CONTENT_DIM}-dim (whisper-tiny-en) models are stored as 'v2'"
            )
        return cls(**values, content_dim=content_dim, use_f0=bool(use_f0))

    def to_rvc_config(self) -> list[Any]:
        """RVC's 18-item ``config`` list, with the python types RVC writes (lists, nested lists)."""
        return rvc.config_list(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SynthConfig:
        """Inverse of :meth:`to_dict`; unknown or missing keys are a :class:`ConfigError`."""
        check_config_keys(cls, data, require_all=True)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict of every field (tuples become lists)."""
        out = asdict(self)
        for f in fields(self):
            value = out[f.name]
            if isinstance(value, tuple):
                out[f.name] = [list(v) if isinstance(v, tuple) else v for v in value]
        return out
