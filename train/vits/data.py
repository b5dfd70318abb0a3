"""Training data of the VITS trainer: items, padded batches, the lazy dataset and RVC's bucket sampler."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from infer.errors import TimbreError
from train.features import TrainingExample
from train.mel import SpectrogramConfig, linear_spectrogram

log = logging.getLogger(__name__)

RVC_BUCKET_BOUNDARIES_FRAMES = (100, 200, 300, 400, 500, 600, 700, 800, 900)
"""RVC's length buckets (frames at 100 fps): an item of length n goes to the bucket (b_i, b_i+1]."""
BUCKET_BOUNDARIES_FRAMES = (0, *RVC_BUCKET_BOUNDARIES_FRAMES)
"""The same with a first bucket (0, 100] for the short items ``bucketing='exact'`` keeps."""
MAX_FRAMES = 900
"""RVC cuts every utterance to 900 frames (9 s) after upsampling the features."""
FEATURE_UPSAMPLE = 2
"""Content features are stored at 50 fps and repeated to the 100 fps frame rate."""
SPEAKER_ID = 0
RVC_LENGTH_BYTES_PER_FRAME = 3
"""RVC's sampler estimates an item's length as its wav file size // (3 * hop)."""


class VitsDataError(TimbreError):
    """The training data cannot be used (wrong rate or width, unreadable or too short files)."""


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

    Items shorter than ``min_frames`` (the training window) are left out. ``lengths`` are the
    frames each item trains on, ``size_lengths`` RVC's estimate from the file size.

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
        size_lengths: list[int] = []
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
            size_lengths.append(example.gt_wav_path.stat().st_size // (RVC_LENGTH_BYTES_PER_FRAME * hop))
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
        self.size_lengths: list[int] = size_lengths
        """RVC's length estimate, the wav file size // (3 * hop) (4/3 of the frames of a float wav)."""
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


class BatchCollate:
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
    seed: int | None,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    boundaries: Sequence[int] = BUCKET_BOUNDARIES_FRAMES,
    use_outside: bool = True,
) -> list[list[int]]:
    """This rank's batches of one epoch: items grouped by length bucket, order fixed by (seed, epoch).

    RVC's ``DistributedBucketSampler``: an item of length n goes to the bucket (b_i, b_i+1]; each
    bucket is shuffled and padded (by repeating its items) to a multiple of
    ``world_size * batch_size``, rank ``r`` takes every ``world_size``-th item, the bucket is cut
    into batches, and the batches of all buckets are shuffled. Every rank gets the same number
    of batches.

    Args:
        lengths: one length per dataset item.
        batch_size: items per batch.
        seed: None seeds the order with the epoch alone (RVC); else with (seed, epoch).
        epoch: the epoch (from 1).
        rank, world_size: this process and the number of processes.
        boundaries: bucket edges.
        use_outside: put items outside the buckets into the first or last one; False leaves
            them out, as RVC does.

    Returns:
        Lists of dataset indices.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    buckets: list[list[int]] = [[] for _ in range(len(boundaries) - 1)]
    for index, length in enumerate(lengths):
        slot = int(np.searchsorted(boundaries, length, side="left")) - 1
        if 0 <= slot < len(buckets) or use_outside:
            buckets[min(max(slot, 0), len(buckets) - 1)].append(index)
    order_seed = epoch if seed is None else (seed * 1_000_003 + epoch) % (2**63)
    generator = torch.Generator().manual_seed(order_seed)
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
