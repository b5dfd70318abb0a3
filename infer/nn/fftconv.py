"""Wide 1-D convolutions by FFT (overlap-save): the same numbers in fewer operations on the CPU.

A ``same``-padded conv with ``C`` channels and kernel span ``S = (k - 1) * d + 1`` costs
``2 * C * C * k`` operations per output sample done directly. By overlap-save with blocks of
``N`` samples it costs about ``4 * C * C * N / (N - S + 1)`` for the channel mixing (one complex
matrix product per frequency bin), plus two real FFTs of ``C`` channels; independent of ``k``
and of the dilation. For the NSF-HiFiGAN's kernel-7 and kernel-11 resblocks at 128 and 256
channels, run whole by :func:`fft_resblock`, that is 1.1-2.4x faster than oneDNN's direct
convolution on an AVX2 CPU (measured with ``bench/decoder_ops.py``), and the result differs from
the direct one by float32 rounding only (relative error ~4e-7).

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
WIDE_MIN_BLOCK_SAMPLES = 128
"""Shortest block for layers of :data:`WIDE_CHANNELS` or more: their cached spectra take
``(N/2 + 1) * C * C`` complex numbers (68 MB per 256-channel layer at N = 256), and N = 128
halves that at the same speed there."""
WIDE_CHANNELS = 256
MAX_BLOCK_SAMPLES = 1024
ENV_SWITCH = "TIMBRE_FFT_CONV"
"""``0`` turns the FFT path off (``1``, the default, lets :func:`fft_pays` decide)."""


def fft_pays(channels: int, kernel_size: int) -> bool:
    """Whether a ``channels``-wide, ``kernel_size`` resblock conv runs faster by FFT on a CPU.

    From timings on an AVX2 CPU (``bench/decoder_ops.py``, whole resblocks on the fused path of
    :func:`fft_resblock`): kernels 7 and 11 from 128 channels gain (0.4-0.9x of the direct time;
    the whole RVC v2 decoder 0.79x); kernel 3 and the 64- and 32-channel blocks run as fast or
    faster directly.
    """
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    return kernel_size >= 7 and channels >= 128


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


def block_for(span_samples: int, channels: int = 0) -> int:
    """The overlap-save block for a kernel span: >= 2 spans and the shortest block for ``channels``."""
    block = WIDE_MIN_BLOCK_SAMPLES if channels >= WIDE_CHANNELS else MIN_BLOCK_SAMPLES
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
    block = block_for(s, layer.in_channels) if block is None else block
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


def fft_resblock(x: Tensor, pairs: list[tuple[nn.Conv1d, nn.Conv1d]], slope: float) -> Tensor:
    """HiFi-GAN's ResBlock1 body by overlap-save FFT, with its elementwise work fused in.

    ``for conv1, conv2 in pairs: x = conv2(lrelu(conv1(lrelu(x)))) + x``, every conv as in
    :func:`fft_conv1d`. Each leaky ReLU is written straight into the next conv's zero-padded
    input, each bias goes into the DC bin of the mixed spectrum, and the residual add is the
    copy out of the FFT blocks, so no activation is copied, padded or biased in a pass of its own.

    Args:
        x: (B, C, T) contiguous float32.
        pairs: the block's ``(convs1[i], convs2[i])``, each passing :func:`fft_usable`.
        slope: the leaky ReLU's negative slope.

    Returns:
        (B, C, T), equal to the direct computation up to float32 rounding.
    """
    h = x
    length = x.shape[-1]
    for conv1, conv2 in pairs:
        padded = _padded_input(conv1, h.unsqueeze(2), length, slope)
        y = _mix(conv1, padded, length)
        h = _add_blocks(_mix(conv2, _padded_input(conv2, y, length, slope), length), h)
    return h


def _geometry(layer: nn.Conv1d, length: int) -> tuple[int, int, int, int]:
    """``(block, hop, n_blocks, padded length)`` of ``layer``'s overlap-save over ``length`` samples."""
    s = span(layer)
    block = block_for(s, layer.in_channels)
    hop = block - s + 1
    n_blocks = -(-length // hop)
    return block, hop, n_blocks, n_blocks * hop + s - 1


def _padded_input(layer: nn.Conv1d, blocks: Tensor, length: int, slope: float) -> Tensor:
    """``lrelu`` of the first ``length`` samples of ``blocks`` (B, C, n, hop), zero-padded for ``layer``."""
    batch, channels, _, hop = blocks.shape
    pad = layer.padding[0]
    _, _, _, padded_length = _geometry(layer, length)
    out = blocks.new_empty(batch, channels, padded_length)  # pad + length <= padded_length
    full = length // hop
    body = out[..., pad : pad + full * hop].view(batch, channels, full, hop)
    torch.ops.aten.leaky_relu.out(blocks[:, :, :full], slope, out=body)
    rest = length - full * hop
    if rest:
        torch.ops.aten.leaky_relu.out(
            blocks[:, :, full, :rest], slope, out=out[..., pad + full * hop : pad + length]
        )
    out[..., :pad].zero_()
    out[..., pad + length :].zero_()
    return out


def _mix(layer: nn.Conv1d, padded: Tensor, length: int) -> Tensor:
    """``layer`` over the padded input: (B, C_out, n_blocks, hop) output blocks, bias included."""
    block, hop, _, _ = _geometry(layer, length)
    spectra = torch.fft.rfft(padded.unfold(-1, block, hop), n=block).permute(0, 3, 2, 1).contiguous()
    mixed = torch.matmul(spectra, _spectrum(layer, block))  # (B, F, n_blocks, C_out)
    if layer.bias is not None:
        # A constant b per channel is b * block in the DC bin (irfft divides by the block length).
        mixed[:, 0] += layer.bias * block
    return torch.fft.irfft(mixed.permute(0, 3, 2, 1), n=block)[..., :hop]


def _add_blocks(blocks: Tensor, residual: Tensor) -> Tensor:
    """The first ``T`` samples of ``blocks`` (B, C, n, hop) plus ``residual`` (B, C, T), as (B, C, T)."""
    batch, channels, _, hop = blocks.shape
    length = residual.shape[-1]
    out = residual.new_empty(residual.shape)
    full = length // hop
    torch.add(
        blocks[:, :, :full],
        residual[..., : full * hop].view(batch, channels, full, hop),
        out=out[..., : full * hop].view(batch, channels, full, hop),
    )
    if length > full * hop:
        torch.add(
            blocks[:, :, full, : length - full * hop], residual[..., full * hop :], out=out[..., full * hop :]
        )
    return out
