"""Convolutions with weight normalisation stored as ``weight_g`` / ``weight_v``.

RVC checkpoints keep weight-normalised layers unfolded: a layer's state_dict holds
``bias, weight_g, weight_v`` in that order, with ``weight = g * v / ||v||`` and the norm taken
over every dim except 0 (Salimans & Kingma 2016, eq. 2). For ``ConvTranspose1d`` dim 0 is the
*input* channel, so its ``weight_g`` is ``(in, 1, 1)``.

These layers compute the normalised weight inside ``forward`` (no hooks, no deprecated
``torch.nn.utils.weight_norm``). :meth:`fold` replaces ``weight_g``/``weight_v`` by a plain
``weight`` for fast inference; :meth:`unfold` goes back (``g = ||w||``, ``v = w``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "WeightNormConv1d",
    "WeightNormConv2d",
    "WeightNormConvTranspose1d",
    "WeightNormMixin",
    "fold_weight_norm",
    "norm_except_dim0",
    "unfold_weight_norm",
]


def norm_except_dim0(v: Tensor) -> Tensor:
    """L2 norm over every dim but 0, keeping dims: ``(C, ...)`` -> ``(C, 1, ...)``."""
    return torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)


class WeightNormMixin(nn.Module):
    """Weight-norm parameter handling shared by the conv classes (they supply ``forward``)."""

    def _split_weight(self) -> None:
        weight = self._parameters.pop("weight")
        assert weight is not None
        if weight.is_meta:  # shape-only build; torch's meta norm would import dynamo (~1 s)
            g = weight.new_empty((weight.shape[0],) + (1,) * (weight.dim() - 1))
        else:
            with torch.no_grad():
                g = norm_except_dim0(weight)
        self.weight_g = nn.Parameter(g, requires_grad=weight.requires_grad)
        self.weight_v = nn.Parameter(weight.detach(), requires_grad=weight.requires_grad)

    @property
    def is_folded(self) -> bool:
        """True once :meth:`fold` replaced ``weight_g``/``weight_v`` by ``weight``."""
        return "weight" in self._parameters

    def normalized_weight(self) -> Tensor:
        """The effective convolution weight ``g * v / ||v||`` (or the folded weight)."""
        folded = self._parameters.get("weight")
        if folded is not None:
            return folded
        v = self.weight_v
        return v * (self.weight_g / norm_except_dim0(v))

    def fold(self) -> None:
        """Replace ``weight_g``/``weight_v`` by one ``weight`` parameter (in place)."""
        if self.is_folded:
            return
        with torch.no_grad():
            weight = self.normalized_weight().detach()
        requires_grad = self.weight_v.requires_grad
        del self.weight_g, self.weight_v
        self.weight = nn.Parameter(weight, requires_grad=requires_grad)

    def unfold(self) -> None:
        """Inverse of :meth:`fold`: ``g = ||w||``, ``v = w`` (same effective weight)."""
        if not self.is_folded:
            return
        self._split_weight()


class WeightNormConv1d(nn.Conv1d, WeightNormMixin):
    """``nn.Conv1d`` whose weight is stored as ``weight_g`` ``(out, 1, 1)`` and ``weight_v``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self._split_weight()

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, T) -> (B, C_out, T')."""
        return self._conv_forward(x, self.normalized_weight(), self.bias)


class WeightNormConv2d(nn.Conv2d, WeightNormMixin):
    """``nn.Conv2d`` whose weight is stored as ``weight_g`` ``(out, 1, 1, 1)`` and ``weight_v``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self._split_weight()

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, H, W) -> (B, C_out, H', W')."""
        return self._conv_forward(x, self.normalized_weight(), self.bias)


class WeightNormConvTranspose1d(nn.ConvTranspose1d, WeightNormMixin):
    """``nn.ConvTranspose1d`` with weight norm over dim 0 (the input channel), as RVC stores it."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding)
        self._split_weight()

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """x: (B, C_in, T) -> (B, C_out, (T - 1) * stride - 2 * padding + kernel_size)."""
        return F.conv_transpose1d(
            x,
            self.normalized_weight(),
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )


def fold_weight_norm(module: nn.Module) -> int:
    """Fold every weight-normalised layer inside ``module``; returns how many were folded."""
    count = 0
    for layer in module.modules():
        if isinstance(layer, WeightNormMixin) and not layer.is_folded:
            layer.fold()
            count += 1
    return count


def unfold_weight_norm(module: nn.Module) -> int:
    """Undo :func:`fold_weight_norm` (state_dict keys become ``weight_g``/``weight_v`` again)."""
    count = 0
    for layer in module.modules():
        if isinstance(layer, WeightNormMixin) and layer.is_folded:
            layer.unfold()
            count += 1
    return count
