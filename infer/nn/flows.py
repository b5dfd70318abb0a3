"""Affine-coupling normalising flow used between the prior and the posterior (VITS ``flow``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from infer.nn.wavenet import WaveNet

__all__ = ["Flip", "ResidualCouplingBlock", "ResidualCouplingLayer"]


class ResidualCouplingLayer(nn.Module):
    """Mean-only (volume-preserving) or affine coupling on the channel halves.

    Forward: ``x1 <- m(x0) + x1 * exp(logs(x0))``; reverse: ``x1 <- (x1 - m(x0)) * exp(-logs(x0))``
    (Dinh et al. 2017, eqs. 7-8). ``post`` starts at zero so the layer starts as the identity.
    """

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
        p_dropout: float = 0.0,
        mean_only: bool = True,
    ) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"coupling channels must be even, got {channels}")
        self.half_channels = channels // 2
        self.mean_only = mean_only
        self.pre = nn.Conv1d(self.half_channels, hidden_channels, 1)
        self.enc = WaveNet(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels, p_dropout)
        self.post = nn.Conv1d(hidden_channels, self.half_channels * (1 if mean_only else 2), 1)
        nn.init.zeros_(self.post.weight)
        nn.init.zeros_(self.post.bias)

    def forward(
        self, x: Tensor, x_mask: Tensor, g: Tensor | None = None, reverse: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """x: (B, C, T), x_mask: (B, 1, T), g: (B, gin, 1) -> (x', logdet (B,) or None when reverse)."""
        x0, x1 = x.split(self.half_channels, dim=1)
        h = self.pre(x0) * x_mask
        h = self.enc(h, x_mask, g=g)
        stats = self.post(h) * x_mask
        if self.mean_only:
            m, logs = stats, None
        else:
            m, logs = stats.split(self.half_channels, dim=1)
        if reverse:
            x1 = x1 - m
            if logs is not None:
                x1 = x1 * torch.exp(-logs)
            return torch.cat([x0, x1 * x_mask], dim=1), None
        if logs is not None:
            x1 = m + x1 * torch.exp(logs) * x_mask
            logdet = torch.sum(logs, dim=(1, 2))
        else:
            x1 = m + x1 * x_mask
            logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return torch.cat([x0, x1], dim=1), logdet


class Flip(nn.Module):
    """Reverse the channel order (no parameters)."""

    def forward(
        self, x: Tensor, x_mask: Tensor, g: Tensor | None = None, reverse: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """x: (B, C, T) -> (x flipped on C, None)."""
        return torch.flip(x, [1]), None


class ResidualCouplingBlock(nn.Module):
    """``n_flows`` x (coupling layer, flip); parameters live at even indices of ``flows``."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        n_flows: int = 4,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(
                ResidualCouplingLayer(
                    channels,
                    hidden_channels,
                    kernel_size,
                    dilation_rate,
                    n_layers,
                    gin_channels,
                    mean_only=True,
                )
            )
            self.flows.append(Flip())

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None, reverse: bool = False) -> Tensor:
        """x: (B, C, T), x_mask: (B, 1, T), g: (B, gin, 1) -> (B, C, T).

        ``reverse=False`` maps posterior z to prior space z_p; ``reverse=True`` maps z_p to z.
        """
        flows = reversed(self.flows) if reverse else self.flows
        for flow in flows:
            x, _ = flow(x, x_mask, g=g, reverse=reverse)
        return x
