"""The RVC-compatible VITS synthesizer: one class varied by :class:`SynthConfig`.

Inference runs as separate stages so that another stage (e.g. latent diffusion) can be inserted:
``speaker_embedding -> prior -> sample_prior -> flow_reverse -> decode``; :meth:`Synthesizer.infer`
composes them. Module names and state_dict key order match RVC's ``SynthesizerTrnMs{256,768}NSFsid``
(and ``_nono``) classes, so RVC checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from infer import rvc
from infer.nn.configs import ConfigError, check_config_keys
from infer.nn.encoders import PosteriorEncoder, TextEncoder, make_embedding
from infer.nn.flows import ResidualCouplingBlock
from infer.nn.generator import DEFAULT_WINDOW_FRAMES, HiFiGANGenerator
from infer.nn.masks import rand_slice_segments, slice_segments
from infer.nn.weight_norm import WeightNormMixin, fold_weight_norm

__all__ = [
    "DEFAULT_NOISE_SCALE",
    "POSTERIOR_ENCODER_PREFIX",
    "WHISPER_CONTENT_DIM",
    "SynthConfig",
    "Synthesizer",
    "TrainingDraws",
]

DEFAULT_NOISE_SCALE = 0.66666
"""RVC's prior temperature: ``z_p = m_p + exp(logs_p) * noise * 0.66666``."""
POSTERIOR_ENCODER_PREFIX = "enc_q."
"""Keys of the training-only posterior encoder; inference files leave them out."""

POSTERIOR_KERNEL_SIZE = 5
POSTERIOR_DILATION_RATE = 1
POSTERIOR_LAYERS = 16
FLOW_KERNEL_SIZE = 5
FLOW_DILATION_RATE = 1
FLOW_LAYERS = 3
FLOW_COUNT = 4

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


@dataclass(frozen=True)
class TrainingDraws:
    """The random draws of one training forward, given instead of drawn (replaying a reference step).

    Without them :meth:`Synthesizer.forward` draws, in this order, as RVC does: the posterior
    noise, the window starts, the NSF initial phase (zero for the fundamental, so not needed
    here) and the NSF noise.

    Attributes:
        posterior_noise: (B, inter, T) standard normal, the posterior sample's noise.
        slice_uniform: (B,) float32 uniform [0, 1), one window start per row.
        sine_noise: (B, segment_size * hop, 1) standard normal NSF noise (pitch models; None otherwise).
    """

    posterior_noise: Tensor
    slice_uniform: Tensor
    sine_noise: Tensor | None = None


class Synthesizer(nn.Module):
    """VITS generator as RVC uses it: content (+pitch) prior, coupling flow, HiFi-GAN/NSF decoder.

    Submodules: ``enc_p`` (:class:`TextEncoder`), ``dec`` (:class:`HiFiGANGenerator`), ``enc_q``
    (:class:`PosteriorEncoder`, training only), ``flow`` and ``emb_g`` (speaker table). They are
    registered in RVC's order so ``state_dict()`` lists keys exactly as RVC files do: for
    768-dim content RVC registers the text encoder last (384-dim whisper-tiny-en models keep
    that v2 order).

    Args:
        config: the hyper-parameters.
        use_posterior_encoder: build ``enc_q`` (needed for training; inference files omit it).
    """

    enc_p: TextEncoder
    dec: HiFiGANGenerator
    enc_q: PosteriorEncoder | None
    flow: ResidualCouplingBlock
    emb_g: nn.Embedding

    def __init__(self, config: SynthConfig, *, use_posterior_encoder: bool = True) -> None:
        super().__init__()
        self.config = config
        if rvc.text_encoder_last(config.content_dim):
            order = ("dec", "enc_q", "flow", "emb_g", "enc_p")
        else:
            order = ("enc_p", "dec", "enc_q", "flow", "emb_g")
        for name in order:
            if name == "enc_q" and not use_posterior_encoder:
                continue
            self.add_module(name, self._build(name))
        if not use_posterior_encoder:
            self.enc_q = None

    def _build(self, name: str) -> nn.Module:
        c = self.config
        if name == "enc_p":
            return TextEncoder(
                c.content_dim,
                c.inter_channels,
                c.hidden_channels,
                c.filter_channels,
                c.n_heads,
                c.n_layers,
                c.kernel_size,
                c.p_dropout,
                use_pitch=c.use_f0,
            )
        if name == "dec":
            return HiFiGANGenerator(
                c.inter_channels,
                c.resblock,
                c.resblock_kernel_sizes,
                c.resblock_dilation_sizes,
                c.upsample_rates,
                c.upsample_initial_channel,
                c.upsample_kernel_sizes,
                gin_channels=c.gin_channels,
                sample_rate=c.sample_rate if c.use_f0 else None,
            )
        if name == "enc_q":
            return PosteriorEncoder(
                c.spec_channels,
                c.inter_channels,
                c.hidden_channels,
                POSTERIOR_KERNEL_SIZE,
                POSTERIOR_DILATION_RATE,
                POSTERIOR_LAYERS,
                gin_channels=c.gin_channels,
            )
        if name == "flow":
            return ResidualCouplingBlock(
                c.inter_channels,
                c.hidden_channels,
                FLOW_KERNEL_SIZE,
                FLOW_DILATION_RATE,
                FLOW_LAYERS,
                FLOW_COUNT,
                gin_channels=c.gin_channels,
            )
        return make_embedding(c.spk_embed_dim, c.gin_channels)

    # ----------------------------------------------------------------- inference stages

    def speaker_embedding(self, sid: Tensor) -> Tensor:
        """sid: (B,) int64 speaker ids -> g: (B, gin, 1)."""
        return self.emb_g(sid).unsqueeze(-1)

    def prior(
        self, phone: Tensor, phone_lengths: Tensor, pitch: Tensor | None = None, g: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Prior statistics from content features.

        Args:
            phone: (B, T, content_dim) float content features.
            phone_lengths: (B,) int64 valid frames.
            pitch: (B, T) int64 coarse pitch 1..255; required for pitch models, ignored otherwise.
            g: (B, gin, 1) speaker condition; RVC's text encoder does not use it (accepted so
                every stage takes the same condition).

        Returns:
            ``m_p, logs_p`` (B, inter, T) and ``x_mask`` (B, 1, T) float.
        """
        return self.enc_p(phone, phone_lengths, pitch if self.config.use_f0 else None)

    @staticmethod
    def sample_prior(
        m_p: Tensor,
        logs_p: Tensor,
        x_mask: Tensor,
        *,
        noise_scale: float = DEFAULT_NOISE_SCALE,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """z_p = (m_p + exp(logs_p) * noise * noise_scale) * x_mask; all (B, inter, T)."""
        if noise is None:
            noise = torch.randn(m_p.shape, generator=generator, dtype=m_p.dtype, device=m_p.device)
        return (m_p + torch.exp(logs_p) * noise.to(m_p.dtype) * noise_scale) * x_mask

    def flow_reverse(self, z_p: Tensor, x_mask: Tensor, g: Tensor) -> Tensor:
        """Prior-space latent -> decoder latent: z_p (B, inter, T), x_mask (B, 1, T) -> z (B, inter, T)."""
        return self.flow(z_p, x_mask, g=g, reverse=True)

    def decode(
        self,
        z: Tensor,
        pitchf: Tensor | None,
        g: Tensor,
        *,
        sine_noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        frames: tuple[int, int] | None = None,
        window_frames: int = DEFAULT_WINDOW_FRAMES,
    ) -> Tensor:
        """Latent -> waveform.

        Args:
            z: (B, inter, T) latent (masked).
            pitchf: (B, T) float f0 in Hz, 0 when unvoiced; required for pitch models, ignored otherwise.
            g: (B, gin, 1) speaker condition.
            sine_noise: (B, T*hop) or (B, T*hop, 1) standard-normal NSF noise; drawn when None.
            generator: RNG for the drawn NSF noise.
            frames: ``(start, stop)`` decodes only those latent frames, ``window_frames`` at a time
                (same samples up to float rounding, memory of one window; see
                :meth:`HiFiGANGenerator.forward_frames`); None decodes all frames at once.
            window_frames: window length in frames when ``frames`` is given.

        Returns:
            (B, 1, T*hop) float waveform in [-1, 1] at ``config.sample_rate``; (B, 1, (stop - start)*hop)
            with ``frames``.
        """
        f0_hz = pitchf if self.config.use_f0 else None
        z = z.to(self.dec.conv_pre.weight.dtype)
        if frames is not None:
            return self.dec.forward_frames(
                z,
                f0_hz,
                g=g,
                sine_noise=sine_noise,
                generator=generator,
                start_frame=frames[0],
                stop_frame=frames[1],
                window_frames=window_frames,
            )
        return self.dec(z, f0_hz, g=g, sine_noise=sine_noise, generator=generator)

    def encode_posterior(
        self,
        spec: Tensor,
        spec_lengths: Tensor,
        g: Tensor,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Posterior sample: spec (B, spec_channels, T), spec_lengths (B,) -> z, m_q, logs_q, y_mask.

        ``noise`` (B, inter, T) is the standard-normal sample noise (drawn when None). Returns
        ``z, m_q, logs_q`` (B, inter, T) and ``y_mask`` (B, 1, T).
        """
        if self.enc_q is None:
            raise ValueError(
                "this synthesizer was built without the posterior encoder (use_posterior_encoder=False)"
            )
        return self.enc_q(spec, spec_lengths, g=g, generator=generator, noise=noise)

    @torch.no_grad()
    def infer(
        self,
        phone: Tensor,
        phone_lengths: Tensor,
        pitch: Tensor | None,
        pitchf: Tensor | None,
        sid: Tensor,
        *,
        noise_scale: float = DEFAULT_NOISE_SCALE,
        noise: Tensor | None = None,
        sine_noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Convert content features (+ pitch) to audio, like RVC's ``infer``.

        Args:
            phone: (B, T, content_dim) float content features.
            phone_lengths: (B,) int64 valid frames.
            pitch: (B, T) int64 coarse pitch (pitch models; None otherwise).
            pitchf: (B, T) float f0 in Hz (pitch models; None otherwise).
            sid: (B,) int64 speaker ids.
            noise_scale: prior temperature.
            noise: (B, inter, T) standard-normal prior noise; drawn when None.
            sine_noise: (B, T*hop[, 1]) NSF noise; drawn when None.
            generator: RNG for drawn noise.

        Returns:
            (B, 1, T*hop) float32 waveform, whatever dtype the model runs in.
        """
        g = self.speaker_embedding(sid)
        m_p, logs_p, x_mask = self.prior(phone, phone_lengths, pitch, g)
        z_p = self.sample_prior(
            m_p, logs_p, x_mask, noise_scale=noise_scale, noise=noise, generator=generator
        )
        z = self.flow_reverse(z_p, x_mask, g)
        audio = self.decode(z * x_mask, pitchf, g, sine_noise=sine_noise, generator=generator)
        return audio.float()

    # ----------------------------------------------------------------- training

    def forward(
        self,
        phone: Tensor,
        phone_lengths: Tensor,
        pitch: Tensor | None,
        pitchf: Tensor | None,
        spec: Tensor,
        spec_lengths: Tensor,
        sid: Tensor,
        generator: torch.Generator | None = None,
        draws: TrainingDraws | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]]:
        """Training pass on a random ``segment_size``-frame window (RVC's ``forward``).

        Args:
            phone: (B, T, content_dim) float; phone_lengths: (B,) int64.
            pitch: (B, T) int64 coarse pitch; pitchf: (B, T) float Hz (pitch models; None otherwise).
            spec: (B, spec_channels, T) float linear spectrogram; spec_lengths: (B,) int64.
            sid: (B,) int64 speaker ids.
            generator: RNG for the posterior noise, the window position and the NSF noise.
            draws: those draws given instead (``generator`` is then unused).

        Returns:
            ``(audio (B, 1, segment_size*hop), ids_slice (B,) int64, x_mask (B, 1, T),
            y_mask (B, 1, T), (z, z_p, m_p, logs_p, m_q, logs_q))``, the latents (B, inter, T).
        """
        segment = self.config.segment_size
        g = self.speaker_embedding(sid)
        m_p, logs_p, x_mask = self.prior(phone, phone_lengths, pitch, g)
        z, m_q, logs_q, y_mask = self.encode_posterior(
            spec, spec_lengths, g, generator=generator, noise=None if draws is None else draws.posterior_noise
        )
        z_p = self.flow(z, y_mask, g=g)
        z_slice, ids_slice = rand_slice_segments(
            z,
            spec_lengths,
            segment,
            generator=generator,
            uniform=None if draws is None else draws.slice_uniform,
        )
        pitchf_slice = None
        if self.config.use_f0:
            if pitchf is None:
                raise ValueError("a pitch model needs pitchf (B, T) in Hz for training")
            pitchf_slice = slice_segments(pitchf, ids_slice, segment)
        sine_noise = None if draws is None else draws.sine_noise
        audio = self.dec(z_slice, pitchf_slice, g=g, sine_noise=sine_noise, generator=generator)
        return audio, ids_slice, x_mask, y_mask, (z, z_p, m_p, logs_p, m_q, logs_q)

    # ----------------------------------------------------------------- weight norm

    @property
    def is_weight_norm_folded(self) -> bool:
        """True when every weight-normalised layer has been folded into a plain weight."""
        layers = [m for m in self.modules() if isinstance(m, WeightNormMixin)]
        return bool(layers) and all(layer.is_folded for layer in layers)

    def fold_weight_norm(self) -> None:
        """Fold weight norm into plain weights in place (faster inference; state_dict keys change)."""
        fold_weight_norm(self)
