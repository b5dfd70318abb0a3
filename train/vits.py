"""VITS training of RVC voice models (RVC's ``train.py``), on the shared :class:`~train.trainer.Trainer`.

The data are the folders written by :mod:`train.dataset` and :mod:`train.features`: model-rate
audio in ``0_gt_wavs``, 50 fps content features, and (pitch models) coarse and Hz F0 at 100 fps.
One step is RVC's: the generator runs on the whole utterances and decodes a random window of
``segment_size`` samples; the multi-period discriminator is updated on (real window, detached
fake) with the least-squares GAN loss; then the generator is updated with

    loss = adv + fm + c_mel * L1(mel(real window), mel(fake)) + c_kl * KL(posterior || prior)

where ``adv = sum_k mean((1 - D_k(fake))^2)`` and ``fm = 2 * sum mean|fmap_real - fmap_fake|``.
Both use AdamW(lr 1e-4, betas (0.8, 0.99), eps 1e-9) and an ExponentialLR(0.999875) stepped once
per epoch. Both networks' gradients are clipped to ``grad_clip_norm`` (global L2; RVC only
measures it) and the norms are logged. Batches come from length buckets (RVC's boundaries
100..900 frames) in an order fixed by (seed, epoch), which is what lets the base resume exactly
in the middle of an epoch.

Training starts from RVC's pretrained pair (``f0G40k.pth`` / ``f0D40k.pth`` and family, read
strictly as ``{'model': state_dict}``) when present, else from scratch with a loud warning. At
every checkpoint (period, end, cancel) the generator is exported in RVC's inference format with
Timbre's metadata: ``<name>_e<epoch>_s<step>.pth`` and ``<name>.pth`` (the latest).

Under ``torchrun`` (``torch.distributed`` initialised) both networks are wrapped in
DistributedDataParallel, the bucket sampler is sharded by rank, and only rank 0 writes
checkpoints, exports and the metrics log (``python -m torch.distributed.run --nproc_per_node N
-m train.vits WORK_DIR --name NAME``). Each process checks its own ``should_stop``, so a cancel
request must reach every rank.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from infer import rvc
from infer.errors import TimbreError
from infer.fsutil import atomic_path
from infer.models import ModelMetadata, save_voice_model
from infer.nn.configs import ConfigError, check_config_keys
from infer.nn.discriminators import DiscriminatorConfig, MultiPeriodDiscriminator
from infer.nn.masks import slice_segments
from infer.options import MODEL_SIZES, TRAIN_PRECISIONS, names
from infer.progress import ProgressFn, StopFn, report
from infer.safeload import load_checkpoint
from infer.synthesizer import SynthConfig, Synthesizer, TrainingDraws
from train.features import TrainingExample, list_training_examples
from train.mel import SpectrogramConfig, linear_spectrogram, mel_spectrogram, spec_to_mel
from train.trainer import MetricsFn, ResumeError, Trainer, TrainerConfig

__all__ = [
    "BUCKET_BOUNDARIES_FRAMES",
    "FORWARD_NAMES",
    "SPEAKER_TABLE_KEY",
    "STEP_SCALARS",
    "PretrainedError",
    "PretrainedLoad",
    "StepForward",
    "StepTrace",
    "VitsBatch",
    "VitsDataError",
    "VitsDataset",
    "VitsItem",
    "VitsTrainConfig",
    "VitsTrainer",
    "bucket_batches",
    "build_networks",
    "collate",
    "discriminator_loss",
    "discriminator_losses",
    "export_synth_config",
    "feature_matching_loss",
    "fit_vits",
    "generator_adversarial_loss",
    "generator_adversarial_losses",
    "kl_loss",
    "load_pretrained_module",
    "main",
    "resolve_pretrained",
]

log = logging.getLogger(__name__)

BUCKET_BOUNDARIES_FRAMES = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900)
"""Length buckets (frames at 100 fps): an item of n frames goes to the bucket (b_i, b_i+1]."""
MAX_FRAMES = 900
"""RVC cuts every utterance to 900 frames (9 s) after upsampling the features."""
FEATURE_UPSAMPLE = 2
"""Content features are stored at 50 fps and repeated to the 100 fps frame rate."""
SPEAKER_ID = 0
RVC_EXPORT_SEGMENT_FRAMES = 32
"""RVC writes 32 into the inference file's config whatever the training window was."""
# RVC's train.segment_size (samples) per (version, rate); v2 at 40 kHz uses the v1 config.
_SEGMENT_SAMPLES: dict[tuple[str, int], int] = {
    ("v1", 32000): 12800,
    ("v1", 40000): 12800,
    ("v1", 48000): 11520,
    ("v2", 32000): 12800,
    ("v2", 40000): 12800,
    ("v2", 48000): 17280,
}
TINY_SEGMENT_FRAMES = 12
# Tiny decoder at 16 kHz (10 ms hop): rates multiply to 160 and keep every trailing product even.
_TINY_16K_DECODER = ((10, 4, 4), (20, 8, 8))
TINY_DISCRIMINATOR_PERIODS = (2,)
TINY_DISCRIMINATOR_KERNEL = 1
TINY_DISCRIMINATOR_WIDTH_DIVISOR = 16
RUN_INFO_FILENAME = "vits_run.json"
DEFAULT_RUN_DIRNAME = "vits"
DEFAULT_EXPORT_DIRNAME = "weights"
FEATURES_STATE_FILENAME = "features_state.json"
DEFAULT_CONTENT_ENCODER = "hubert_base"


class VitsDataError(TimbreError):
    """The training data cannot be used (wrong rate or width, unreadable or too short files)."""


class PretrainedError(TimbreError):
    """A pretrained base file does not fit the model being trained, or cannot be read."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class VitsTrainConfig:
    """Settings of a VITS training run (RVC's defaults unless noted).

    Attributes:
        sample_rate: model rate in Hz (32000, 40000, 48000; 16000 only for ``size='tiny'``).
        version: ``'v1'`` (256-dim content) or ``'v2'`` (768-dim content).
        use_f0: train a pitch model (NSF decoder, coarse-pitch embedding).
        size: ``'full'`` (RVC's real networks) or ``'tiny'`` (small networks for tests/benchmarks).
        batch_size: utterances per step (per process under DDP).
        epochs: epochs to reach.
        save_every_epochs: checkpoint + export period (also at the end and on cancel).
        keep_last: training checkpoints kept.
        log_every_steps: metrics period.
        max_steps: stop after this many steps in total (0 = no limit).
        learning_rate: AdamW learning rate of both networks.
        betas: AdamW betas.
        eps: AdamW epsilon.
        lr_decay: ExponentialLR gamma, stepped once per epoch.
        c_mel: weight of the mel L1 loss.
        c_kl: weight of the KL loss.
        segment_size: training window in samples (a multiple of the hop); None = RVC's value
            for the version and rate (12800 at 40 kHz), or 12 frames for ``tiny``.
        weight_decay: AdamW's decoupled weight decay of both networks. RVC does not set it, so
            torch's default 0.01 applies there; that is the default here too.
        grad_clip_norm: global L2 norm both networks' gradients are clipped to; None (the
            default, as RVC, whose ``clip_grad_value_(..., None)`` only measures the norm) = no
            clipping. A value such as 1000, far above the norms of healthy steps (tens to a few
            hundred), only stops rare blow-ups. The norms are logged either way.
        discriminator_start_step: steps trained on the mel and KL losses alone before the
            discriminator and the adversarial/feature-matching losses start (0 = from the first
            step, as RVC; a warm-up helps runs from scratch and makes quick overfit checks cheap).
        precision: ``'fp32'``, ``'fp16'`` (autocast + GradScaler) or ``'bf16'`` (autocast);
            mixed precision applies on CUDA only, CPU runs in fp32.
        device: ``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
        pretrained_g: base generator file; None = look up RVC's file for the preset.
        pretrained_d: base discriminator file; None = look up RVC's file for the preset.
        use_pretrained: look up RVC's base files when the paths are None (False = from scratch).
        use_epoch_exports: also keep ``<name>_e<epoch>_s<step>.pth`` at every save point.
        feature_dim: content-feature width when it is not the version's HuBERT width (384 for
            whisper-tiny-en, stored in the v2 layout); None = 256 (v1) or 768 (v2).
        generator: explicit generator hyper-parameters instead of the ``size`` preset (e.g. the
            narrow networks of the training goldens); its sample rate, content width and pitch
            setting must be the run's, its ``segment_size`` is replaced by the training window.
        discriminator: explicit discriminator periods and widths instead of the preset.
        speakers: rows of the generator's speaker table; None = the preset's (RVC's 109 for
            full size). With another count the base file's table is not used (it is reported).
        seed: seeds initialisation, batch order and noise.
        num_workers: data-loading worker processes (0 = load in the training process).
    """

    sample_rate: int = 40000
    version: str = "v2"
    use_f0: bool = True
    size: str = "full"
    batch_size: int = 4
    epochs: int = 20
    save_every_epochs: int = 5
    keep_last: int = 2
    log_every_steps: int = 1
    max_steps: int = 0
    learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.8, 0.99)
    eps: float = 1e-9
    lr_decay: float = 0.999875
    c_mel: float = 45.0
    c_kl: float = 1.0
    segment_size: int | None = None
    weight_decay: float = 0.01
    grad_clip_norm: float | None = None
    discriminator_start_step: int = 0
    precision: str = "fp32"
    device: str = "auto"
    pretrained_g: str | None = None
    pretrained_d: str | None = None
    use_pretrained: bool = True
    use_epoch_exports: bool = True
    feature_dim: int | None = None
    generator: SynthConfig | None = None
    discriminator: DiscriminatorConfig | None = None
    speakers: int | None = None
    seed: int = 1234
    num_workers: int = 0

    def __post_init__(self) -> None:
        def bad(message: str) -> ConfigError:
            return ConfigError(f"VitsTrainConfig: {message}")

        if self.version not in rvc.LAYOUTS:
            raise bad(f"version must be one of {rvc.versions()}, got {self.version!r}")
        if self.size not in MODEL_SIZES:
            raise bad(f"size must be one of {names(MODEL_SIZES)}, got {self.size!r}")
        allowed_rates = (16000, 32000, 40000, 48000) if self.size == "tiny" else (32000, 40000, 48000)
        if self.sample_rate not in allowed_rates:
            raise bad(
                f"sample_rate must be one of {allowed_rates} for size {self.size!r}, got {self.sample_rate}"
            )
        for name in ("use_f0", "use_pretrained", "use_epoch_exports"):
            if not isinstance(getattr(self, name), bool):
                raise bad(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("batch_size", "epochs", "save_every_epochs", "keep_last", "log_every_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(f"{name} must be a positive int, got {value!r}")
        for name in ("max_steps", "num_workers", "seed", "discriminator_start_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(f"{name} must be an int >= 0, got {value!r}")
        if self.speakers is not None and (
            isinstance(self.speakers, bool) or not isinstance(self.speakers, int) or self.speakers < 1
        ):
            raise bad(f"speakers must be a positive int or None, got {self.speakers!r}")
        dim = self.feature_dim
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise bad(f"feature_dim must be a positive int or None, got {self.feature_dim!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise bad(f"betas must be two numbers in [0, 1), got {self.betas}")
        for name in ("learning_rate", "eps", "c_mel", "c_kl", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(f"{name} must be a finite number, got {value!r}")
            if value < 0 or (name in ("learning_rate", "eps") and value == 0):
                raise bad(
                    f"{name} must be {'> 0' if name in ('learning_rate', 'eps') else '>= 0'}, got {value}"
                )
        if not 0.0 < self.lr_decay <= 1.0:
            raise bad(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.grad_clip_norm is not None and not (
            isinstance(self.grad_clip_norm, (int, float)) and self.grad_clip_norm > 0
        ):
            raise bad(f"grad_clip_norm must be > 0 or None, got {self.grad_clip_norm!r}")
        if self.precision not in TRAIN_PRECISIONS:
            raise bad(f"precision must be one of {names(TRAIN_PRECISIONS)}, got {self.precision!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise bad(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        hop = self.spectrogram.hop_length
        if self.segment_size is not None:
            if isinstance(self.segment_size, bool) or not isinstance(self.segment_size, int):
                raise bad(f"segment_size must be an int (samples) or None, got {self.segment_size!r}")
            if self.segment_size < hop or self.segment_size % hop:
                raise bad(
                    f"segment_size ({self.segment_size}) must be a positive multiple of the hop ({hop})"
                )
        self._check_networks()

    def _check_networks(self) -> None:
        net = self.generator
        if isinstance(net, Mapping):
            object.__setattr__(self, "generator", net := SynthConfig.from_dict(net))
        if isinstance(self.discriminator, Mapping):
            object.__setattr__(self, "discriminator", DiscriminatorConfig.from_dict(self.discriminator))
        if net is not None and not isinstance(net, SynthConfig):
            raise ConfigError(f"VitsTrainConfig: generator must be a SynthConfig or None, got {net!r}")
        if self.discriminator is not None and not isinstance(self.discriminator, DiscriminatorConfig):
            raise ConfigError("VitsTrainConfig: discriminator must be a DiscriminatorConfig or None")
        if net is None:
            return
        expected = {
            "sample_rate": self.sample_rate,
            "content_dim": self.content_dim,
            "use_f0": self.use_f0,
            "spec_channels": self.spectrogram.n_freqs,
            "hop_length": self.spectrogram.hop_length,
        }
        wrong = [f"{k} {getattr(net, k)} (needs {v})" for k, v in expected.items() if getattr(net, k) != v]
        if wrong:
            raise ConfigError(f"VitsTrainConfig: the generator does not fit the run: {', '.join(wrong)}")

    @property
    def content_dim(self) -> int:
        """Content-feature width: ``feature_dim``, else the version's (256 or 768)."""
        return self.feature_dim or rvc.content_dim(self.version)

    @property
    def spectrogram(self) -> SpectrogramConfig:
        """STFT/mel settings of the sample rate."""
        return SpectrogramConfig.for_sample_rate(self.sample_rate)

    @property
    def segment_samples(self) -> int:
        """Training window in samples."""
        if self.segment_size is not None:
            return self.segment_size
        if self.size == "tiny":
            return TINY_SEGMENT_FRAMES * self.spectrogram.hop_length
        return _SEGMENT_SAMPLES[(self.version, self.sample_rate)]

    @property
    def segment_frames(self) -> int:
        """Training window in frames."""
        return self.segment_samples // self.spectrogram.hop_length

    def synth_config(self) -> SynthConfig:
        """The generator's config (``segment_size`` in frames is the training window)."""
        net = self._base_synth_config()
        if self.speakers is not None:
            net = replace(net, spk_embed_dim=self.speakers)
        return net

    def _base_synth_config(self) -> SynthConfig:
        if self.generator is not None:
            return replace(self.generator, segment_size=self.segment_frames)
        if self.size == "full":
            base = SynthConfig.preset(self.version, self.sample_rate, self.use_f0)
            return replace(base, segment_size=self.segment_frames, content_dim=self.content_dim)
        if self.sample_rate == 16000:
            rates, kernels = _TINY_16K_DECODER
        else:
            preset = SynthConfig.preset(self.version, self.sample_rate, self.use_f0)
            rates, kernels = preset.upsample_rates, preset.upsample_kernel_sizes
        return SynthConfig(
            spec_channels=self.spectrogram.n_freqs,
            segment_size=self.segment_frames,
            inter_channels=16,
            hidden_channels=32,
            filter_channels=64,
            n_heads=2,
            n_layers=2,
            kernel_size=3,
            p_dropout=0.0,
            resblock="1",
            resblock_kernel_sizes=(3, 7),
            resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)),
            upsample_rates=rates,
            upsample_initial_channel=64,
            upsample_kernel_sizes=kernels,
            spk_embed_dim=1,
            gin_channels=16,
            sample_rate=self.sample_rate,
            content_dim=self.content_dim,
            use_f0=self.use_f0,
        )

    def discriminator_config(self) -> DiscriminatorConfig:
        """RVC's v1/v2 discriminator; for ``tiny`` one period, 1-tap kernels and 1/16 of the widths."""
        if self.discriminator is not None:
            return self.discriminator
        if self.size == "tiny":
            return DiscriminatorConfig(
                periods=TINY_DISCRIMINATOR_PERIODS,
                kernel_size=TINY_DISCRIMINATOR_KERNEL,
                width_divisor=TINY_DISCRIMINATOR_WIDTH_DIVISOR,
            )
        return DiscriminatorConfig.preset(self.version)

    @classmethod
    def tiny(cls, **overrides: Any) -> VitsTrainConfig:
        """A small 16 kHz pitch model for tests and benchmarks (no pretrained files)."""
        values: dict[str, Any] = {
            "sample_rate": 16000,
            "version": "v1",
            "size": "tiny",
            "batch_size": 1,
            "epochs": 2,
            "save_every_epochs": 1,
            "use_pretrained": False,
        }
        values.update(overrides)
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VitsTrainConfig:
        """Build from a plain dict; unknown keys are a :class:`ConfigError`."""
        check_config_keys(cls, data, require_all=False)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict."""
        out = asdict(self)
        out["betas"] = list(self.betas)
        for name in ("generator", "discriminator"):
            net = getattr(self, name)
            out[name] = None if net is None else net.to_dict()
        return out


def export_synth_config(config: VitsTrainConfig) -> SynthConfig:
    """The config written into the inference file (RVC stores segment_size 32)."""
    return replace(config.synth_config(), segment_size=RVC_EXPORT_SEGMENT_FRAMES)


def build_networks(config: VitsTrainConfig) -> tuple[Synthesizer, MultiPeriodDiscriminator]:
    """The training generator (with its posterior encoder) and discriminator.

    Built on the current default device, so ``with torch.device('meta'):`` gives shapes only.
    """
    return Synthesizer(config.synth_config(), use_posterior_encoder=True), MultiPeriodDiscriminator(
        config.discriminator_config()
    )


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class VitsItem:
    """One utterance cut to ``frames`` frames (CPU tensors).

    Attributes:
        phone: (T, content_dim) float32 content features at 100 fps.
        pitch: (T,) int64 coarse pitch, or None (no-pitch models).
        pitchf: (T,) float32 F0 in Hz, or None.
        spec: (n_freqs, T) float32 linear spectrogram.
        wav: (T * hop,) float32 audio.
        sid: speaker id (Timbre trains one speaker: 0).
    """

    phone: Tensor
    pitch: Tensor | None
    pitchf: Tensor | None
    spec: Tensor
    wav: Tensor
    sid: int = SPEAKER_ID

    @property
    def frames(self) -> int:
        """T."""
        return int(self.spec.shape[-1])


@dataclass(frozen=True)
class VitsBatch:
    """Padded batch (RVC's collate: longest first).

    Attributes:
        phone: (B, T, content_dim) float32; phone_lengths: (B,) int64.
        pitch: (B, T) int64 or None; pitchf: (B, T) float32 or None.
        spec: (B, n_freqs, T) float32; spec_lengths: (B,) int64 (equal to phone_lengths).
        wav: (B, 1, T * hop) float32; wav_lengths: (B,) int64.
        sid: (B,) int64 speaker ids.
    """

    phone: Tensor
    phone_lengths: Tensor
    pitch: Tensor | None
    pitchf: Tensor | None
    spec: Tensor
    spec_lengths: Tensor
    wav: Tensor
    wav_lengths: Tensor
    sid: Tensor

    def to(self, device: torch.device, *, non_blocking: bool = False) -> VitsBatch:
        """Copy to ``device``."""
        moved = {
            f.name: None
            if getattr(self, f.name) is None
            else getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
        }
        return VitsBatch(**moved)

    def pin_memory(self) -> VitsBatch:
        """Page-locked copy (used by the DataLoader when training on CUDA)."""
        pinned = {
            f.name: None if getattr(self, f.name) is None else getattr(self, f.name).pin_memory()
            for f in fields(self)
        }
        return VitsBatch(**pinned)


class VitsDataset(torch.utils.data.Dataset):
    """Lazy view of the prepared training examples; lengths are read from file headers.

    Items shorter than ``min_frames`` (the training window) are left out, as RVC's sampler
    drops its shortest bucket.

    Args:
        examples: from :func:`train.features.list_training_examples`.
        spectrogram: STFT settings of the model rate.
        content_dim: expected feature width.
        use_f0: read the F0 files.
        min_frames: shortest usable item.

    Raises:
        VitsDataError: no usable item, or files that do not fit the model.
    """

    def __init__(
        self,
        examples: Sequence[TrainingExample],
        *,
        spectrogram: SpectrogramConfig,
        content_dim: int,
        use_f0: bool,
        min_frames: int,
    ) -> None:
        import soundfile as sf

        self.spectrogram = spectrogram
        self.content_dim = content_dim
        self.use_f0 = use_f0
        hop = spectrogram.hop_length
        kept: list[TrainingExample] = []
        lengths: list[int] = []
        total_samples = 0
        short: list[str] = []
        for example in examples:
            if use_f0 and (example.f0_coarse_path is None or example.f0_hz_path is None):
                raise VitsDataError(f"segment {example.name} has no F0 files; extract features with pitch")
            try:
                info = sf.info(str(example.gt_wav_path))
                feature_shape = np.load(example.feature_path, mmap_mode="r").shape
                f0_frames = [
                    np.load(p, mmap_mode="r").shape[0]
                    for p in (example.f0_coarse_path, example.f0_hz_path)
                    if use_f0 and p is not None
                ]
            except (OSError, ValueError, RuntimeError) as exc:
                raise VitsDataError(
                    f"cannot read the training files of segment {example.name} ({exc}); "
                    "prepare the dataset and extract the features again"
                ) from exc
            if info.samplerate != spectrogram.sample_rate:
                raise VitsDataError(
                    f"{example.gt_wav_path.name} is at {info.samplerate} Hz but the model trains at "
                    f"{spectrogram.sample_rate} Hz; prepare the dataset again at {spectrogram.sample_rate} Hz"
                )
            if len(feature_shape) != 2 or feature_shape[1] != content_dim:
                raise VitsDataError(
                    f"{example.feature_path} holds features of shape {feature_shape}, but this model needs "
                    f"{content_dim}-dim features; extract them for the right version "
                    f"({'v1' if content_dim == 256 else 'v2'})"
                )
            frames = min(info.frames // hop, feature_shape[0] * FEATURE_UPSAMPLE, MAX_FRAMES, *f0_frames)
            if frames < min_frames:
                short.append(example.name)
                continue
            kept.append(example)
            lengths.append(frames)
            total_samples += info.frames
        if short:
            log.info(
                "%d segments shorter than the %d-frame training window are left out", len(short), min_frames
            )
        if not kept:
            raise VitsDataError(
                f"no training segment is at least {min_frames} frames "
                f"({min_frames * hop / spectrogram.sample_rate:.2f} s) long; add more audio"
            )
        self.examples: list[TrainingExample] = kept
        self.lengths: list[int] = lengths
        self.duration_s = total_samples / spectrogram.sample_rate

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> VitsItem:
        """Load one item (RVC's ``get_audio_text_pair``)."""
        import soundfile as sf

        example = self.examples[index]
        hop = self.spectrogram.hop_length
        try:
            audio, _ = sf.read(str(example.gt_wav_path), dtype="float32", always_2d=False)
            phone = np.load(example.feature_path, allow_pickle=False)
            pitch = pitchf = None
            if self.use_f0:
                pitch = np.load(example.f0_coarse_path, allow_pickle=False)  # type: ignore[arg-type]
                pitchf = np.load(example.f0_hz_path, allow_pickle=False)  # type: ignore[arg-type]
        except (OSError, ValueError, RuntimeError) as exc:
            raise VitsDataError(f"cannot read segment {example.name} ({exc}); prepare it again") from exc
        if audio.ndim == 2:
            audio = audio.mean(axis=1)
        phone = np.repeat(np.asarray(phone, dtype=np.float32), FEATURE_UPSAMPLE, axis=0)
        wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        spec = linear_spectrogram(wav, self.spectrogram)
        frames = min(phone.shape[0], MAX_FRAMES, spec.shape[-1])
        if pitch is not None and pitchf is not None:
            frames = min(frames, pitch.shape[0], pitchf.shape[0])
        return VitsItem(
            phone=torch.from_numpy(np.ascontiguousarray(phone[:frames])),
            pitch=None if pitch is None else torch.from_numpy(np.asarray(pitch[:frames], dtype=np.int64)),
            pitchf=None
            if pitchf is None
            else torch.from_numpy(np.asarray(pitchf[:frames], dtype=np.float32)),
            spec=spec[:, :frames].contiguous(),
            wav=wav[: frames * hop].contiguous(),
        )


def collate(items: Sequence[VitsItem], *, hop_length: int, min_frames: int = 1) -> VitsBatch:
    """Pad items (longest first, a stable sort) to the longest, and to at least ``min_frames`` frames."""
    items = sorted(items, key=lambda it: it.frames, reverse=True)
    frames = max(items[0].frames, min_frames)
    batch = len(items)
    phone = torch.zeros(batch, frames, items[0].phone.shape[1])
    spec = torch.zeros(batch, items[0].spec.shape[0], frames)
    wav = torch.zeros(batch, 1, frames * hop_length)
    has_pitch = items[0].pitch is not None
    pitch = torch.zeros(batch, frames, dtype=torch.int64) if has_pitch else None
    pitchf = torch.zeros(batch, frames) if has_pitch else None
    lengths = torch.zeros(batch, dtype=torch.int64)
    for i, item in enumerate(items):
        n = item.frames
        lengths[i] = n
        phone[i, :n] = item.phone
        spec[i, :, :n] = item.spec
        wav[i, 0, : item.wav.shape[0]] = item.wav
        if pitch is not None and pitchf is not None and item.pitch is not None and item.pitchf is not None:
            pitch[i, :n] = item.pitch
            pitchf[i, :n] = item.pitchf
    return VitsBatch(
        phone=phone,
        phone_lengths=lengths,
        pitch=pitch,
        pitchf=pitchf,
        spec=spec,
        spec_lengths=lengths.clone(),
        wav=wav,
        wav_lengths=lengths * hop_length,
        sid=torch.tensor([item.sid for item in items], dtype=torch.int64),
    )


class _Collate:
    """Picklable collate function for DataLoader workers."""

    def __init__(self, hop_length: int, min_frames: int) -> None:
        self.hop_length = hop_length
        self.min_frames = min_frames

    def __call__(self, items: Sequence[VitsItem]) -> VitsBatch:
        return collate(items, hop_length=self.hop_length, min_frames=self.min_frames)


def bucket_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    boundaries: Sequence[int] = BUCKET_BOUNDARIES_FRAMES,
) -> list[list[int]]:
    """This rank's batches of one epoch: items grouped by length bucket, order fixed by (seed, epoch).

    Like RVC's ``DistributedBucketSampler``: each bucket is shuffled and padded (by repeating its
    items) to a multiple of ``world_size * batch_size``, rank ``r`` takes every ``world_size``-th
    item, the bucket is cut into batches, and the batches of all buckets are shuffled. Every rank
    gets the same number of batches. Items longer than the last boundary go to the last bucket.

    Returns:
        Lists of dataset indices.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    buckets: list[list[int]] = [[] for _ in range(len(boundaries) - 1)]
    for index, length in enumerate(lengths):
        slot = int(np.searchsorted(boundaries, length, side="left")) - 1
        buckets[min(max(slot, 0), len(buckets) - 1)].append(index)
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    per_step = world_size * batch_size
    batches: list[list[int]] = []
    for bucket in buckets:
        if not bucket:
            continue
        order = [bucket[i] for i in torch.randperm(len(bucket), generator=generator).tolist()]
        padded_len = -(-len(order) // per_step) * per_step
        padded = (order * (padded_len // len(order) + 1))[:padded_len]
        mine = padded[rank::world_size]
        batches.extend(mine[i : i + batch_size] for i in range(0, len(mine), batch_size))
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


# --------------------------------------------------------------------------- losses


def discriminator_losses(
    real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor]
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """LSGAN discriminator loss ``sum_k [mean((1 - D_k(y))^2) + mean(D_k(y_hat)^2)]`` (float32).

    Returns:
        ``(loss, real terms, fake terms)``, one term per sub-discriminator (RVC's return value).
    """
    loss = torch.zeros((), device=real_logits[0].device)
    real_terms, fake_terms = [], []
    for real, fake in zip(real_logits, fake_logits, strict=True):
        real_term = torch.mean((1 - real.float()) ** 2)
        fake_term = torch.mean(fake.float() ** 2)
        loss = loss + (real_term + fake_term)
        real_terms.append(real_term)
        fake_terms.append(fake_term)
    return loss, real_terms, fake_terms


def discriminator_loss(real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor]) -> Tensor:
    """The total of :func:`discriminator_losses`."""
    return discriminator_losses(real_logits, fake_logits)[0]


def generator_adversarial_losses(fake_logits: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """LSGAN generator loss ``sum_k mean((1 - D_k(y_hat))^2)`` (float32) and its per-k terms."""
    loss = torch.zeros((), device=fake_logits[0].device)
    terms = []
    for fake in fake_logits:
        term = torch.mean((1 - fake.float()) ** 2)
        loss = loss + term
        terms.append(term)
    return loss, terms


def generator_adversarial_loss(fake_logits: Sequence[Tensor]) -> Tensor:
    """The total of :func:`generator_adversarial_losses`."""
    return generator_adversarial_losses(fake_logits)[0]


def feature_matching_loss(
    real_fmaps: Sequence[Sequence[Tensor]], fake_fmaps: Sequence[Sequence[Tensor]]
) -> Tensor:
    """``2 * sum mean|fmap_real - fmap_fake|`` over every layer of every discriminator (float32)."""
    loss = torch.zeros((), device=real_fmaps[0][0].device)
    for real_maps, fake_maps in zip(real_fmaps, fake_fmaps, strict=True):
        for real, fake in zip(real_maps, fake_maps, strict=True):
            loss = loss + torch.mean(torch.abs(real.float().detach() - fake.float()))
    return 2 * loss


def kl_loss(z_p: Tensor, logs_q: Tensor, m_p: Tensor, logs_p: Tensor, z_mask: Tensor) -> Tensor:
    """VITS KL term between the flowed posterior sample and the prior, per valid latent frame.

    ``sum((logs_p - logs_q - 1/2 + (z_p - m_p)^2 exp(-2 logs_p) / 2) * mask) / sum(mask)``
    (Kim et al. 2021, eq. 4, evaluated at the sample ``z_p``). Inputs (B, C, T), mask (B, 1, T).
    """
    z_p, logs_q, m_p, logs_p, z_mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, z_mask))
    kl = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * z_mask) / torch.sum(z_mask)


STEP_SCALARS = (
    "loss_disc",
    "loss_gen",
    "loss_fm",
    "loss_mel",
    "loss_kl",
    "loss_gen_all",
    "grad_norm_d",
    "grad_norm_g",
)
"""The scalar results of one step, by RVC's names."""
FORWARD_NAMES = ("z", "z_p", "m_p", "logs_p", "m_q", "logs_q")
"""The latents of the generator's training forward, in the order it returns them."""


@dataclass(frozen=True)
class StepForward:
    """The generator's training forward and the tensors derived from it.

    Attributes:
        y_hat: (B, 1, S) generated window; ids_slice: (B,) int64 window starts in frames.
        x_mask, z_mask: (B, 1, T) text-encoder and spectrogram masks.
        latents: ``(z, z_p, m_p, logs_p, m_q, logs_q)``, each (B, inter, T).
        mel: (B, n_mels, T) mel of the batch spectrogram; y_mel: (B, n_mels, W) its windows.
        y_hat_mel: (B, n_mels, W) mel of ``y_hat``; wave: (B, 1, S) the real windows.
    """

    y_hat: Tensor
    ids_slice: Tensor
    x_mask: Tensor
    z_mask: Tensor
    latents: tuple[Tensor, ...]
    mel: Tensor
    y_mel: Tensor
    y_hat_mel: Tensor
    wave: Tensor


def _floats(terms: Sequence[Tensor]) -> list[float]:
    return torch.stack([t.detach().float() for t in terms]).tolist()


@dataclass
class StepTrace:
    """What one :meth:`VitsTrainer.train_step` computed, to compare it with a reference step.

    Attributes:
        tensors: detached copies by RVC's names: ``y_hat``, ``ids_slice``, ``x_mask``,
            ``z_mask``, the :data:`FORWARD_NAMES`, ``mel``, ``y_mel``, ``y_hat_mel``,
            ``wave_slice``, and the discriminator logits ``dstep_y_d_hat_{r,g}_<k>`` (before its
            update) and ``gstep_y_d_hat_{r,g}_<k>`` (after it, for the generator losses).
        losses: the :data:`STEP_SCALARS` and the per-sub-discriminator ``losses_disc_r``,
            ``losses_disc_g`` and ``losses_gen``.
        grads: ``{'generator' | 'discriminator': {parameter name: gradient}}`` as each optimizer
            stepped.
    """

    tensors: dict[str, Tensor] = field(default_factory=dict)
    losses: dict[str, Any] = field(default_factory=dict)
    grads: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    def record_forward(self, fwd: StepForward) -> None:
        """Keep the forward tensors."""
        named = dict(zip(FORWARD_NAMES, fwd.latents, strict=True))
        named |= {
            "y_hat": fwd.y_hat,
            "ids_slice": fwd.ids_slice,
            "x_mask": fwd.x_mask,
            "z_mask": fwd.z_mask,
            "mel": fwd.mel,
            "y_mel": fwd.y_mel,
            "y_hat_mel": fwd.y_hat_mel,
            "wave_slice": fwd.wave,
        }
        self.tensors |= {k: v.detach().clone() for k, v in named.items()}

    def record_logits(self, stage: str, real: Sequence[Tensor], fake: Sequence[Tensor]) -> None:
        """Keep one discriminator pass's outputs (``stage`` 'dstep' or 'gstep')."""
        for k, (r, g) in enumerate(zip(real, fake, strict=True)):
            self.tensors[f"{stage}_y_d_hat_r_{k}"] = r.detach().clone()
            self.tensors[f"{stage}_y_d_hat_g_{k}"] = g.detach().clone()

    def record_grads(self, role: str, module: nn.Module) -> None:
        """Keep ``module``'s gradients (parameters without one are left out)."""
        self.grads[role] = {
            name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None
        }


# --------------------------------------------------------------------------- pretrained


def _read_pretrained_state(path: Path, role: str) -> dict[str, Tensor]:
    try:
        obj = load_checkpoint(path)
    except TimbreError as exc:
        raise PretrainedError(f"cannot read the pretrained {role} {path}: {exc}") from exc
    state = obj.get("model") if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PretrainedError(
            f"{path.name} is not an RVC pretrained {role}: expected a dict with 'model' holding a state dict "
            "(like f0G40k.pth / f0D40k.pth)"
        )
    keys = list(state)
    if keys and all(isinstance(k, str) and k.startswith("module.") for k in keys):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _few(keys: Sequence[str], limit: int = 4) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(repr(k) for k in keys[:limit]) + more


SPEAKER_TABLE_KEY = "emb_g.weight"
"""The generator's speaker table: the one tensor a base file may give in another shape."""


@dataclass(frozen=True)
class PretrainedLoad:
    """What a pretrained file gave a network.

    Attributes:
        role: ``'generator'`` or ``'discriminator'``.
        path: the file.
        loaded: keys taken from the file.
        new: keys that keep their fresh initialisation: the speaker table when the file's
            speaker count differs from the model's (RVC's bases have 109 speakers).
    """

    role: str
    path: Path
    loaded: tuple[str, ...]
    new: tuple[str, ...]

    def summary(self) -> str:
        """One line for the log and the run info."""
        text = f"pretrained {self.role} {self.path.name}: {len(self.loaded)} tensors loaded"
        if self.new:
            text += f", {len(self.new)} new (fresh initialisation): {', '.join(self.new)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict (the key lists in full)."""
        return {"role": self.role, "path": str(self.path), "loaded": list(self.loaded), "new": list(self.new)}


def load_pretrained_module(module: nn.Module, path: Path, role: str, description: str) -> PretrainedLoad:
    """Load RVC's ``{'model': state_dict}`` file into ``module`` strictly, or raise PretrainedError.

    Every key must be there with the model's shape, except the generator's speaker table
    (:data:`SPEAKER_TABLE_KEY`), which keeps its fresh initialisation when the file has another
    speaker count. Tensors are converted to the model's dtype (base files are fp16).
    """
    state = _read_pretrained_state(path, role)
    own = module.state_dict()
    if role == "generator" and any(k.startswith("discriminators.") for k in state):
        raise PretrainedError(
            f"{path.name} is a discriminator file, but it was given as the pretrained generator"
        )
    if role == "discriminator" and "enc_p.emb_phone.weight" in state:
        raise PretrainedError(
            f"{path.name} is a generator file, but it was given as the pretrained discriminator"
        )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [k for k in own if k in state and state[k].shape != own[k].shape]
    new = [k for k in resized if k == SPEAKER_TABLE_KEY and own[k].dim() == state[k].dim() == 2]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in resized if k not in new]
    if missing or unexpected or wrong:
        raise PretrainedError(
            f"the pretrained {role} {path.name} does not fit the {description} model being trained: "
            f"{len(missing)} missing keys [{_few(missing)}], {len(unexpected)} unexpected keys "
            f"[{_few(unexpected)}], {len(wrong)} wrong shapes [{_few(wrong)}]. Use the base files made "
            "for the same version, sample rate and pitch setting"
        )
    for key in new:
        state[key] = own[key]
    module.load_state_dict(state, strict=True)
    return PretrainedLoad(role, path, tuple(k for k in own if k not in new), tuple(new))


def resolve_pretrained(
    config: VitsTrainConfig, pretrained_dir: str | os.PathLike[str] | None = None
) -> tuple[Path | None, Path | None, str | None]:
    """The base (generator, discriminator) files to start from, and a warning when there are none.

    Explicit ``pretrained_g`` / ``pretrained_d`` paths must exist. Otherwise, for full-size models
    with ``use_pretrained``, RVC's files for the preset are looked up in ``pretrained_dir``.

    Returns:
        ``(g_path | None, d_path | None, warning | None)``; the warning says training starts from scratch.

    Raises:
        PretrainedError: an explicit path does not exist.
        AssetError: a base file is there but damaged (wrong size), or only partly downloaded.
    """
    from infer.assets import asset_status, pretrained_pair, resolve_asset

    explicit: list[Path | None] = []
    for role, value in (("generator", config.pretrained_g), ("discriminator", config.pretrained_d)):
        if value is None:
            explicit.append(None)
            continue
        path = Path(value).expanduser()
        if not path.is_file():
            raise PretrainedError(
                f"the pretrained {role} {path} does not exist; check the path or leave it empty"
            )
        explicit.append(path)
    g_path, d_path = explicit
    describe = f"{config.version} {config.sample_rate // 1000} kHz {'pitch' if config.use_f0 else 'no-pitch'}"
    if g_path is None and d_path is None and config.use_pretrained and config.size == "full":
        g_name, d_name = pretrained_pair(config.version, config.sample_rate, use_f0=config.use_f0)
        states = {s.name: s for s in asset_status(pretrained_dir) if s.name in (g_name, d_name)}
        if all(states[n].state == "missing" for n in (g_name, d_name)):
            where = ", ".join(str(states[n].path) for n in (g_name, d_name))
            return (
                None,
                None,
                (
                    f"Training the {describe} model from scratch: the pretrained base files were not found "
                    f"({where}). A model trained from scratch needs much more data and many more epochs, and "
                    "usually sounds far worse; download them with "
                    f"`python -m infer assets download {g_name}` "
                    f"and `python -m infer assets download {d_name}`"
                ),
            )
        g_path, d_path = resolve_asset(g_name, pretrained_dir), resolve_asset(d_name, pretrained_dir)
    if g_path is None and d_path is None:
        why = (
            "a tiny model has no pretrained base"
            if config.size == "tiny"
            else "pretrained files are turned off"
        )
        return (
            None,
            None,
            (
                f"Training the {describe} model from scratch ({why}). A model trained from scratch needs "
                "much more data and many more epochs, and usually sounds far worse than one fine-tuned from "
                "the base files"
            ),
        )
    if g_path is None or d_path is None:
        missing_role = "generator" if g_path is None else "discriminator"
        return (
            g_path,
            d_path,
            f"No pretrained {missing_role}: it starts from random weights, expect worse quality",
        )
    return g_path, d_path, None


# --------------------------------------------------------------------------- trainer


def _distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); (0, 1, 0) without an initialised process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return (
            torch.distributed.get_rank(),
            torch.distributed.get_world_size(),
            int(os.environ.get("LOCAL_RANK", "0")),
        )
    return 0, 1, 0


def _pick_device(config: VitsTrainConfig, local_rank: int, world_size: int) -> torch.device:
    wanted = config.device
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {config.device!r} was asked for but CUDA is not available; use 'cpu'")
        if world_size > 1 or wanted == "cuda":
            return torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
    return torch.device(wanted)


def _grad_norm(parameters: Sequence[nn.Parameter], max_norm: float | None) -> Tensor:
    """Global L2 norm of the gradients; they are clipped to ``max_norm`` unless it is None."""
    with_grad = [p for p in parameters if p.grad is not None]
    if not with_grad:
        return torch.zeros(())
    if max_norm is None:
        return torch.nn.utils.get_total_norm([p.grad for p in with_grad])
    return torch.nn.utils.clip_grad_norm_(with_grad, max_norm)


_NEVER_STEPS = 1 << 62
_RESUME_FIELDS = ("sample_rate", "version", "use_f0", "size", "batch_size", "seed")


class VitsTrainer(Trainer):
    """RVC's GAN training of the synthesizer on prepared examples.

    Args:
        config: the run's settings.
        examples: the training segments.
        run_dir: checkpoints and ``metrics.jsonl``.
        export_dir: where inference files go; None = no exports.
        name: the model's name (file stem of the exports).
        content_encoder: recorded in the exported metadata.
        f0_method: recorded in the exported metadata.
        progress, should_stop, on_metrics: see :class:`~train.trainer.Trainer`.
    """

    def __init__(
        self,
        config: VitsTrainConfig,
        examples: Sequence[TrainingExample],
        *,
        run_dir: Path,
        export_dir: Path | None = None,
        name: str = "model",
        content_encoder: str = DEFAULT_CONTENT_ENCODER,
        f0_method: str | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
        on_metrics: MetricsFn | None = None,
    ) -> None:
        rank, world_size, local_rank = _distributed()
        self.rank, self.world_size = rank, world_size
        super().__init__(
            TrainerConfig(
                run_dir=Path(run_dir),
                epochs=config.epochs,
                save_every_epochs=config.save_every_epochs,
                keep_last=config.keep_last,
                # Only rank 0 writes metrics rows (and checkpoints, see save_checkpoint).
                log_every_steps=config.log_every_steps if rank == 0 else _NEVER_STEPS,
                seed=config.seed,
                max_steps=config.max_steps,
            ),
            progress=progress if rank == 0 else None,
            should_stop=should_stop,
            on_metrics=on_metrics if rank == 0 else None,
        )
        self.vits_config = config
        self.name = name
        self.export_dir = None if export_dir is None else Path(export_dir)
        self.content_encoder = content_encoder
        self.f0_method = f0_method
        self.warnings: list[str] = []
        self.trained_from = "scratch"
        self.pretrained_loads: list[PretrainedLoad] = []
        self.device = _pick_device(config, local_rank, world_size)
        self.spectrogram = config.spectrogram
        self.synth_config = config.synth_config()
        self.dataset = VitsDataset(
            examples,
            spectrogram=self.spectrogram,
            content_dim=config.content_dim,
            use_f0=config.use_f0,
            min_frames=config.segment_frames,
        )
        self.net_g, self.net_d = build_networks(config)
        self.net_g.to(self.device)
        self.net_d.to(self.device)
        self.optim_g = self._optimizer(self.net_g)
        self.optim_d = self._optimizer(self.net_d)
        self.sched_g = torch.optim.lr_scheduler.ExponentialLR(self.optim_g, gamma=config.lr_decay)
        self.sched_d = torch.optim.lr_scheduler.ExponentialLR(self.optim_d, gamma=config.lr_decay)
        self.amp_dtype: torch.dtype | None = None
        if config.precision != "fp32":
            if self.device.type == "cuda":
                self.amp_dtype = torch.float16 if config.precision == "fp16" else torch.bfloat16
            else:
                log.warning("precision %s needs CUDA; training on %s in fp32", config.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.train_g: nn.Module = self.net_g
        self.train_d: nn.Module = self.net_d
        if world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_g = nn.parallel.DistributedDataParallel(self.net_g, device_ids=ids)
            self.train_d = nn.parallel.DistributedDataParallel(self.net_d, device_ids=ids)
        self._last_export_step: int | None = None
        self._skipped_steps = 0

    def _optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        c = self.vits_config
        return torch.optim.AdamW(
            module.parameters(), lr=c.learning_rate, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay
        )

    # --- base hooks ---------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.net_g, "discriminator": self.net_d}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.optim_g, "discriminator": self.optim_d}

    def schedulers(self) -> dict[str, Any]:
        return {"generator": self.sched_g, "discriminator": self.sched_d}

    def extra_state(self) -> dict[str, Any]:
        settings = self.vits_config.to_dict()
        return {
            "scaler": self.scaler.state_dict(),
            "settings": {k: settings[k] for k in _RESUME_FIELDS}
            | {"segment_samples": self.vits_config.segment_samples, "world_size": self.world_size},
            "trained_from": self.trained_from,
            "warnings": list(self.warnings),
            "dataset_items": len(self.dataset),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        expected = self.extra_state()
        unknown = sorted(set(state) - set(expected))
        if unknown:
            raise ResumeError(f"checkpoint has extra state this trainer does not know: {unknown}")
        saved, current = state.get("settings", {}), expected["settings"]
        changed = [f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in current if saved.get(k) != current[k]]
        if changed:
            raise ResumeError(
                f"the checkpoint was trained with other settings ({'; '.join(changed)}); resume with the "
                "same settings, or start a new run in another folder"
            )
        self.scaler.load_state_dict(state.get("scaler", {}))
        self.trained_from = str(state.get("trained_from", "scratch"))
        self.warnings = [str(w) for w in state.get("warnings", [])]
        if state.get("dataset_items") != len(self.dataset):
            log.warning(
                "the dataset changed since the checkpoint (%s -> %d segments); training continues, "
                "but not in exactly the order of an uninterrupted run",
                state.get("dataset_items"),
                len(self.dataset),
            )

    def batches_per_epoch(self) -> int:
        return len(self._epoch_batches(1))

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        return bucket_batches(
            self.dataset.lengths,
            self.vits_config.batch_size,
            seed=self.vits_config.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world_size,
        )

    def batches(self, epoch: int) -> Iterator[VitsBatch | None]:
        """The epoch's batches; the ones a resumed epoch already consumed are yielded as None.

        The base skips the first ``batch_in_epoch`` batches without looking at them, so they are
        not loaded.
        """
        order = self._epoch_batches(epoch)
        skip = min(self.batch_in_epoch, len(order))
        yield from [None] * skip
        remaining = order[skip:]
        collate_fn = _Collate(self.spectrogram.hop_length, self.vits_config.segment_frames)
        if self.vits_config.num_workers == 0:
            for indices in remaining:
                yield collate_fn([self.dataset[i] for i in indices])
            return
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=remaining,
            num_workers=self.vits_config.num_workers,
            collate_fn=collate_fn,
            pin_memory=self.device.type == "cuda",
        )
        yield from loader

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def train_step(
        self,
        batch: VitsBatch | None,
        *,
        draws: TrainingDraws | None = None,
        trace: StepTrace | None = None,
    ) -> dict[str, float]:
        """One discriminator and one generator update, in RVC's order.

        1. The generator runs on the whole batch and decodes one window per row.
        2. Target mel: the mel of the batch spectrogram, sliced at the windows. Generated mel:
           the mel of the decoded audio.
        3. The discriminator scores (real window, detached fake): ``loss_disc``, AdamW step.
        4. The *updated* discriminator scores (real window, fake) again: ``loss_gen`` and
           ``loss_fm``; with ``c_mel`` * mel L1 and ``c_kl`` * KL they make ``loss_gen_all``,
           AdamW step.

        Args:
            batch: the padded batch.
            draws: the generator forward's random draws, given instead of drawn (replaying a
                reference step).
            trace: filled with the step's tensors, losses and gradients when given.

        Returns:
            The step's losses, gradient norms and learning rate.
        """
        if batch is None:
            raise RuntimeError("a skipped batch reached train_step")
        b = batch.to(self.device, non_blocking=True)
        use_adversarial = self.step >= self.vits_config.discriminator_start_step
        self.net_g.train()
        self.net_d.train()
        fwd = self._generator_forward(b, draws)
        if trace is not None:
            trace.record_forward(fwd)
        scalars: dict[str, Tensor] = {}
        if use_adversarial:
            scalars |= self._discriminator_step(fwd, trace)
        scalars |= self._generator_step(fwd, use_adversarial, trace)
        if self.scaler.is_enabled():
            scalars["grad_scale"] = torch.tensor(float(self.scaler.get_scale()))
        # One device-to-host copy for all the numbers.
        values = torch.stack(
            [v.detach().float().to(self.device).reshape(()) for v in scalars.values()]
        ).tolist()
        metrics = dict(zip(scalars, values, strict=True))
        metrics["lr"] = float(self.optim_g.param_groups[0]["lr"])
        if trace is not None:
            trace.losses |= {k: v for k, v in metrics.items() if k in STEP_SCALARS}
        return metrics

    def _generator_forward(self, b: VitsBatch, draws: TrainingDraws | None) -> StepForward:
        hop = self.spectrogram.hop_length
        segment_frames = self.synth_config.segment_size
        with self._autocast():
            y_hat, ids_slice, x_mask, z_mask, latents = self.train_g(
                b.phone, b.phone_lengths, b.pitch, b.pitchf, b.spec, b.spec_lengths, b.sid, draws=draws
            )
            wave = slice_segments(b.wav, ids_slice * hop, segment_frames * hop)
            with torch.autocast(device_type=self.device.type, enabled=False):
                # RVC: the mel of the whole (pre-trim) spectrogram, then the window of it.
                mel = spec_to_mel(b.spec, self.spectrogram)
                y_mel = slice_segments(mel, ids_slice, segment_frames)
                y_hat_mel = mel_spectrogram(y_hat.float().squeeze(1), self.spectrogram)
        return StepForward(y_hat, ids_slice, x_mask, z_mask, latents, mel, y_mel, y_hat_mel, wave)

    def _discriminator_step(self, fwd: StepForward, trace: StepTrace | None) -> dict[str, Tensor]:
        with self._autocast():
            real_logits, fake_logits, _, _ = self.train_d(fwd.wave, fwd.y_hat.detach())
            loss_disc, real_terms, fake_terms = discriminator_losses(real_logits, fake_logits)
        self.optim_d.zero_grad(set_to_none=True)
        self.scaler.scale(loss_disc).backward()
        self.scaler.unscale_(self.optim_d)
        grad_norm_d = _grad_norm(list(self.net_d.parameters()), self.vits_config.grad_clip_norm)
        if trace is not None:
            trace.record_logits("dstep", real_logits, fake_logits)
            trace.losses |= {"losses_disc_r": _floats(real_terms), "losses_disc_g": _floats(fake_terms)}
            trace.record_grads("discriminator", self.net_d)
        self._optimizer_step(self.optim_d, grad_norm_d)
        return {"loss_disc": loss_disc, "grad_norm_d": grad_norm_d}

    def _generator_step(
        self, fwd: StepForward, use_adversarial: bool, trace: StepTrace | None
    ) -> dict[str, Tensor]:
        c = self.vits_config
        scalars: dict[str, Tensor] = {}
        # The generator's step needs no discriminator weight gradients; skip them where DDP allows.
        freeze_d = use_adversarial and self.world_size == 1
        if freeze_d:
            self.net_d.requires_grad_(False)
        try:
            with self._autocast():
                if use_adversarial:
                    real_logits, fake_logits, real_fmaps, fake_fmaps = self.train_d(fwd.wave, fwd.y_hat)
                with torch.autocast(device_type=self.device.type, enabled=False):
                    mel_l1 = F.l1_loss(fwd.y_mel, fwd.y_hat_mel)
                    loss_mel = mel_l1 * c.c_mel
                    _, z_p, m_p, logs_p, _, logs_q = fwd.latents
                    loss_kl = kl_loss(z_p, logs_q, m_p, logs_p, fwd.z_mask) * c.c_kl
                    loss_gen_all = loss_mel + loss_kl
                    if use_adversarial:
                        loss_fm = feature_matching_loss(real_fmaps, fake_fmaps)
                        loss_gen, gen_terms = generator_adversarial_losses(fake_logits)
                        loss_gen_all = loss_gen + loss_fm + loss_mel + loss_kl  # RVC's order of the sum
                        scalars |= {"loss_gen": loss_gen, "loss_fm": loss_fm}
                        if trace is not None:
                            trace.record_logits("gstep", real_logits, fake_logits)
                            trace.losses["losses_gen"] = _floats(gen_terms)
            self.optim_g.zero_grad(set_to_none=True)
            self.scaler.scale(loss_gen_all).backward()
        finally:
            if freeze_d:
                self.net_d.requires_grad_(True)
        self.scaler.unscale_(self.optim_g)
        grad_norm_g = _grad_norm(list(self.net_g.parameters()), c.grad_clip_norm)
        if trace is not None:
            trace.record_grads("generator", self.net_g)
        self._optimizer_step(self.optim_g, grad_norm_g)
        self.scaler.update()
        return scalars | {
            "loss_mel": loss_mel,
            "mel_l1": mel_l1,
            "loss_kl": loss_kl,
            "loss_gen_all": loss_gen_all,
            "grad_norm_g": grad_norm_g,
        }

    @torch.no_grad()
    def evaluate(self, batch: VitsBatch, *, seed: int = 0) -> dict[str, float]:
        """Mel L1 and KL of ``batch`` with windows and noise drawn from ``seed`` (no update).

        The global RNG is forked, so evaluating never changes the training trajectory.
        """
        devices = [self.device] if self.device.type == "cuda" else []
        b = batch.to(self.device)
        was_training = self.net_g.training
        self.net_g.eval()
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                y_hat, ids_slice, _, z_mask, (_, z_p, m_p, logs_p, _, logs_q) = self.net_g(
                    b.phone, b.phone_lengths, b.pitch, b.pitchf, b.spec, b.spec_lengths, b.sid
                )
        finally:
            self.net_g.train(was_training)
        segment_frames = self.synth_config.segment_size
        y_mel = spec_to_mel(slice_segments(b.spec, ids_slice, segment_frames), self.spectrogram)
        y_hat_mel = mel_spectrogram(y_hat.float().squeeze(1), self.spectrogram)
        return {
            "mel_l1": float(F.l1_loss(y_hat_mel, y_mel)),
            "loss_kl": float(kl_loss(z_p, logs_q, m_p, logs_p, z_mask)),
        }

    def _optimizer_step(self, optimizer: torch.optim.Optimizer, grad_norm: Tensor) -> None:
        if self.scaler.is_enabled():
            self.scaler.step(optimizer)  # skips the step by itself when gradients overflowed
            return
        if not torch.isfinite(grad_norm):
            self._skipped_steps += 1
            log.warning("non-finite gradient norm at step %d; the update is skipped", self.step + 1)
            return
        optimizer.step()

    def on_epoch_end(self, epoch: int) -> None:
        self.sched_g.step()
        with warnings.catch_warnings():
            # Before discriminator_start_step the discriminator's optimizer has not stepped yet;
            # its schedule still follows the epochs.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.sched_d.step()

    # --- checkpoints and exports ------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        if self.rank != 0:
            return self.config.run_dir / f"ckpt_{self.step:09d}.pt"
        return super().save_checkpoint()

    def on_checkpoint(self, path: Path) -> None:
        if self.export_dir is not None:
            self.export()

    def metadata(self) -> ModelMetadata:
        """Timbre's metadata for an export of the current state."""
        extra: dict[str, Any] = {
            "dataset_duration_s": round(self.dataset.duration_s, 3),
            "f0_method": self.f0_method if self.vits_config.use_f0 else None,
            "created_at": datetime.now(tz=UTC).isoformat(timespec="seconds"),
            "trained_from": self.trained_from,
            "training_segments": len(self.dataset),
        }
        if self.warnings:
            extra["warnings"] = list(self.warnings)
        return ModelMetadata(
            name=self.name,
            version=self.vits_config.version,
            sample_rate=self.vits_config.sample_rate,
            use_f0=self.vits_config.use_f0,
            info=f"{self.epoch}epoch",
            content_encoder=self.content_encoder,
            epochs=self.epoch,
            steps=self.step,
            extra=extra,
        )

    def export(self) -> Path:
        """Write ``<name>.pth`` (and ``<name>_e<epoch>_s<step>.pth``) in RVC's inference format.

        Returns:
            The path of ``<name>.pth``.
        """
        if self.export_dir is None:
            raise ValueError("this trainer has no export_dir")
        self.export_dir.mkdir(parents=True, exist_ok=True)
        latest = self.export_dir / f"{self.name}.pth"
        config = export_synth_config(self.vits_config)
        metadata = self.metadata()
        if self.vits_config.use_epoch_exports:
            snapshot = self.export_dir / f"{self.name}_e{self.epoch}_s{self.step}.pth"
            save_voice_model(snapshot, self.net_g, config, metadata)
            with atomic_path(latest) as tmp:
                shutil.copyfile(snapshot, tmp)
        else:
            save_voice_model(latest, self.net_g, config, metadata)
        self._last_export_step = self.step
        log.info("exported %s (epoch %d, step %d)", latest.name, self.epoch, self.step)
        return latest

    def load_pretrained(self, g_path: Path | None, d_path: Path | None) -> list[PretrainedLoad]:
        """Start from RVC base files (strict, see :func:`load_pretrained_module`); either may be None.

        Returns:
            What each file gave (also logged and kept in ``pretrained_loads`` for the run info).
        """
        c = self.vits_config
        description = f"{c.version} {c.sample_rate} Hz {'pitch' if c.use_f0 else 'no-pitch'} ({c.size})"
        loads = [
            load_pretrained_module(module, path, role, description)
            for module, path, role in (
                (self.net_g, g_path, "generator"),
                (self.net_d, d_path, "discriminator"),
            )
            if path is not None
        ]
        for load in loads:
            log.info("%s", load.summary())
            if load.new:
                log.warning(
                    "the %s's %s starts from random values: the base file was made for another speaker count",
                    load.role,
                    ", ".join(load.new),
                )
        self.pretrained_loads = loads
        if len(loads) == 2:
            self.trained_from = "pretrained"
        elif loads:
            self.trained_from = f"pretrained {loads[0].role} only"
        else:
            self.trained_from = "scratch"
        return loads

    def warn(self, message: str) -> None:
        """Log a warning, show it through progress and record it in the exported metadata."""
        if self.rank == 0:
            log.warning("%s", message)
        self.warnings.append(message)
        report(
            self.progress,
            self.step / max(1, self.batches_per_epoch() * self.config.epochs),
            f"Warning: {message}",
        )

    def finish(self) -> Path | None:
        """Export the final state unless that exact state was already exported."""
        if self.export_dir is None or self.rank != 0:
            return None
        latest = self.export_dir / f"{self.name}.pth"
        if self._last_export_step != self.step or not latest.is_file():
            return self.export()
        return latest


# --------------------------------------------------------------------------- entry points


def _features_settings(work_dir: Path) -> tuple[str | None, str | None]:
    """(content encoder, F0 method) recorded by the feature extraction, when readable."""
    try:
        state = json.loads((work_dir / FEATURES_STATE_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    encoder = (state.get("content") or {}).get("encoder") if isinstance(state, dict) else None
    method = (state.get("f0") or {}).get("method") if isinstance(state, dict) else None
    if isinstance(encoder, str):
        kind, _, rest = encoder.partition(":")
        encoder = rest if kind == "name" else Path(rest.split(":")[0]).stem
    return (encoder if isinstance(encoder, str) else None), (method if isinstance(method, str) else None)


def fit_vits(
    work_dir: str | os.PathLike[str],
    models_dir: str | os.PathLike[str] | None = None,
    name: str = "model",
    config: VitsTrainConfig | None = None,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    pretrained_dir: str | os.PathLike[str] | None = None,
    content_encoder: str | None = None,
    f0_method: str | None = None,
    exclude_names: Sequence[str] = (),
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_metrics: MetricsFn | None = None,
) -> Path:
    """Train (or resume training) a voice model on a prepared work folder.

    Args:
        work_dir: folder with ``0_gt_wavs`` and the features (:mod:`train.features`).
        models_dir: exports go to ``models_dir/<name>/``; None = ``work_dir/weights``.
        name: the model's name.
        config: training settings (defaults: RVC's v2 40 kHz pitch model).
        run_dir: checkpoints and metrics; None = ``work_dir/vits``. An existing run there is
            resumed exactly; a checkpoint that cannot be restored raises ResumeError.
        pretrained_dir: where RVC's base files are looked up; None = the default folder.
        content_encoder: recorded in the metadata; None = what the feature extraction recorded.
        f0_method: recorded in the metadata; None = what the feature extraction recorded.
        exclude_names: segments left out of training (e.g. the report card's held-out clips).
        progress: receives (fraction, message), ETA included.
        should_stop: cancel request; a checkpoint and an export are written before Cancelled is raised.
        on_metrics: receives (step, metrics) per logged step.

    Returns:
        Path of the final ``<name>.pth``.

    Raises:
        FeatureError / VitsDataError: missing or unusable data.
        PretrainedError / AssetError: base files that do not fit or are damaged.
        ResumeError: the existing run cannot be continued.
        Cancelled: ``should_stop`` returned True.
    """
    from infer.catalog import validate_model_name

    config = config or VitsTrainConfig()
    name = validate_model_name(name)
    work = Path(work_dir)
    report(progress, 0.0, "reading the training data")
    examples = list_training_examples(work, config.version, use_f0=config.use_f0)
    if exclude_names:
        excluded = set(exclude_names)
        examples = [e for e in examples if e.name not in excluded]
        if not examples:
            raise VitsDataError("every training segment is held out; use a larger dataset")
    recorded_encoder, recorded_f0 = _features_settings(work)
    export_dir = Path(models_dir) / name if models_dir is not None else work / DEFAULT_EXPORT_DIRNAME
    trainer = VitsTrainer(
        config,
        examples,
        run_dir=Path(run_dir) if run_dir is not None else work / DEFAULT_RUN_DIRNAME,
        export_dir=export_dir,
        name=name,
        content_encoder=content_encoder or recorded_encoder or DEFAULT_CONTENT_ENCODER,
        f0_method=f0_method or recorded_f0,
        progress=progress,
        should_stop=should_stop,
        on_metrics=on_metrics,
    )
    if trainer.resume():
        report(progress, 0.0, f"resumed at epoch {trainer.epoch}, step {trainer.step}")
    else:
        g_path, d_path, warning = resolve_pretrained(config, pretrained_dir)
        trainer.load_pretrained(g_path, d_path)
        if warning:
            trainer.warn(warning)
    if trainer.rank == 0:
        _write_run_info(trainer)
    trainer.fit()
    latest = trainer.finish()
    return latest if latest is not None else export_dir / f"{name}.pth"


def _write_run_info(trainer: VitsTrainer) -> None:
    from infer.fsutil import atomic_write_text

    info = {
        "name": trainer.name,
        "config": trainer.vits_config.to_dict(),
        "export_dir": str(trainer.export_dir),
        "trained_from": trainer.trained_from,
        "pretrained": [
            {"role": p.role, "path": str(p.path), "loaded": len(p.loaded), "new": list(p.new)}
            for p in trainer.pretrained_loads
        ],
        "warnings": trainer.warnings,
        "segments": len(trainer.dataset),
        "dataset_duration_s": trainer.dataset.duration_s,
        "batches_per_epoch": trainer.batches_per_epoch(),
    }
    trainer.config.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(trainer.config.run_dir / RUN_INFO_FILENAME, json.dumps(info, indent=1))


def _parse_config(text: str | None, overrides: Sequence[str]) -> VitsTrainConfig:
    data: dict[str, Any] = {}
    if text:
        source = text if text.lstrip().startswith("{") else Path(text).read_text(encoding="utf-8")
        data = json.loads(source)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            data[key] = json.loads(value)
        except json.JSONDecodeError:
            data[key] = value
    return VitsTrainConfig.from_dict(data)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m train.vits WORK_DIR --name NAME [...]``; also runs under ``torchrun``."""
    parser = argparse.ArgumentParser(
        prog="python -m train.vits", description="Train an RVC voice model (VITS)."
    )
    parser.add_argument("work_dir", type=Path, help="prepared folder (0_gt_wavs, features)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--pretrained-dir", type=Path, default=None)
    parser.add_argument("--config", default=None, help="JSON file or inline JSON of VitsTrainConfig fields")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one field")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = _parse_config(args.config, args.set)
    started_group = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        use_nccl = torch.cuda.is_available() and config.device != "cpu"
        if use_nccl:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend="nccl" if use_nccl else "gloo")
        started_group = True
    try:
        started = time.perf_counter()
        path = fit_vits(
            args.work_dir,
            args.models_dir,
            args.name,
            config,
            run_dir=args.run_dir,
            pretrained_dir=args.pretrained_dir,
        )
        if _distributed()[0] == 0:
            sys.stdout.write(f"{path}\n")
            log.info("training finished in %.1f s", time.perf_counter() - started)
    except TimbreError as exc:
        log.error("%s", exc)
        return 1
    finally:
        if started_group:
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
