"""Prior (text/content) encoder and posterior (spectrogram) encoder of the VITS synthesizer."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from infer.nn.attention import RelativeTransformerEncoder
from infer.nn.masks import sequence_mask
from infer.nn.wavenet import WaveNet

__all__ = ["PITCH_BINS", "PosteriorEncoder", "TextEncoder", "make_embedding"]

PITCH_BINS = 256
"""Coarse pitch vocabulary size (values 1..255 are used, 0 is never produced)."""
INPUT_LEAKY_SLOPE = 0.1


def make_embedding(num_embeddings: int, embedding_dim: int) -> nn.Embedding:
    """``nn.Embedding`` with N(0, 1) rows; on the meta device the (shape-only) init is skipped.

    torch's meta ``normal_`` imports dynamo (about a second), which shape-only builds avoid.
    """
    weight = torch.empty(num_embeddings, embedding_dim)
    if not weight.is_meta:
        nn.init.normal_(weight)
    return nn.Embedding(num_embeddings, embedding_dim, _weight=weight)


class TextEncoder(nn.Module):
    """Content features (+ coarse pitch) -> prior mean and log-std.

    ``x = LeakyReLU_0.1(sqrt(H) * (emb_phone(phone) + emb_pitch(pitch)))`` then a post-norm
    relative-attention transformer and a 1x1 projection to ``(m, logs)``.

    Args:
        content_dim: width of the content features (256 or 768 for HuBERT layers).
        out_channels: latent width (``inter_channels``).
        hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout: transformer sizes.
        use_pitch: add the coarse-pitch embedding ``emb_pitch``.
    """

    def __init__(
        self,
        content_dim: int,
        out_channels: int,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        use_pitch: bool,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.hidden_channels = hidden_channels
        self.emb_phone = nn.Linear(content_dim, hidden_channels)
        self.emb_pitch = make_embedding(PITCH_BINS, hidden_channels) if use_pitch else None
        self.encoder = RelativeTransformerEncoder(
            hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout
        )
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(
        self, phone: Tensor, phone_lengths: Tensor, pitch: Tensor | None = None, skip_head: int = 0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Encode.

        Args:
            phone: (B, T, content_dim) float content features.
            phone_lengths: (B,) int64 valid frames.
            pitch: (B, T) int64 coarse pitch in 1..255 (required when built with ``use_pitch``).
            skip_head: frames dropped from the front *after* the attention layers (which see all
                T frames) and before the output projection (RVC's streaming ``skip_head``).

        Returns:
            ``m_p, logs_p`` (B, inter, T - skip_head) and ``x_mask`` (B, 1, T - skip_head) float.
        """
        x = self.emb_phone(phone.to(self.emb_phone.weight.dtype))
        if self.emb_pitch is not None:
            if pitch is None:
                raise ValueError("this encoder uses pitch: pass the coarse pitch (B, T) int64")
            x = x + self.emb_pitch(pitch)
        x = F.leaky_relu(x * math.sqrt(self.hidden_channels), INPUT_LEAKY_SLOPE)
        x = x.transpose(1, 2)  # (B, H, T)
        x_mask = sequence_mask(phone_lengths, x.shape[2]).unsqueeze(1).to(x.dtype)
        x = self.encoder(x * x_mask, x_mask)
        if skip_head:
            x, x_mask = x[:, :, skip_head:], x_mask[:, :, skip_head:]
        stats = self.proj(x) * x_mask
        m, logs = stats.split(self.out_channels, dim=1)
        return m, logs, x_mask


class PosteriorEncoder(nn.Module):
    """Linear spectrogram -> posterior sample ``z`` (training only; RVC key prefix ``enc_q``).

    Args:
        in_channels: spectrogram bins (``spec_channels``).
        out_channels: latent width (``inter_channels``).
        hidden_channels: WaveNet width.
        kernel_size, dilation_rate, n_layers: WaveNet shape (RVC: 5, 1, 16).
        gin_channels: speaker-condition width.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = WaveNet(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(
        self,
        spec: Tensor,
        spec_lengths: Tensor,
        g: Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Encode and sample.

        Args:
            spec: (B, spec_channels, T) float linear magnitude spectrogram.
            spec_lengths: (B,) int64 valid frames.
            g: (B, gin, 1) speaker condition.
            generator: optional RNG for the reparameterisation noise.
            noise: (B, inter, T) standard-normal reparameterisation noise; drawn when None.

        Returns:
            ``z, m_q, logs_q`` (B, inter, T) and ``y_mask`` (B, 1, T).
        """
        y_mask = sequence_mask(spec_lengths, spec.shape[2]).unsqueeze(1).to(spec.dtype)
        x = self.pre(spec) * y_mask
        x = self.enc(x, y_mask, g=g)
        stats = self.proj(x) * y_mask
        m, logs = stats.split(self.out_channels, dim=1)
        if noise is None:
            noise = torch.randn(m.shape, generator=generator, dtype=m.dtype, device=m.device)
        z = (m + noise.to(m.dtype) * torch.exp(logs)) * y_mask
        return z, m, logs, y_mask
