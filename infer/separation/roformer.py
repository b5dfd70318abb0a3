"""'melband-roformer': Mel-Band RoFormer vocal separation in Timbre's own code (downloaded weights).

The network reads Kimberley Jensen's ``MelBandRoformer.ckpt`` ("Kim Vocal 2", the asset
``separation/MelBandRoformer.ckpt``): a plain torch state dict, loaded strictly. The layout and
the numbers follow the architecture that checkpoint was trained with (lucidrains' BS-RoFormer
repository, ``mel_band_roformer.py``, as ZFTurbo's Music-Source-Separation-Training runs it with
``configs/KimberleyJensen/config_vocals_mel_band_roformer_kj.yaml``):

* 44.1 kHz stereo; STFT n_fft 2048 / hop 441 / Hann 2048, centred (reflect), not normalised;
* bands: the bins where a 60-band librosa mel filter bank (Slaney) is positive, the first and
  last bin forced in; bands overlap; stereo bins interleave ``(freq, channel)``;
* band split: per band RMSNorm + Linear of the band's (re, im) values to ``dim``;
* ``depth`` blocks of a time transformer then a frequency transformer (each: pre-RMSNorm gated
  attention with rotary position embedding on q and k, pre-RMSNorm GELU feed-forward x4, a
  final RMSNorm); the rotary tables are one per axis, shared by every block;
* per band a Tanh MLP (``mask_estimator_depth`` hidden layers of ``4 * dim``) and a GLU giving a
  complex mask; overlapping bands' masks are averaged per bin and multiply the STFT.

Inference follows the config's ``chunk_size`` 352800 (8 s) with ``num_overlap`` 2, cross-faded;
the instrumental is the residual ``mix - vocals``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from infer.errors import ModelLoadError
from infer.pitch.base import load_state_strict
from infer.progress import ProgressFn, StopFn, report
from infer.safeload import load_checkpoint
from infer.separation.base import (
    Stems,
    autocast_context,
    check_song,
    overlap_add,
    stems_from_vocals,
    to_model_stereo,
)

log = logging.getLogger(__name__)

ROTARY_THETA = 10000.0
VERSION = "1"


@dataclass(frozen=True)
class MelRoformerConfig:
    """Architecture and chunking of a Mel-Band RoFormer; :meth:`kim_vocals` is the released model."""

    dim: int = 384
    depth: int = 6
    num_bands: int = 60
    heads: int = 8
    dim_head: int = 64
    time_transformer_depth: int = 1
    freq_transformer_depth: int = 1
    mask_estimator_depth: int = 2
    mlp_expansion_factor: int = 4
    ff_mult: int = 4
    sample_rate: int = 44100
    n_fft: int = 2048
    hop_length: int = 441
    chunk_samples: int = 352800
    num_overlap: int = 2

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MelRoformerConfig.{field.name} must be an int >= 1, got {value!r}")
        if self.n_fft % 2:
            raise ValueError(f"MelRoformerConfig.n_fft must be even, got {self.n_fft}")
        if self.num_bands >= self.n_fft // 2 + 1:
            raise ValueError("MelRoformerConfig.num_bands must be smaller than the number of STFT bins")
        if self.chunk_samples < self.n_fft:
            raise ValueError("MelRoformerConfig.chunk_samples must be at least n_fft")

    @classmethod
    def kim_vocals(cls) -> MelRoformerConfig:
        """The configuration of ``MelBandRoformer.ckpt`` (Kim's vocal model)."""
        return cls()

    @classmethod
    def tiny(cls) -> MelRoformerConfig:
        """A small test configuration (8 bands, one block, 8 kHz, 64-point STFT)."""
        return cls(
            dim=16,
            depth=1,
            num_bands=8,
            heads=2,
            dim_head=8,
            mask_estimator_depth=2,
            sample_rate=8000,
            n_fft=64,
            hop_length=16,
            chunk_samples=4000,
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MelRoformerConfig:
        """Build from a mapping; unknown keys are rejected."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown MelRoformerConfig keys {unknown}; expected some of {sorted(names)}")
        return cls(**dict(values))

    @property
    def overlap_samples(self) -> int:
        """Cross-fade length: ``chunk_samples / num_overlap`` capped at half a chunk."""
        return min(self.chunk_samples // self.num_overlap, self.chunk_samples // 2)


@functools.lru_cache(maxsize=8)
def band_membership(sample_rate: int, n_fft: int, num_bands: int) -> np.ndarray:
    """(num_bands, n_fft / 2 + 1) bool: bin f belongs to band b where the mel filter b is positive."""
    from librosa.filters import mel

    bank = mel(sr=sample_rate, n_fft=n_fft, n_mels=num_bands)
    bank[0, 0] = 1.0
    bank[-1, -1] = 1.0
    members = bank > 0
    if not members.any(axis=0).all():
        raise ValueError(f"{num_bands} mel bands at n_fft {n_fft} leave some bins uncovered")
    return members


class RMSNorm(nn.Module):
    """``x / |x| * sqrt(dim) * gamma`` over the last axis."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class RotaryEmbedding(nn.Module):
    """Rotary position embedding on interleaved pairs of the head dimension (RoFormer, eq. 34)."""

    def __init__(self, dim_head: int) -> None:
        super().__init__()
        exponents = torch.arange(0, dim_head, 2)[: dim_head // 2].float() / dim_head
        self.freqs = nn.Parameter(1.0 / ROTARY_THETA**exponents, requires_grad=False)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, H, N, D)`` rotated by position along N."""
        positions = torch.arange(x.shape[-2], device=x.device, dtype=self.freqs.dtype)
        angles = (positions[:, None] * self.freqs[None, :]).repeat_interleave(2, dim=-1)
        pairs = x.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return (x * angles.cos() + rotated * angles.sin()).to(x.dtype)


class Attention(nn.Module):
    """Pre-norm multi-head attention with rotary q/k and a sigmoid gate per head."""

    def __init__(self, dim: int, heads: int, dim_head: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.rotary_embed = rotary
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, N, dim)`` -> (B, N, dim)."""
        x = self.norm(x)
        q, k, v = self.to_qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        q, k = self.rotary_embed.rotate(q), self.rotary_embed.rotate(k)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out * self.to_gates(x).transpose(1, 2).unsqueeze(-1).sigmoid()
        return self.to_out(out.transpose(1, 2).flatten(-2))


class FeedForward(nn.Module):
    """Pre-norm GELU MLP; ``net`` indices match the checkpoint (norm, linear, gelu, -, linear)."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(
            RMSNorm(dim), nn.Linear(dim, inner), nn.GELU(), nn.Identity(), nn.Linear(inner, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Transformer(nn.Module):
    """``depth`` residual (attention, feed-forward) pairs and a final RMSNorm."""

    def __init__(self, config: MelRoformerConfig, depth: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    Attention(config.dim, config.heads, config.dim_head, rotary),
                    FeedForward(config.dim, config.ff_mult),
                ]
            )
            for _ in range(depth)
        )
        self.norm = RMSNorm(config.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, feed_forward in self.layers:
            x = attention(x) + x
            x = feed_forward(x) + x
        return self.norm(x)


class BandSplit(nn.Module):
    """Per band: RMSNorm and Linear of its ``widths[b]`` values to ``dim``."""

    def __init__(self, dim: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.widths = widths
        self.to_features = nn.ModuleList(
            nn.Sequential(RMSNorm(width), nn.Linear(width, dim)) for width in widths
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, T, sum(widths))`` -> (B, T, bands, dim)."""
        parts = x.split(self.widths, dim=-1)
        return torch.stack([net(part) for part, net in zip(parts, self.to_features, strict=True)], dim=-2)


def _mask_mlp(dim: int, width: int, hidden: int, depth: int) -> nn.Sequential:
    """Linear/Tanh stack ``dim -> hidden (x depth) -> 2 * width``; indices match the checkpoint."""
    sizes = (dim, *([hidden] * depth), 2 * width)
    layers: list[nn.Module] = []
    for index, (size_in, size_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(size_in, size_out))
        if index < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(nn.Sequential(*layers), nn.GLU(dim=-1))


class MaskEstimator(nn.Module):
    """Per band: an MLP + GLU from ``dim`` features to the band's ``widths[b]`` mask values."""

    def __init__(self, dim: int, widths: tuple[int, ...], depth: int, expansion: int) -> None:
        super().__init__()
        self.to_freqs = nn.ModuleList(_mask_mlp(dim, width, dim * expansion, depth) for width in widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, T, bands, dim)`` -> (B, T, sum(widths))."""
        bands = x.unbind(dim=-2)
        return torch.cat([net(band) for band, net in zip(bands, self.to_freqs, strict=True)], dim=-1)


class MelBandRoformer(nn.Module):
    """The stereo, one-stem Mel-Band RoFormer; state-dict names match ``MelBandRoformer.ckpt``."""

    def __init__(self, config: MelRoformerConfig) -> None:
        super().__init__()
        self.config = config
        members = torch.from_numpy(band_membership(config.sample_rate, config.n_fft, config.num_bands))
        per_band = members.sum(dim=1)
        bins = torch.arange(members.shape[1]).expand_as(members)[members]
        stereo_bins = (bins[:, None] * 2 + torch.arange(2)).reshape(-1)
        self.register_buffer("freq_indices", stereo_bins, persistent=False)
        self.register_buffer("bands_per_bin", members.sum(dim=0).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        widths = tuple(2 * 2 * int(n) for n in per_band)
        time_rotary = RotaryEmbedding(config.dim_head)
        freq_rotary = RotaryEmbedding(config.dim_head)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    Transformer(config, config.time_transformer_depth, time_rotary),
                    Transformer(config, config.freq_transformer_depth, freq_rotary),
                ]
            )
            for _ in range(config.depth)
        )
        self.band_split = BandSplit(config.dim, widths)
        self.mask_estimators = nn.ModuleList(
            [MaskEstimator(config.dim, widths, config.mask_estimator_depth, config.mlp_expansion_factor)]
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio: (B, 2, L)`` -> vocals (B, 2, hop * floor(L / hop))."""
        batch, channels, _ = audio.shape
        cfg = self.config
        spec = torch.stft(
            audio.reshape(batch * channels, -1).float(),
            cfg.n_fft,
            cfg.hop_length,
            window=self.window,
            center=True,
            return_complex=True,
        )
        n_bins, n_frames = spec.shape[-2:]
        # (B, 2, F, T) -> (B, F * 2, T): bin-major, channels interleaved
        spec = spec.reshape(batch, channels, n_bins, n_frames).transpose(1, 2).reshape(batch, -1, n_frames)
        selected = torch.view_as_real(spec[:, self.freq_indices])  # (B, N, T, 2)
        x = self.band_split(selected.permute(0, 2, 1, 3).reshape(batch, n_frames, -1))
        n_bands = x.shape[2]
        for time_transformer, freq_transformer in self.layers:
            x = x.transpose(1, 2).reshape(batch * n_bands, n_frames, -1)
            x = time_transformer(x).reshape(batch, n_bands, n_frames, -1).transpose(1, 2)
            x = freq_transformer(x.reshape(batch * n_frames, n_bands, -1)).reshape(
                batch, n_frames, n_bands, -1
            )
        masks = self.mask_estimators[0](x).float().reshape(batch, n_frames, -1, 2)
        masks = torch.view_as_complex(masks.contiguous()).transpose(1, 2)  # (B, N, T)
        summed = torch.zeros_like(spec).index_add_(1, self.freq_indices, masks)
        averaged = summed / self.bands_per_bin.repeat_interleave(channels).clamp(min=1e-8)[:, None]
        vocals = (spec * averaged).reshape(batch, n_bins, channels, n_frames).transpose(1, 2)
        out = torch.istft(
            vocals.reshape(batch * channels, n_bins, n_frames), cfg.n_fft, cfg.hop_length, window=self.window
        )
        return out.reshape(batch, channels, -1)


def _state_dict_of(raw: Any, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a plain state dict, or one under 'state_dict' / 'state'."""
    if isinstance(raw, Mapping):
        for key in ("state_dict", "state"):
            if isinstance(raw.get(key), Mapping):
                raw = raw[key]
                break
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ModelLoadError(f"{source}: expected a state dict of tensors (Mel-Band RoFormer checkpoint)")
    return {str(key): value.float() for key, value in raw.items()}


def load_roformer(
    path: str | Path, config: MelRoformerConfig | None = None, device: str | torch.device = "cpu"
) -> MelBandRoformer:
    """A Mel-Band RoFormer from a checkpoint (data only), loaded strictly, eval mode, on ``device``."""
    path = Path(path)
    net = MelBandRoformer(config or MelRoformerConfig.kim_vocals())
    load_state_strict(net, _state_dict_of(load_checkpoint(path), path.name), path.name)
    return net.eval().to(device)


class RoformerSeparator:
    """The 'melband-roformer' separator: Kim's vocal model, chunked and cross-faded."""

    name = "melband-roformer"
    version = VERSION

    def __init__(
        self,
        weights: str | Path,
        *,
        config: MelRoformerConfig | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ) -> None:
        self.config = config or MelRoformerConfig.kim_vocals()
        self.sample_rate = self.config.sample_rate
        self.chunk_samples = self.config.chunk_samples
        self.overlap_samples = self.config.overlap_samples
        self.device = torch.device(device)
        self.precision = precision
        self.net = load_roformer(weights, self.config, self.device)

    def vocals_of_chunk(self, stereo: torch.Tensor) -> torch.Tensor:
        with autocast_context(self.device, self.precision):
            vocals = self.net(stereo[None])[0].float()
        return F.pad(vocals, (0, stereo.shape[-1] - vocals.shape[-1]))

    def separate(
        self,
        audio: np.ndarray,
        sample_rate: int,
        *,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> Stems:
        """Vocals and instrumental of a (C, L) song; see :class:`~infer.separation.base.Separator`."""
        song = check_song(audio, sample_rate)
        stereo = to_model_stereo(song, sample_rate, self.sample_rate)
        vocals = overlap_add(
            stereo,
            self.vocals_of_chunk,
            chunk=self.config.chunk_samples,
            overlap=self.config.overlap_samples,
            device=self.device,
            progress=progress,
            should_stop=should_stop,
        )
        del stereo
        stems = stems_from_vocals(song, vocals, sample_rate, self.sample_rate)
        report(progress, 1.0, "separated")
        return stems
