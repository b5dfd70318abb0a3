"""Non-causal WaveNet stack with gated activations and global conditioning (VITS ``WN``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from infer.nn.weight_norm import WeightNormConv1d

__all__ = ["WaveNet"]


class WaveNet(nn.Module):
    """Dilated gated convolutions with residual and skip paths.

    Each layer computes ``tanh(a) * sigmoid(b)`` from ``in_layer(x) + cond_l(g)`` (van den Oord
    et al. 2016, eq. 2). Submodule names match RVC: ``in_layers``, ``res_skip_layers``,
    ``cond_layer`` (all weight-normalised).

    Args:
        hidden_channels: width C of the residual stream.
        kernel_size: kernel of every in-layer (odd).
        dilation_rate: layer i uses dilation ``dilation_rate ** i``.
        n_layers: number of layers.
        gin_channels: width of the global condition ``g``; 0 disables conditioning.
        p_dropout: dropout on the gated activations (training only).
    """

    def __init__(
        self,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
        p_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.p_dropout = p_dropout
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        if gin_channels:
            self.cond_layer = WeightNormConv1d(gin_channels, 2 * hidden_channels * n_layers, 1)
        else:
            self.cond_layer = None
        for i in range(n_layers):
            dilation = dilation_rate**i
            padding = (kernel_size * dilation - dilation) // 2
            self.in_layers.append(
                WeightNormConv1d(
                    hidden_channels, 2 * hidden_channels, kernel_size, dilation=dilation, padding=padding
                )
            )
            res_skip_channels = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(WeightNormConv1d(hidden_channels, res_skip_channels, 1))

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None) -> Tensor:
        """Run the stack.

        Args:
            x: (B, C, T) float.
            x_mask: (B, 1, T) float, 1 on valid frames.
            g: (B, gin, 1) global condition or None.

        Returns:
            (B, C, T) sum of skip outputs, masked.
        """
        hidden = self.hidden_channels
        cond = self.cond_layer(g) if (g is not None and self.cond_layer is not None) else None
        output: Tensor | None = None
        last = self.n_layers - 1
        for i, (in_layer, res_skip_layer) in enumerate(
            zip(self.in_layers, self.res_skip_layers, strict=True)
        ):
            x_in = in_layer(x)
            if cond is not None:
                x_in = x_in + cond[:, i * 2 * hidden : (i + 1) * 2 * hidden]
            acts = torch.tanh(x_in[:, :hidden]) * torch.sigmoid(x_in[:, hidden:])
            if self.p_dropout > 0.0:
                acts = F.dropout(acts, self.p_dropout, self.training)
            res_skip = res_skip_layer(acts)
            if i < last:
                x = (x + res_skip[:, :hidden]) * x_mask
                skip = res_skip[:, hidden:]
            else:
                skip = res_skip
            output = skip if output is None else output + skip
        assert output is not None
        return output * x_mask
