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

MIN_BLOCK_SAMPLES = 256
"""Shortest overlap-save block ``N``; a layer's block is the next power of two >= twice its span."""
MAX_BLOCK_SAMPLES = 1024
ENV_SWITCH = "TIMBRE_FFT_CONV"
"""``0`` turns the FFT path off (``1``, the default, lets :func:`fft_pays` decide)."""


def fft_pays(channels: int, kernel_size: int) -> bool:
    """Whether a ``channels``-wide, ``kernel_size`` resblock conv runs faster by FFT on a CPU.

    From per-shape timings (``bench/decoder_ops.py``): kernel 11 from 64 channels and kernel 7
    from 128 channels gain; kernel 3, and 32-channel layers, run faster directly.
    """
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    return kernel_size >= 11 and channels >= 128


def fft_usable(x: Tensor, layer: nn.Conv1d) -> bool:
    """True when ``layer`` on ``x`` may take the FFT path (see the module docstring)."""
    exporting = torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
    return (
        not exporting  # ONNX has no FFT operators: graphs keep the direct convolution
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and "weight" in layer._parameters  # folded weight norm (or a plain conv)
        and layer.groups == 1
        and layer.stride[0] == 1
        and layer.kernel_size[0] % 2 == 1
        and span(layer) * 2 <= MAX_BLOCK_SAMPLES
    )


def block_for(span_samples: int) -> int:
    """The overlap-save block for a kernel span: at least :data:`MIN_BLOCK_SAMPLES`, >= 2 spans."""
    block = MIN_BLOCK_SAMPLES
    while block < 2 * span_samples:
        block *= 2
    return block


def span(layer: nn.Conv1d) -> int:
    """Samples one output of ``layer`` depends on: ``(k - 1) * dilation + 1``."""
    return (layer.kernel_size[0] - 1) * layer.dilation[0] + 1


def _spectrum(layer: nn.Conv1d, block: int) -> Tensor:
    """``(block // 2 + 1, C_in, C_out)`` conjugate spectra of the layer's taps, cached on it.

    Each tap sits at ``j * dilation`` in a block of zeros, so its spectrum is a ``k``-term sum:
    one small matrix product with a float64 DFT basis (an FFT of the zero-padded taps costs
    seconds for a real-size decoder).
    """
    weight = layer.weight
    # Inference tensors cannot change in place, so they carry no version counter.
    key = (block, weight.data_ptr(), 0 if weight.is_inference() else weight._version)
    cached = getattr(layer, "_fft_spectrum", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    out_ch, in_ch, k = weight.shape
    positions = torch.arange(k, dtype=torch.float64) * layer.dilation[0]
    bins = torch.arange(block // 2 + 1, dtype=torch.float64)
    angle = 2 * torch.pi * positions[:, None] * bins[None, :] / block  # (k, F)
    # conj(sum_j w_j e^{-i angle}) = sum_j w_j e^{+i angle}
    basis = torch.polar(torch.ones_like(angle), angle).to(torch.complex64)
    taps = weight.detach().reshape(out_ch * in_ch, k).to(torch.complex64)
    spectrum = (taps @ basis).reshape(out_ch, in_ch, -1).permute(2, 1, 0).contiguous()
    layer._fft_spectrum = (key, spectrum)
    return spectrum


def fft_conv1d(layer: nn.Conv1d, x: Tensor, block: int | None = None) -> Tensor:
    """``layer(x)`` for an odd-kernel, stride-1, ``same``-padded conv, by overlap-save FFT.

    Args:
        layer: the convolution (its weight, bias, dilation and padding are used).
        x: (B, C, T) float32.
        block: FFT length, at least twice the layer's span (None: :func:`block_for`).

    Returns:
        (B, C_out, T), equal to ``layer(x)`` up to float32 rounding.
    """
    batch, _, length = x.shape
    s = span(layer)
    block = block_for(s) if block is None else block
    pad = layer.padding[0]
    hop = block - s + 1
    n_blocks = -(-length // hop)
    padded = F.pad(x, (pad, n_blocks * hop + s - 1 - length - pad))
    frames = padded.unfold(-1, block, hop)  # (B, C, n_blocks, block)
    # Bins first and contiguous: PyTorch's batched complex product spreads over the threads then.
    spectra = torch.fft.rfft(frames, n=block).permute(0, 3, 2, 1).contiguous()  # (B, F, n_blocks, C)
    mixed = torch.matmul(spectra, _spectrum(layer, block))  # (B, F, n_blocks, C_out)
    y = torch.fft.irfft(mixed.permute(0, 3, 2, 1), n=block)[..., :hop]  # (B, C_out, n_blocks, hop)
    y = y.reshape(batch, -1, n_blocks * hop)[..., :length]
    if layer.bias is not None:
        y = y + layer.bias[:, None]
    return y
