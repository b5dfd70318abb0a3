"""Wide 1-D convolutions by FFT (overlap-save): the same numbers in fewer operations on the CPU.

A ``same``-padded conv with ``C`` channels and kernel span ``S = (k - 1) * d + 1`` costs
``2 * C * C * k`` operations per output sample done directly. By overlap-save with blocks of
``N`` samples it costs about ``4 * C * C * N / (N - S + 1)`` for the channel mixing (one complex
matrix product per frequency bin), plus two real FFTs of ``C`` channels; independent of ``k``
and of the dilation. For the NSF-HiFiGAN's kernel-7 and kernel-11 resblocks at 64 to 256
channels that is 1.3-2x faster than oneDNN's direct convolution on an AVX2 CPU (measured with
``bench/decoder_ops.py``), and the result differs from the direct one by float32 rounding only
(relative error ~4e-7).

Used only where it pays and is exact enough: inference (no autograd), float32 on the CPU, no
autocast, folded weight-norm weights (the spectra are cached per layer and must not go stale).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BLOCK_SAMPLES = 256
"""Overlap-save block length ``N`` (the fastest on the shapes measured; spans up to 51 fit)."""
ENV_SWITCH = "TIMBRE_FFT_CONV"
"""``0`` turns the FFT path off (``1``, the default, lets :func:`fft_pays` decide)."""


def fft_pays(channels: int, kernel_size: int) -> bool:
    """Whether a ``channels``-wide, ``kernel_size`` resblock conv runs faster by FFT on a CPU.

    From per-shape timings (``bench/decoder_ops.py``): kernel 11 from 64 channels and kernel 7
    from 128 channels gain; kernel 3, and 32-channel layers, run faster directly.
    """
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    return (kernel_size >= 11 and channels >= 64) or (kernel_size >= 7 and channels >= 128)


def fft_usable(x: Tensor, layer: nn.Conv1d) -> bool:
    """True when ``layer`` on ``x`` may take the FFT path (see the module docstring)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_cpu_enabled()
        and "weight" in layer._parameters  # folded weight norm (or a plain conv)
        and layer.groups == 1
        and layer.stride[0] == 1
        and layer.kernel_size[0] % 2 == 1
        and span(layer) * 2 <= BLOCK_SAMPLES
    )


def span(layer: nn.Conv1d) -> int:
    """Samples one output of ``layer`` depends on: ``(k - 1) * dilation + 1``."""
    return (layer.kernel_size[0] - 1) * layer.dilation[0] + 1


def _spectrum(layer: nn.Conv1d, block: int) -> Tensor:
    """``(block // 2 + 1, 2 C_in, 2 C_out)`` real form of the taps' conjugate spectra, cached.

    A complex product ``x * w`` per bin is written as one real matrix product on interleaved
    (re, im) pairs, ``[xr, xi] @ [[wr, wi], [-wi, wr]]``: batched real GEMMs spread over the
    threads where PyTorch's batched complex products on the CPU do not.
    """
    weight = layer.weight
    key = (block, weight.data_ptr(), weight._version)
    cached = getattr(layer, "_fft_spectrum", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    out_ch, in_ch, _ = weight.shape
    taps = weight.new_zeros(out_ch, in_ch, block)
    taps[:, :, 0 : span(layer) : layer.dilation[0]] = weight.detach()
    spectrum = torch.fft.rfft(taps).conj().permute(2, 1, 0)  # (F, C_in, C_out)
    re, im = spectrum.real, spectrum.imag
    real = torch.stack((torch.stack((re, im), dim=-1), torch.stack((-im, re), dim=-1)), dim=2)
    spectrum = real.reshape(spectrum.shape[0], 2 * in_ch, 2 * out_ch).contiguous()
    layer._fft_spectrum = (key, spectrum)
    return spectrum


def fft_conv1d(layer: nn.Conv1d, x: Tensor, block: int = BLOCK_SAMPLES) -> Tensor:
    """``layer(x)`` for an odd-kernel, stride-1, ``same``-padded conv, by overlap-save FFT.

    Args:
        layer: the convolution (its weight, bias, dilation and padding are used).
        x: (B, C, T) float32.
        block: FFT length; at least twice the layer's span.

    Returns:
        (B, C_out, T), equal to ``layer(x)`` up to float32 rounding.
    """
    batch, _, length = x.shape
    s = span(layer)
    pad = layer.padding[0]
    hop = block - s + 1
    n_blocks = -(-length // hop)
    padded = F.pad(x, (pad, n_blocks * hop + s - 1 - length - pad))
    frames = padded.unfold(-1, block, hop)  # (B, C, n_blocks, block)
    spectra = torch.view_as_real(torch.fft.rfft(frames, n=block))  # (B, C, n_blocks, F, 2)
    n_bins = spectra.shape[3]
    spectra = spectra.permute(0, 3, 2, 1, 4).reshape(batch, n_bins, n_blocks, -1)  # (B, F, n_blocks, 2C)
    mixed = torch.matmul(spectra, _spectrum(layer, block))  # (B, F, n_blocks, 2 C_out)
    mixed = torch.view_as_complex(mixed.view(batch, n_bins, n_blocks, -1, 2))
    y = torch.fft.irfft(mixed.permute(0, 3, 2, 1), n=block)[..., :hop]  # (B, C_out, n_blocks, hop)
    y = y.reshape(batch, -1, n_blocks * hop)[..., :length]
    if layer.bias is not None:
        y = y + layer.bias[:, None]
    return y
