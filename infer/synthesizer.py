"""The RVC-compatible VITS synthesizer: one class varied by :class:`SynthConfig`.

Inference runs as separate stages so that another stage (e.g. latent diffusion) can be inserted:
``speaker_embedding -> prior -> sample_prior -> flow_reverse -> decode``; :meth:`Synthesizer.infer`
composes them. Module names and state_dict key order match RVC's ``SynthesizerTrnMs{256,768}NSFsid``
(and ``_nono``) classes, so RVC checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from infer import rvc
from infer.nn.encoders import PosteriorEncoder, TextEncoder, make_embedding
from infer.nn.flows import ResidualCouplingBlock
from infer.nn.generator import DEFAULT_WINDOW_FRAMES, HiFiGANGenerator
from infer.nn.masks import rand_slice_segments, slice_segments
from infer.nn.weight_norm import WeightNormMixin, fold_weight_norm
from infer.synth_config import WHISPER_CONTENT_DIM, SynthConfig

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
FLOW_CONTEXT_FRAMES = 24
"""Frames before a streaming window's head that the flow still sees (RVC's ``skip_head - 24``)."""


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
        self,
        phone: Tensor,
        phone_lengths: Tensor,
        pitch: Tensor | None = None,
        g: Tensor | None = None,
        skip_head: int = 0,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Prior statistics from content features.

        Args:
            phone: (B, T, content_dim) float content features.
            phone_lengths: (B,) int64 valid frames.
            pitch: (B, T) int64 coarse pitch 1..255; required for pitch models, ignored otherwise.
            g: (B, gin, 1) speaker condition; RVC's text encoder does not use it (accepted so
                every stage takes the same condition).
            skip_head: leading frames cut after the attention (which sees all T frames).

        Returns:
            ``m_p, logs_p`` (B, inter, T - skip_head) and ``x_mask`` (B, 1, T - skip_head) float.
        """
        return self.enc_p(phone, phone_lengths, pitch if self.config.use_f0 else None, skip_head)

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
        output_frames: int | None = None,
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
            output_frames: resample the latent and the NSF harmonic source linearly to this many
                frames before decoding (RVC's streaming ``return_length2``, for formant shift);
                None or T keeps the length.

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
        return self.dec(
            z, f0_hz, g=g, sine_noise=sine_noise, generator=generator, output_frames=output_frames
        )

    @torch.no_grad()
    def latent_window(
        self,
        phone: Tensor,
        phone_lengths: Tensor,
        pitch: Tensor | None,
        pitchf: Tensor | None,
        sid: Tensor,
        window: tuple[int, int],
        *,
        noise_scale: float = DEFAULT_NOISE_SCALE,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """The decoder latent of frames ``[h, h + L)`` (see :meth:`infer_window`), before decoding.

        Returns:
            ``z`` (B, inter, L) unmasked, ``x_mask`` (B, 1, L), ``g`` (B, gin, 1) and the window's
            ``pitchf`` (B, L) (None without pitch).
        """
        skip_head, length = window
        if not (skip_head >= 0 and length > 0 and skip_head + length <= phone.shape[1]):
            raise ValueError(f"window {window} does not fit {phone.shape[1]} frames")
        flow_head = max(skip_head - FLOW_CONTEXT_FRAMES, 0)
        dec_head = skip_head - flow_head
        g = self.speaker_embedding(sid)
        m_p, logs_p, x_mask = self.prior(phone, phone_lengths, pitch, g, skip_head=flow_head)
        z_p = self.sample_prior(
            m_p, logs_p, x_mask, noise_scale=noise_scale, noise=noise, generator=generator
        )
        z = self.flow_reverse(z_p, x_mask, g)
        z = z[:, :, dec_head : dec_head + length]
        x_mask = x_mask[:, :, dec_head : dec_head + length]
        f0 = pitchf[:, skip_head : skip_head + length] if pitchf is not None else None
        return z, x_mask, g, f0

    @torch.no_grad()
    def infer_window(
        self,
        phone: Tensor,
        phone_lengths: Tensor,
        pitch: Tensor | None,
        pitchf: Tensor | None,
        sid: Tensor,
        window: tuple[int, int, int],
        *,
        noise_scale: float = DEFAULT_NOISE_SCALE,
        noise: Tensor | None = None,
        sine_noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Audio for frames ``[h, h + L)`` of a longer input: RVC's streaming ``infer`` with
        ``skip_head``, ``return_length`` and ``return_length2``.

        The text encoder sees all T frames and is cut at ``flow_head = max(h - 24, 0)``; the prior
        is sampled and the flow reversed over ``[flow_head, T)``; the decoder gets only the L
        returned frames (its NSF sine starts afresh there), resized to ``L2`` when ``L2 != L``.
        So context costs encoder and flow time, never vocoder time.

        Args:
            phone, phone_lengths, pitch, pitchf, sid: as for :meth:`infer` (T frames).
            window: ``(skip_head h, return_length L, return_length2 L2)`` in frames.
            noise_scale: prior temperature.
            noise: (B, inter, T - flow_head) prior noise; drawn when None.
            sine_noise: (B, L*hop[, 1]) NSF noise; drawn when None.
            generator: RNG for drawn noise.

        Returns:
            (B, 1, L2*hop) float32 waveform.
        """
        skip_head, length, length2 = window
        z, x_mask, g, f0 = self.latent_window(
            phone,
            phone_lengths,
            pitch,
            pitchf,
            sid,
            (skip_head, length),
            noise_scale=noise_scale,
            noise=noise,
            generator=generator,
        )
        audio = self.decode(
            z * x_mask, f0, g, sine_noise=sine_noise, generator=generator, output_frames=length2
        )
        return audio.float()

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
