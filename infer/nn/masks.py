"""Length masks and random segment slicing shared by the VITS modules."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rand_slice_segments", "sequence_mask", "slice_segments"]


def sequence_mask(lengths: Tensor, max_length: int | None = None) -> Tensor:
    """Boolean mask of valid frames.

    Args:
        lengths: (B,) int64 valid lengths.
        max_length: mask width; defaults to ``lengths.max()``.

    Returns:
        (B, max_length) bool, True where ``t < lengths[b]``.
    """
    if max_length is None:
        max_length = int(lengths.max())
    steps = torch.arange(max_length, dtype=lengths.dtype, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def slice_segments(x: Tensor, starts: Tensor, segment_size: int) -> Tensor:
    """Cut one window per batch item along the last dim.

    Args:
        x: (B, ..., T) any dtype.
        starts: (B,) int64 first index of each window.
        segment_size: window length in frames/samples.

    Returns:
        (B, ..., segment_size), same dtype as ``x``.
    """
    offsets = torch.arange(segment_size, device=x.device)
    index = (starts.to(x.device).unsqueeze(1) + offsets.unsqueeze(0)).view(
        x.shape[0], *([1] * (x.dim() - 2)), segment_size
    )
    return torch.gather(x, -1, index.expand(*x.shape[:-1], segment_size))


def rand_slice_segments(
    x: Tensor,
    lengths: Tensor,
    segment_size: int,
    generator: torch.Generator | None = None,
    uniform: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Pick a random window of ``segment_size`` frames inside each item's valid length.

    Args:
        x: (B, C, T) tensor to slice.
        lengths: (B,) int64 valid lengths (each >= ``segment_size`` for a window inside the data).
        segment_size: window length in frames.
        generator: optional RNG (on CPU) for reproducible windows.
        uniform: (B,) float32 draws in [0, 1) to use instead of drawing them.

    Returns:
        ``(segments (B, C, segment_size), starts (B,) int64)``; a start is uniform in
        ``[0, length - segment_size]``: ``trunc(u * (length - segment_size + 1))`` with one uniform
        ``u`` per row, the product in float32 (RVC's ``rand_slice_segments``).
    """
    max_start = (lengths - segment_size + 1).clamp(min=1).to(torch.float32).cpu()
    draws = torch.rand(lengths.shape[0], generator=generator) if uniform is None else uniform
    starts = (draws.detach().float().cpu() * max_start).to(torch.long).to(x.device)
    return slice_segments(x, starts, segment_size), starts
