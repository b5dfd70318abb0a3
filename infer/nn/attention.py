"""Post-norm transformer with windowed relative-position attention (the VITS text encoder body).

Self-attention adds learned relative-position terms for offsets ``-W..W`` (Shaw et al. 2018,
eqs. 3-4): ``e_ij = q_i (k_j + a^K_{j-i}) / sqrt(d)`` and ``z_i = sum_j p_ij (v_j + a^V_{j-i})``,
with one table shared by all heads. Only the ``2W+1`` diagonals that carry a relative term are
touched, so the extra cost is O(T * W) instead of the O(T^2) skew trick.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["FeedForward", "LayerNorm", "RelativeMultiHeadAttention", "RelativeTransformerEncoder"]

RELATIVE_WINDOW = 10
MASKED_SCORE = -1e4


class LayerNorm(nn.Module):
    """Layer norm over the channel dim of ``(B, C, T)`` tensors; parameters named ``gamma``/``beta``."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, T) -> (B, C, T)."""
        y = F.layer_norm(x.transpose(1, -1), (self.channels,), self.gamma, self.beta, self.eps)
        return y.transpose(1, -1)


class RelativeMultiHeadAttention(nn.Module):
    """Multi-head self-attention with a shared relative-position window.

    Args:
        channels: model width C (must be divisible by ``n_heads``).
        n_heads: number of heads H.
        p_dropout: dropout on the attention weights (training only).
        window_size: relative window W; tables hold ``2W+1`` rows.
    """

    def __init__(
        self, channels: int, n_heads: int, p_dropout: float = 0.0, window_size: int = RELATIVE_WINDOW
    ):
        super().__init__()
        if channels % n_heads:
            raise ValueError(f"channels ({channels}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        self.p_dropout = p_dropout
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        self.emb_rel_k = nn.Parameter(torch.empty(1, 2 * window_size + 1, self.k_channels))
        self.emb_rel_v = nn.Parameter(torch.empty(1, 2 * window_size + 1, self.k_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 1/d) relative tables and Xavier-uniform q/k/v projections (skipped on the meta device)."""
        if self.emb_rel_k.is_meta:  # shape-only build: torch's meta normal_ would import dynamo (~1 s)
            return
        rel_std = self.k_channels**-0.5
        nn.init.normal_(self.emb_rel_k, std=rel_std)
        nn.init.normal_(self.emb_rel_v, std=rel_std)
        for conv in (self.conv_q, self.conv_k, self.conv_v):
            nn.init.xavier_uniform_(conv.weight)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Self-attention.

        Args:
            x: (B, C, T) float.
            attn_mask: (B, 1, T, T) with 0 where attention is not allowed, or None.

        Returns:
            (B, C, T).
        """
        batch, channels, length = x.shape
        heads, dim = self.n_heads, self.k_channels
        # (B, C, T) -> (B, H, T, d)
        q = self.conv_q(x).view(batch, heads, dim, length).transpose(2, 3)
        k = self.conv_k(x).view(batch, heads, dim, length).transpose(2, 3)
        v = self.conv_v(x).view(batch, heads, dim, length).transpose(2, 3)
        q = q / math.sqrt(dim)

        scores = torch.matmul(q, k.transpose(-2, -1))  # (B, H, T, T)
        rel_logits = torch.matmul(q, self.emb_rel_k.transpose(-2, -1))  # (B, H, T, 2W+1)
        for offset, column in self._diagonals(length):
            rows = slice(max(0, -offset), length - max(0, offset))
            scores.diagonal(offset, dim1=-2, dim2=-1).add_(rel_logits[..., rows, column])
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask == 0, MASKED_SCORE)
        p_attn = torch.softmax(scores, dim=-1)
        if self.p_dropout > 0.0:
            p_attn = F.dropout(p_attn, self.p_dropout, self.training)

        out = torch.matmul(p_attn, v)  # (B, H, T, d)
        band = p_attn.new_zeros(batch, heads, length, 2 * self.window_size + 1)
        for offset, column in self._diagonals(length):
            rows = slice(max(0, -offset), length - max(0, offset))
            band[..., rows, column] = p_attn.diagonal(offset, dim1=-2, dim2=-1)
        out = out + torch.matmul(band, self.emb_rel_v)
        out = out.transpose(2, 3).reshape(batch, channels, length)
        return self.conv_o(out)

    def _diagonals(self, length: int) -> list[tuple[int, int]]:
        """(offset j - i, table column) for every relative offset that fits in ``length``."""
        w = self.window_size
        return [(offset, offset + w) for offset in range(-w, w + 1) if abs(offset) < length]


class FeedForward(nn.Module):
    """conv(k) -> ReLU -> conv(k) with "same" padding ``((k-1)//2, k//2)``, masked in and out."""

    def __init__(self, channels: int, filter_channels: int, kernel_size: int, p_dropout: float = 0.0):
        super().__init__()
        self.pad = ((kernel_size - 1) // 2, kernel_size // 2)
        self.p_dropout = p_dropout
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel_size)

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        """x: (B, C, T), x_mask: (B, 1, T) -> (B, C, T)."""
        x = self.conv_1(F.pad(x * x_mask, self.pad))
        x = torch.relu(x)
        if self.p_dropout > 0.0:
            x = F.dropout(x, self.p_dropout, self.training)
        x = self.conv_2(F.pad(x * x_mask, self.pad))
        return x * x_mask


class RelativeTransformerEncoder(nn.Module):
    """Stack of post-norm blocks: ``x = LN(x + Attn(x)); x = LN(x + FFN(x))``.

    Submodules are registered as ``attn_layers``, ``norm_layers_1``, ``ffn_layers``,
    ``norm_layers_2`` (RVC's names and order).
    """

    def __init__(
        self,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float = 0.0,
        window_size: int = RELATIVE_WINDOW,
    ) -> None:
        super().__init__()
        self.p_dropout = p_dropout
        self.attn_layers = nn.ModuleList(
            RelativeMultiHeadAttention(hidden_channels, n_heads, p_dropout, window_size)
            for _ in range(n_layers)
        )
        self.norm_layers_1 = nn.ModuleList(LayerNorm(hidden_channels) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(
            FeedForward(hidden_channels, filter_channels, kernel_size, p_dropout) for _ in range(n_layers)
        )
        self.norm_layers_2 = nn.ModuleList(LayerNorm(hidden_channels) for _ in range(n_layers))

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        """x: (B, C, T), x_mask: (B, 1, T) float -> (B, C, T), zero outside the mask."""
        # Without padding (one whole sequence, as at inference) the mask hides nothing: skip it.
        attn_mask = None if bool(x_mask.all()) else x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)  # (B,1,T,T)
        x = x * x_mask
        for attn, norm_1, ffn, norm_2 in zip(
            self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2, strict=True
        ):
            y = attn(x, attn_mask)
            if self.p_dropout > 0.0:
                y = F.dropout(y, self.p_dropout, self.training)
            x = norm_1(x + y)
            y = ffn(x, x_mask)
            if self.p_dropout > 0.0:
                y = F.dropout(y, self.p_dropout, self.training)
            x = norm_2(x + y)
        return x * x_mask
