"""HiFi-GAN decoder with an optional neural-source-filter (NSF) harmonic source.

One :class:`HiFiGANGenerator` class serves both RVC decoders: with ``sample_rate`` set it is
the NSF generator (pitch models: ``m_source`` + ``noise_convs`` registered first, as RVC does),
without it the plain HiFi-GAN generator (no-f0 models).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from infer.nn.fftconv import fft_pays, fft_resblock, fft_usable
from infer.nn.weight_norm import WeightNormConv1d, WeightNormConvTranspose1d, WeightNormMixin

__all__ = [
    "DEFAULT_WINDOW_FRAMES",
    "HiFiGANGenerator",
    "ResBlock1",
    "ResBlock2",
    "SineGenerator",
    "SourceModuleHnNSF",
    "apply_conv",
    "get_padding",
]

LEAKY_SLOPE = 0.1
FINAL_LEAKY_SLOPE = 0.01  # torch's default slope, used by RVC before conv_post
DEFAULT_WINDOW_FRAMES = 512
"""Latent frames per window of :meth:`HiFiGANGenerator.forward_frames` (5.1 s at 100 frames/s)."""
WINDOW_WIDTH_STEP_FRAMES = 256
"""Partial windows are widened to a multiple of this many frames (see ``forward_frames``)."""


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the length for an odd kernel with dilation."""
    return (kernel_size * dilation - dilation) // 2


def apply_conv(layer: nn.Module, x: Tensor) -> Tensor:
    """Run a 1-D (transposed) conv layer on ``(B, C, T)`` or on channels-last ``(B, C, 1, T)`` input.

    The 4-D form runs the same weights as a ``(1, k)`` 2-D convolution. On CPU, oneDNN runs
    channels-last 2-D convolutions without the per-call layout reorders that ``(B, C, T)``
    tensors need, which makes the decoder about 10-15% faster.
    """
    if x.dim() == 3:
        return layer(x)
    assert isinstance(layer, (nn.Conv1d, nn.ConvTranspose1d))
    weight = layer.normalized_weight() if isinstance(layer, WeightNormMixin) else layer.weight
    weight = weight.unsqueeze(2)
    stride, padding, dilation = (1, layer.stride[0]), (0, layer.padding[0]), (1, layer.dilation[0])
    if isinstance(layer, nn.ConvTranspose1d):
        output_padding = (0, layer.output_padding[0])
        return F.conv_transpose2d(
            x, weight, layer.bias, stride, padding, output_padding, layer.groups, dilation
        )
    return F.conv2d(x, weight, layer.bias, stride, padding, dilation, layer.groups)


def _to_channels_last(x: Tensor) -> Tensor:
    """(B, C, T) -> channels-last (B, C, 1, T)."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


class ResBlock1(nn.Module):
    """Three (dilated conv, conv) pairs with leaky ReLUs and residual adds (HiFi-GAN "1")."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            WeightNormConv1d(channels, channels, kernel_size, dilation=d, padding=get_padding(kernel_size, d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            WeightNormConv1d(channels, channels, kernel_size, padding=get_padding(kernel_size))
            for _ in dilations
        )

        self.use_fft = fft_pays(channels, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, T) or channels-last (B, C, 1, T) -> same shape.

        Wide kernels take the FFT path (:mod:`infer.nn.fftconv`) in CPU fp32 inference.
        """
        if self.use_fft and all(fft_usable(x, conv) for conv in (*self.convs1, *self.convs2)):
            return self._forward_fft(x)
        for conv1, conv2 in zip(self.convs1, self.convs2, strict=True):
            xt = apply_conv(conv1, F.leaky_relu(x, LEAKY_SLOPE))
            xt = apply_conv(conv2, F.leaky_relu_(xt, LEAKY_SLOPE))
            x = xt.add_(x)
        return x

    def _forward_fft(self, x: Tensor) -> Tensor:
        four_d = x.dim() == 4
        h = x.squeeze(2).contiguous() if four_d else x.contiguous()
        h = fft_resblock(h, list(zip(self.convs1, self.convs2, strict=True)), LEAKY_SLOPE)
        return _to_channels_last(h) if four_d else h


class ResBlock2(nn.Module):
    """One dilated conv per dilation with leaky ReLUs and residual adds (HiFi-GAN "2")."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            WeightNormConv1d(channels, channels, kernel_size, dilation=d, padding=get_padding(kernel_size, d))
            for d in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, T) or channels-last (B, C, 1, T) -> same shape."""
        for conv in self.convs:
            x = apply_conv(conv, F.leaky_relu(x, LEAKY_SLOPE)).add_(x)
        return x


class SineGenerator(nn.Module):
    """Frame-rate f0 -> sample-rate sine excitation with voicing-dependent noise (NSF source).

    The phase is the running sum of per-sample increments ``f0 / sample_rate`` (cycles) over
    the nearest-upsampled f0, wrapped at every frame start so float32 stays exact on long inputs
    (Wang et al. 2019, NSF eq. 3). Harmonic ``h`` uses ``h * phase`` plus a random initial phase
    (zero for the fundamental). Output ``sine * uv + noise_amp * noise`` with
    ``noise_amp = uv * noise_std + (1 - uv) * sine_amp / 3``.

    Args:
        sample_rate: output sample rate in Hz.
        harmonic_num: overtones above the fundamental (RVC: 0).
        sine_amp: sine amplitude.
        noise_std: noise std on voiced samples.
        voiced_threshold_hz: f0 above this counts as voiced.
    """

    def __init__(
        self,
        sample_rate: int,
        harmonic_num: int = 0,
        sine_amp: float = 0.1,
        noise_std: float = 0.003,
        voiced_threshold_hz: float = 0.0,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.dim = harmonic_num + 1
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.voiced_threshold_hz = voiced_threshold_hz

    @torch.no_grad()
    def forward(
        self,
        f0_hz: Tensor,
        upp: int,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Generate the excitation.

        Args:
            f0_hz: (B, T) float frame-rate f0 in Hz, 0 on unvoiced frames.
            upp: samples per frame (the hop length).
            noise: (B, T*upp, dim) or (B, T*upp) standard-normal noise; drawn when None.
            generator: RNG for noise and harmonic phases when they are drawn here.

        Returns:
            ``sine_waves`` (B, T*upp, dim) float and ``uv`` (B, T*upp, 1) float voicing.
        """
        batch, frames = f0_hz.shape
        f0_hz = f0_hz.float()
        increment = f0_hz / self.sample_rate  # cycles per sample, (B, T)
        frame_advance = torch.remainder(increment.double() * upp, 1.0)
        start = torch.remainder(torch.cumsum(frame_advance, dim=1) - frame_advance, 1.0).float()
        steps = torch.arange(1, upp + 1, dtype=torch.float32, device=f0_hz.device)
        phase = start.unsqueeze(2) + increment.unsqueeze(2) * steps  # (B, T, upp)
        phase = phase.reshape(batch, frames * upp, 1)
        if noise is None or self.dim > 1:
            # Drawn even without harmonics (then it is all zero), as RVC does, so the noise drawn
            # next comes from the same place in the random stream.
            initial = torch.rand(1, 1, self.dim, generator=generator, device=f0_hz.device)
            initial[..., 0] = 0.0
            if self.dim > 1:
                harmonics = torch.arange(1, self.dim + 1, dtype=torch.float32, device=f0_hz.device)
                phase = phase * harmonics + initial
        sines = torch.sin(phase * (2 * math.pi)) * self.sine_amp

        uv = (f0_hz > self.voiced_threshold_hz).float().repeat_interleave(upp, dim=1).unsqueeze(2)
        if noise is None:
            noise = torch.randn(sines.shape, generator=generator, device=sines.device)
        else:
            noise = noise.to(sines.dtype).reshape(batch, frames * upp, -1)
        noise_amp = uv * self.noise_std + (1.0 - uv) * (self.sine_amp / 3)
        return sines * uv + noise_amp * noise, uv


class SourceModuleHnNSF(nn.Module):
    """Harmonic-plus-noise source: ``tanh(l_linear(sine_waves))`` as one excitation channel."""

    def __init__(self, sample_rate: int, harmonic_num: int = 0) -> None:
        super().__init__()
        self.l_sin_gen = SineGenerator(sample_rate, harmonic_num)
        self.l_linear = nn.Linear(harmonic_num + 1, 1)

    def forward(
        self,
        f0_hz: Tensor,
        upp: int,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """f0_hz: (B, T) -> harmonic source (B, 1, T*upp)."""
        sine_waves, _ = self.l_sin_gen(f0_hz, upp, noise=noise, generator=generator)
        source = torch.tanh(self.l_linear(sine_waves.to(self.l_linear.weight.dtype)))
        return source.transpose(1, 2)


class HiFiGANGenerator(nn.Module):
    """Latent (B, C, T) -> waveform (B, 1, T * prod(upsample_rates)).

    Each stage: leaky ReLU, transposed-conv upsample, (+ NSF source via ``noise_convs``), then the
    mean of the stage's resblocks. Final leaky ReLU (slope 0.01), ``conv_post`` (no bias), tanh.

    Args:
        initial_channel: latent width.
        resblock: ``"1"`` or ``"2"``.
        resblock_kernel_sizes, resblock_dilation_sizes: one entry per resblock of a stage.
        upsample_rates, upsample_kernel_sizes: one entry per stage.
        upsample_initial_channel: width after ``conv_pre``; halves every stage.
        gin_channels: speaker-condition width (0: no ``cond``).
        sample_rate: output rate in Hz for the NSF source; None builds the plain generator.
    """

    def __init__(
        self,
        initial_channel: int,
        resblock: str,
        resblock_kernel_sizes: Sequence[int],
        resblock_dilation_sizes: Sequence[Sequence[int]],
        upsample_rates: Sequence[int],
        upsample_initial_channel: int,
        upsample_kernel_sizes: Sequence[int],
        gin_channels: int = 0,
        sample_rate: int | None = None,
    ) -> None:
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.upp = math.prod(upsample_rates)
        self.use_nsf = sample_rate is not None
        if sample_rate is not None:
            self.m_source = SourceModuleHnNSF(sample_rate)
            self.noise_convs = nn.ModuleList()
        else:
            self.m_source = None
            self.noise_convs = None
        self.conv_pre = nn.Conv1d(initial_channel, upsample_initial_channel, 7, 1, padding=3)
        block_class = ResBlock1 if resblock == "1" else ResBlock2

        self.ups = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(upsample_rates, upsample_kernel_sizes, strict=True)):
            channels = upsample_initial_channel // (2 ** (i + 1))
            self.ups.append(
                WeightNormConvTranspose1d(2 * channels, channels, kernel, rate, padding=(kernel - rate) // 2)
            )
            if self.noise_convs is not None:
                if i + 1 < len(upsample_rates):
                    stride = math.prod(upsample_rates[i + 1 :])
                    conv = nn.Conv1d(1, channels, kernel_size=2 * stride, stride=stride, padding=stride // 2)
                else:
                    conv = nn.Conv1d(1, channels, kernel_size=1)
                self.noise_convs.append(conv)

        self.resblocks = nn.ModuleList()
        channels = upsample_initial_channel
        for i in range(len(upsample_rates)):
            channels = upsample_initial_channel // (2 ** (i + 1))
            for kernel, dilations in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True):
                self.resblocks.append(block_class(channels, kernel, dilations))
        self.conv_post = nn.Conv1d(channels, 1, 7, 1, padding=3, bias=False)
        self.cond = nn.Conv1d(gin_channels, upsample_initial_channel, 1) if gin_channels else None

    def source(
        self, f0_hz: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """NSF harmonic source for frame-rate ``f0_hz`` (B, T) -> (B, 1, T*hop)."""
        if self.m_source is None:
            raise ValueError("this generator has no harmonic source (it was built without a sample rate)")
        return self.m_source(f0_hz, self.upp, noise=noise, generator=generator)

    def forward(
        self,
        x: Tensor,
        f0_hz: Tensor | None = None,
        g: Tensor | None = None,
        sine_noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        output_frames: int | None = None,
    ) -> Tensor:
        """Decode.

        Args:
            x: (B, C, T) latent.
            f0_hz: (B, T) float f0 in Hz (NSF generator only; ignored otherwise).
            g: (B, gin, 1) speaker condition.
            sine_noise: (B, T*hop[, 1]) noise for the NSF source; drawn when None.
            generator: RNG for drawn noise.
            output_frames: resample ``x`` (T -> output_frames frames) and the harmonic source
                (T*hop -> output_frames*hop samples) linearly (``align_corners=False``) before
                decoding; None or T keeps the length.

        Returns:
            (B, 1, T*hop) waveform in [-1, 1] (``output_frames * hop`` samples when given).
        """
        x, harmonic = self._prepare(x, f0_hz, g, sine_noise, generator, output_frames)
        return self._upsample(x, harmonic)

    def forward_frames(
        self,
        x: Tensor,
        f0_hz: Tensor | None = None,
        g: Tensor | None = None,
        sine_noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        start_frame: int = 0,
        stop_frame: int | None = None,
        window_frames: int = DEFAULT_WINDOW_FRAMES,
    ) -> Tensor:
        """Decode only latent frames ``[start_frame, stop_frame)``, a window of frames at a time.

        Equal to ``forward(...)[..., start_frame * hop : stop_frame * hop]`` up to float rounding:
        ``conv_pre`` and the NSF source (whose phase is a running sum) are computed over the whole
        input, then the upsampling stages run on windows of ``window_frames`` frames, each
        widened by :attr:`receptive_margin_frames` on both sides and cropped back. Memory holds one
        window's activations instead of the whole input's, and frames outside the range (RVC's
        padding, which the pipeline trims) are not decoded.

        Args:
            x, f0_hz, g, sine_noise, generator: as for :meth:`forward`; x: (B, C, T).
            start_frame: first latent frame to decode.
            stop_frame: one past the last frame (None: T).
            window_frames: frames decoded per window (> 0).

        Returns:
            (B, 1, (stop_frame - start_frame) * hop) waveform in [-1, 1].
        """
        frames = x.shape[-1]
        stop_frame = frames if stop_frame is None else stop_frame
        if not 0 <= start_frame <= stop_frame <= frames:
            raise ValueError(
                f"need 0 <= start_frame <= stop_frame <= {frames}, got {start_frame}..{stop_frame}"
            )
        if window_frames < 1:
            raise ValueError(f"window_frames must be positive, got {window_frames}")
        x, harmonic = self._prepare(x, f0_hz, g, sine_noise, generator)
        hop, margin = self.upp, self.receptive_margin_frames
        full_width = window_frames + 2 * margin
        out = x.new_empty(x.shape[0], 1, (stop_frame - start_frame) * hop)
        for start in range(start_frame, stop_frame, window_frames):
            stop = min(stop_frame, start + window_frames)
            lo, hi = max(0, start - margin), min(frames, stop + margin)
            # oneDNN keeps compiled kernels for every input width it has seen, each holding
            # buffers of that size; widening partial windows to a few fixed widths stops that
            # cache from growing with every new chunk length.
            step = WINDOW_WIDTH_STEP_FRAMES
            width = min(frames, full_width, -(-(hi - lo) // step) * step)
            lo = max(0, min(lo, frames - width))
            hi = lo + width
            part = harmonic[..., lo * hop : hi * hop] if harmonic is not None else None
            y = self._upsample(x[..., lo:hi], part)
            out[..., (start - start_frame) * hop : (stop - start_frame) * hop] = y[
                ..., (start - lo) * hop : (stop - lo) * hop
            ]
        return out

    @property
    def receptive_margin_frames(self) -> int:
        """Latent frames on each side that can change an output sample after ``conv_pre``.

        A safe upper bound summed over the chain: each transposed conv reaches
        ``ceil((k - 1 + p) / s) + 1`` input samples, each NSF ``noise_convs`` entry as many of its
        output samples, a resblock the sum of its convs' reaches ``d * (k - 1) / 2`` (the deepest
        block of a stage counts) and ``conv_post`` its padding; all in output samples, then
        rounded up to frames (11 for RVC's 40 kHz decoder).
        """
        reach = 0  # in output samples
        samples_per_step = self.upp  # output samples per sample at the current stage's input
        nk = self.num_kernels
        for i, up in enumerate(self.ups):
            reach += _strided_reach(up) * samples_per_step
            samples_per_step //= up.stride[0]
            if self.noise_convs is not None:
                reach += _strided_reach(self.noise_convs[i]) * samples_per_step
            blocks = self.resblocks[i * nk : (i + 1) * nk]
            reach += max(_resblock_reach(block) for block in blocks) * samples_per_step
        reach += self.conv_post.padding[0]
        return -(-reach // self.upp)

    def _prepare(
        self,
        x: Tensor,
        f0_hz: Tensor | None,
        g: Tensor | None,
        sine_noise: Tensor | None,
        generator: torch.Generator | None,
        output_frames: int | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``conv_pre`` (+ speaker condition) and the NSF source over the whole input."""
        harmonic = None
        if self.use_nsf:
            if f0_hz is None:
                raise ValueError("the NSF generator needs f0_hz (B, T) in Hz")
            harmonic = self.source(f0_hz, noise=sine_noise, generator=generator).to(x.dtype)
        if output_frames is not None and output_frames != x.shape[-1]:
            if harmonic is not None:
                harmonic = F.interpolate(harmonic, size=output_frames * self.upp, mode="linear")
            x = F.interpolate(x, size=output_frames, mode="linear")
        x = self.conv_pre(x)
        if g is not None and self.cond is not None:
            x = x + self.cond(g)
        return x, harmonic

    def _upsample(self, x: Tensor, harmonic: Tensor | None) -> Tensor:
        """Stages, ``conv_post`` and tanh: x (B, C0, T), harmonic (B, 1, T*hop) -> (B, 1, T*hop)."""
        use_channels_last = x.device.type == "cpu"
        if use_channels_last:
            x = _to_channels_last(x)
            harmonic = _to_channels_last(harmonic) if harmonic is not None else None
        nk = self.num_kernels
        for i, up in enumerate(self.ups):
            x = apply_conv(up, F.leaky_relu(x, LEAKY_SLOPE))
            if harmonic is not None:
                assert self.noise_convs is not None
                x = x.add_(apply_conv(self.noise_convs[i], harmonic))
            xs = self.resblocks[i * nk](x)
            for j in range(1, nk):
                xs = xs.add_(self.resblocks[i * nk + j](x))
            x = xs.div_(nk)
        x = apply_conv(self.conv_post, F.leaky_relu(x, FINAL_LEAKY_SLOPE))
        if use_channels_last:
            x = x.reshape(x.shape[0], 1, x.shape[-1])
        return torch.tanh(x)


def _strided_reach(layer: nn.Conv1d | nn.ConvTranspose1d) -> int:
    """Samples of the coarser side on each side that one output of a (transposed) conv depends on.

    An upper bound, ``ceil((k - 1 + p) / s) + 1``: input samples for a transposed conv, output
    samples for a strided conv.
    """
    kernel, stride, padding = layer.kernel_size[0], layer.stride[0], layer.padding[0]
    return -(-(kernel - 1 + padding) // stride) + 1


def _resblock_reach(block: nn.Module) -> int:
    """Samples on each side that one output of a resblock depends on: the sum of its convs' reaches."""
    return sum(
        conv.dilation[0] * (conv.kernel_size[0] - 1) // 2
        for conv in block.modules()
        if isinstance(conv, nn.Conv1d)
    )
