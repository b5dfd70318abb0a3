"""Teacher latent diffusion model training (issue 5, LCM-SVC's LDM) and its latent dataset.

Size: the teacher's configs, latent dataset and trainer, with helpers the distillation
modules import; to be split when a further trainer needs them.

The data are per-utterance tensors at the synthesizer's frame rate: the clean latent z0 (the VITS
posterior encoder's output for the utterance's linear spectrogram), the content features x, f0 in
Hz and the speaker embedding e. :func:`build_latent_dataset` computes z0 with an encoder callable;
:func:`synthesizer_encoder` makes that callable (and e) from a trained :class:`Synthesizer`.

:class:`DiffusionTrainer` is a :class:`~train.trainer.Trainer`: it trains eps_theta with the DDPM
loss ``||eps - eps_theta(z_t, t, x, f0, e)||^2`` (Ho et al. 2020, eq. 14) on latents multiplied by
the dataset's ``1 / std``, t uniform in 1..T, and all conditions replaced by the null embeddings
with probability ``cond_drop_prob`` (classifier-free guidance training, Ho & Salimans 2022).
An EMA of the weights is kept and exported as the head ``diffusion_teacher.pt``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from infer.diffusion.denoiser import Denoiser, DenoiserConfig
from infer.diffusion.head import DiffusionHead
from infer.diffusion.schedulers import NoiseSchedule, NoiseScheduleConfig
from infer.errors import ModelLoadError, TimbreError
from infer.fsutil import atomic_torch_save
from infer.nn.configs import ConfigError, check_config_keys
from infer.progress import ProgressFn, StopFn, check_stop, report
from infer.safeload import load_checkpoint
from infer.synthesizer import Synthesizer
from train.trainer import MetricsFn, ResumeError, Trainer, TrainerConfig

__all__ = [
    "LATENT_DATASET_FORMAT",
    "DiffusionTrainConfig",
    "DiffusionTrainer",
    "EncodeFn",
    "LatentBatch",
    "LatentDataError",
    "LatentDataset",
    "LatentItem",
    "UtteranceFeatures",
    "build_latent_dataset",
    "check_fraction",
    "check_optimizer_settings",
    "ema_update",
    "epoch_order",
    "masked_mse",
    "synthesizer_encoder",
]

log = logging.getLogger(__name__)

LATENT_DATASET_FORMAT = "timbre-latents-1"
MAX_FRAME_MISMATCH = 4
"""Frames by which spectrogram, content and f0 lengths may differ before an utterance is refused."""
EMA_WARMUP_STEPS = 10
"""EMA decay ramps as min(decay, (1 + step) / (EMA_WARMUP_STEPS + step))."""

EncodeFn = Callable[[Tensor, Tensor], Tensor]
"""``encode_fn(spec (B, F, T), spec_lengths (B,)) -> z0 (B, C, T)``."""


class LatentDataError(TimbreError):
    """The latent dataset is empty, inconsistent or unreadable."""


@dataclass(frozen=True)
class LatentItem:
    """One utterance's training tensors (CPU).

    Attributes:
        z0: (C, T) float32 clean latent (unscaled).
        content: (T, content_dim) content features (stored float16 to halve memory).
        f0_hz: (T,) float32 f0 in Hz, 0 when unvoiced.
        speaker: (gin, 1) float32 speaker embedding.
        name: the utterance's name (for messages).
    """

    z0: Tensor
    content: Tensor
    f0_hz: Tensor
    speaker: Tensor
    name: str = ""

    @property
    def frames(self) -> int:
        """T."""
        return int(self.z0.shape[1])


@dataclass(frozen=True)
class LatentBatch:
    """A padded batch of random windows.

    Attributes:
        z0: (B, C, T) float32 clean latents (unscaled), 0 on padding.
        content: (B, T, content_dim) float32.
        f0_hz: (B, T) float32.
        speaker: (B, gin, 1) float32.
        mask: (B, 1, T) float32, 1 on valid frames.
    """

    z0: Tensor
    content: Tensor
    f0_hz: Tensor
    speaker: Tensor
    mask: Tensor

    def to(self, device: torch.device | str) -> LatentBatch:
        """The batch on ``device``."""
        return LatentBatch(*(getattr(self, f.name).to(device) for f in fields(self)))


class LatentDataset:
    """In-memory utterances of (z0, content, f0, speaker) with windowed batching.

    Args:
        items: the utterances; every one must share C, content_dim and gin.
    """

    def __init__(self, items: Sequence[LatentItem]) -> None:
        if not items:
            raise LatentDataError("the latent dataset is empty; extract features for the training set first")
        first = items[0]
        self.latent_channels = int(first.z0.shape[0])
        self.content_dim = int(first.content.shape[1])
        self.gin_channels = int(first.speaker.shape[0])
        for item in items:
            frames = item.frames
            shapes = (
                tuple(item.z0.shape),
                tuple(item.content.shape),
                tuple(item.f0_hz.shape),
                tuple(item.speaker.shape),
            )
            expected = (
                (self.latent_channels, frames),
                (frames, self.content_dim),
                (frames,),
                (self.gin_channels, 1),
            )
            if shapes != expected or frames < 1:
                raise LatentDataError(
                    f"utterance {item.name!r}: shapes {shapes} do not match (C, T), (T, content_dim), (T,), "
                    f"(gin, 1) = {expected}"
                )
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> LatentItem:
        return self.items[index]

    @property
    def total_frames(self) -> int:
        """Frames over all utterances."""
        return sum(item.frames for item in self.items)

    def latent_std(self) -> float:
        """Standard deviation of z0 over every element of the set (float64 accumulation)."""
        count = 0
        total = 0.0
        total_sq = 0.0
        for item in self.items:
            z = item.z0.double()
            count += z.numel()
            total += float(z.sum())
            total_sq += float((z * z).sum())
        mean = total / count
        return math.sqrt(max(total_sq / count - mean * mean, 0.0))

    def latent_scale(self) -> float:
        """``1 / std(z0)``: the factor that brings latents to unit variance."""
        std = self.latent_std()
        if not std > 1e-8:
            raise LatentDataError("the latents are constant; the posterior encoder output looks broken")
        return 1.0 / std

    def batch(self, indices: Sequence[int], segment_frames: int, generator: torch.Generator) -> LatentBatch:
        """Random ``segment_frames`` windows of the given utterances (shorter ones padded)."""
        chosen = [self.items[i] for i in indices]
        frames = min(segment_frames, max(item.frames for item in chosen))
        count = len(chosen)
        z0 = torch.zeros(count, self.latent_channels, frames)
        content = torch.zeros(count, frames, self.content_dim)
        f0 = torch.zeros(count, frames)
        speaker = torch.zeros(count, self.gin_channels, 1)
        mask = torch.zeros(count, 1, frames)
        for row, item in enumerate(chosen):
            spare = item.frames - frames
            start = int(torch.randint(0, spare + 1, (1,), generator=generator)) if spare > 0 else 0
            length = min(frames, item.frames)
            z0[row, :, :length] = item.z0[:, start : start + length]
            content[row, :length] = item.content[start : start + length].float()
            f0[row, :length] = item.f0_hz[start : start + length]
            speaker[row] = item.speaker
            mask[row, :, :length] = 1.0
        return LatentBatch(z0=z0, content=content, f0_hz=f0, speaker=speaker, mask=mask)

    def save(self, path: str | Path) -> Path:
        """Write the dataset atomically as plain data."""
        path = Path(path)
        atomic_torch_save(
            {
                "format": LATENT_DATASET_FORMAT,
                "items": [
                    {"z0": i.z0, "content": i.content, "f0_hz": i.f0_hz, "speaker": i.speaker, "name": i.name}
                    for i in self.items
                ],
            },
            path,
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatentDataset:
        """Read what :meth:`save` wrote."""
        path = Path(path)
        data = load_checkpoint(path)
        if not isinstance(data, Mapping) or data.get("format") != LATENT_DATASET_FORMAT:
            raise ModelLoadError(f"{path.name}: not a Timbre latent dataset; extract it again")
        try:
            items = [LatentItem(**entry) for entry in data["items"]]
        except (KeyError, TypeError) as exc:
            raise ModelLoadError(f"{path.name}: damaged latent dataset ({exc}); extract it again") from exc
        return cls(items)


@dataclass(frozen=True)
class UtteranceFeatures:
    """Features of one training utterance, at the synthesizer's frame rate.

    Attributes:
        name: the utterance's name.
        spec: (spec_channels, T) float linear magnitude spectrogram (the posterior encoder's input).
        content: (T, content_dim) content features (already interpolated to the frame rate).
        f0_hz: (T,) f0 in Hz, 0 when unvoiced.
    """

    name: str
    spec: Tensor
    content: Tensor
    f0_hz: Tensor


@torch.no_grad()
def build_latent_dataset(
    utterances: Iterable[UtteranceFeatures],
    encode_fn: EncodeFn,
    speaker: Tensor,
    *,
    total: int | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> LatentDataset:
    """Encode every utterance's spectrogram to z0 and gather the dataset.

    Spectrogram, content and f0 are cut to their common length; an utterance whose lengths differ
    by more than ``MAX_FRAME_MISMATCH`` frames is an error (features of different clips).

    Args:
        utterances: the features.
        encode_fn: ``(spec (1, F, T), lengths (1,)) -> z0 (1, C, T)``, e.g. from :func:`synthesizer_encoder`.
        speaker: (gin, 1) or (1, gin, 1) speaker embedding shared by the utterances.
        total: number of utterances, for progress.
        progress: ``progress(fraction, message)``.
        should_stop: polled per utterance.
    """
    speaker = speaker.detach().float().cpu().reshape(-1, 1)
    items: list[LatentItem] = []
    for index, utt in enumerate(utterances):
        check_stop(should_stop)
        lengths = (int(utt.spec.shape[-1]), int(utt.content.shape[0]), int(utt.f0_hz.shape[0]))
        if max(lengths) - min(lengths) > MAX_FRAME_MISMATCH:
            raise LatentDataError(
                f"utterance {utt.name!r}: spectrogram, content and f0 have {lengths} frames; they must come "
                "from the same clip at the same hop length"
            )
        frames = min(lengths)
        spec = utt.spec[..., :frames].float().reshape(1, -1, frames)
        z0 = encode_fn(spec, torch.tensor([frames]))
        if z0.dim() != 3 or z0.shape[0] != 1 or z0.shape[-1] != frames:
            raise LatentDataError(
                f"encode_fn returned {tuple(z0.shape)} for {frames} frames; expected (1, C, T)"
            )
        items.append(
            LatentItem(
                z0=z0[0].detach().float().cpu(),
                content=utt.content[:frames].detach().to(torch.float16).cpu(),
                f0_hz=utt.f0_hz[:frames].detach().float().cpu(),
                speaker=speaker,
                name=utt.name,
            )
        )
        if total:
            report(progress, (index + 1) / total, f"encoded {index + 1}/{total} utterances")
    return LatentDataset(items)


def synthesizer_encoder(
    synthesizer: Synthesizer, sid: int = 0, *, use_posterior_mean: bool = True
) -> tuple[EncodeFn, Tensor]:
    """An ``encode_fn`` and the speaker embedding (gin, 1) from a trained synthesizer.

    Args:
        synthesizer: built with its posterior encoder (``enc_q``), e.g. from a training checkpoint.
        sid: the speaker id.
        use_posterior_mean: take the posterior mean m_q (deterministic) instead of a sample
            ``m_q + exp(logs_q) * noise``.
    """
    param = next(synthesizer.parameters())
    device = param.device
    with torch.no_grad():
        g = synthesizer.speaker_embedding(torch.tensor([sid], device=device))

    @torch.no_grad()
    def encode(spec: Tensor, spec_lengths: Tensor) -> Tensor:
        z, m_q, _logs_q, y_mask = synthesizer.encode_posterior(spec.to(device), spec_lengths.to(device), g)
        return (m_q * y_mask if use_posterior_mean else z).float().cpu()

    return encode, g[0].detach().float().cpu()


# --------------------------------------------------------------------------- training


def _check_positive(owner: str, name: str, value: Any, *, integer: bool) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        raise ConfigError(
            f"{owner}.{name} must be a positive {'int' if integer else 'number'}, got {value!r}"
        )


def check_fraction(owner: str, name: str, value: Any, *, closed_top: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` lies in [0, 1) (or [0, 1] with ``closed_top``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{owner}.{name} must be a number, got {value!r}")
    if not (0.0 <= value <= 1.0 if closed_top else 0.0 <= value < 1.0):
        raise ConfigError(f"{owner}.{name} must be in [0, {'1]' if closed_top else '1)'}, got {value}")


def check_optimizer_settings(owner: str, config: Any) -> None:
    """Validate the optimisation fields shared by the diffusion and distillation configs."""
    for name in ("batch_size", "segment_frames"):
        _check_positive(owner, name, getattr(config, name), integer=True)
    _check_positive(owner, "learning_rate", config.learning_rate, integer=False)
    betas = tuple(config.adam_betas)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"{owner}.adam_betas must be two numbers in [0, 1), got {config.adam_betas!r}")
    object.__setattr__(config, "adam_betas", (float(betas[0]), float(betas[1])))
    if config.weight_decay < 0 or config.grad_clip < 0:
        raise ConfigError(f"{owner}: weight_decay and grad_clip must be >= 0 (grad_clip 0 disables clipping)")
    check_fraction(owner, "lr_decay", config.lr_decay, closed_top=True)
    if config.lr_decay == 0:
        raise ConfigError(f"{owner}.lr_decay must be in (0, 1]")


@dataclass(frozen=True)
class DiffusionTrainConfig:
    """Teacher training settings.

    Attributes:
        batch_size: utterance windows per step.
        segment_frames: window length in latent frames.
        learning_rate: AdamW learning rate.
        adam_betas: AdamW betas.
        weight_decay: AdamW weight decay.
        grad_clip: max global gradient norm (0 = no clipping).
        lr_decay: learning-rate factor per epoch (ExponentialLR gamma).
        cond_drop_prob: probability of training a sample unconditionally (null embeddings).
        ema_decay: decay of the exported weight average (0 = export the raw weights).
    """

    batch_size: int = 16
    segment_frames: int = 256
    learning_rate: float = 2e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lr_decay: float = 0.999
    cond_drop_prob: float = 0.1
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_optimizer_settings(name, self)
        check_fraction(name, "cond_drop_prob", self.cond_drop_prob)
        check_fraction(name, "ema_decay", self.ema_decay)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiffusionTrainConfig:
        """Build from a plain dict; unknown keys are a :class:`ConfigError`."""
        check_config_keys(cls, data, require_all=False)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field."""
        out = asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out


def masked_mse(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``(prediction - target)^2`` over valid elements: (B, C, T), (B, C, T), (B, 1, T) -> scalar."""
    channels = prediction.shape[1]
    return ((prediction - target) ** 2 * mask).sum() / (mask.sum() * channels).clamp(min=1.0)


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """``target <- decay * target + (1 - decay) * source``, parameter by parameter (buffers copied)."""
    for t_param, s_param in zip(target.parameters(), source.parameters(), strict=True):
        t_param.lerp_(s_param.detach(), 1.0 - decay)
    for t_buf, s_buf in zip(target.buffers(), source.buffers(), strict=True):
        t_buf.copy_(s_buf)


def epoch_order(size: int, batch_size: int, seed: int, epoch: int) -> tuple[list[list[int]], torch.Generator]:
    """The batches (lists of indices) of ``epoch`` and the generator that then draws the windows."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(size, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, size, batch_size)], generator


class DiffusionTrainer(Trainer):
    """Trains the teacher LDM; see the module docstring.

    Args:
        config: loop settings (run folder, epochs, checkpoints).
        dataset: the latent dataset.
        denoiser_config: network sizes; its latent/content/gin widths must match the dataset.
        schedule_config: the noise schedule (T = 1000 by default).
        train_config: optimisation settings.
        latent_scale: multiply z0 by this; measured on ``dataset`` (1 / std) when None.
        device: where to train.
        head_path: where every checkpoint also exports the head (e.g. ``<model>/diffusion_teacher.pt``).
        head_metadata: plain data added to the exported head's metadata.
        progress, should_stop, on_metrics: see :class:`~train.trainer.Trainer`.
    """

    def __init__(
        self,
        config: TrainerConfig,
        dataset: LatentDataset,
        *,
        denoiser_config: DenoiserConfig,
        schedule_config: NoiseScheduleConfig | None = None,
        train_config: DiffusionTrainConfig | None = None,
        latent_scale: float | None = None,
        device: torch.device | str = "cpu",
        head_path: Path | None = None,
        head_metadata: Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
        on_metrics: MetricsFn | None = None,
    ) -> None:
        super().__init__(config, progress=progress, should_stop=should_stop, on_metrics=on_metrics)
        if denoiser_config.use_w_embedding:
            raise ConfigError("the teacher has no w-embedding; set use_w_embedding=False")
        widths = (dataset.latent_channels, dataset.content_dim, dataset.gin_channels)
        wanted = (denoiser_config.latent_channels, denoiser_config.content_dim, denoiser_config.gin_channels)
        if widths != wanted:
            raise ConfigError(
                f"the dataset has (latent, content, gin) widths {widths} but the denoiser config {wanted}"
            )
        self.dataset = dataset
        self.train_config = train_config or DiffusionTrainConfig()
        self.schedule = NoiseSchedule(schedule_config or NoiseScheduleConfig())
        self.latent_scale = float(latent_scale) if latent_scale is not None else dataset.latent_scale()
        self.device = torch.device(device)
        self.head_path = head_path
        self.head_metadata = dict(head_metadata or {})
        self.model = Denoiser(denoiser_config).to(self.device).train()
        self.ema = (
            copy.deepcopy(self.model).requires_grad_(False) if self.train_config.ema_decay > 0 else None
        )
        tc = self.train_config
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=tc.learning_rate, betas=tc.adam_betas, weight_decay=tc.weight_decay
        )
        self.lr_scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=tc.lr_decay)

    # --- Trainer interface ------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """The denoiser and, when enabled, its EMA."""
        out: dict[str, nn.Module] = {"denoiser": self.model}
        if self.ema is not None:
            out["ema"] = self.ema
        return out

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The AdamW optimizer."""
        return {"adamw": self.optimizer}

    def schedulers(self) -> dict[str, Any]:
        """The per-epoch learning-rate decay."""
        return {"lr": self.lr_scheduler}

    def extra_state(self) -> dict[str, Any]:
        """The latent scale (a resumed run keeps the one it started with)."""
        return {"latent_scale": self.latent_scale}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the latent scale."""
        if set(state) != {"latent_scale"}:
            raise ResumeError(f"checkpoint extra state {sorted(state)} is not a diffusion trainer's")
        saved = float(state["latent_scale"])
        if not math.isclose(saved, self.latent_scale, rel_tol=1e-3):
            log.warning(
                "latent scale %.5g from the checkpoint replaces the measured %.5g", saved, self.latent_scale
            )
        self.latent_scale = saved

    def batches_per_epoch(self) -> int:
        """Utterances / batch size, rounded up."""
        return math.ceil(len(self.dataset) / self.train_config.batch_size)

    def batches(self, epoch: int) -> Iterator[LatentBatch]:
        """Shuffled windows, deterministic for (seed, epoch)."""
        groups, generator = epoch_order(
            len(self.dataset), self.train_config.batch_size, self.config.seed, epoch
        )
        for group in groups:
            yield self.dataset.batch(group, self.train_config.segment_frames, generator)

    def diffusion_loss(
        self,
        batch: LatentBatch,
        *,
        generator: torch.Generator | None = None,
        cond_drop_prob: float | None = None,
    ) -> Tensor:
        """The DDPM loss of ``batch`` with t, noise and condition dropout drawn from ``generator``.

        Draws happen on the CPU (the global RNG when ``generator`` is None) so runs are reproducible
        across devices. ``cond_drop_prob`` defaults to the training config's.
        """
        b = batch.to(self.device)
        z0 = b.z0 * self.latent_scale
        count = z0.shape[0]
        T = self.schedule.num_train_timesteps
        t = torch.randint(1, T + 1, (count,), generator=generator)
        noise = torch.randn(z0.shape, generator=generator).to(self.device)
        p_drop = self.train_config.cond_drop_prob if cond_drop_prob is None else cond_drop_prob
        drop = torch.rand(count, generator=generator) < p_drop
        z_t = self.schedule.add_noise(z0, noise, t) * b.mask
        eps = self.model(
            z_t, t.to(self.device), b.content, b.f0_hz, b.speaker, b.mask, drop_cond=drop.to(self.device)
        )
        return masked_mse(eps, noise, b.mask)

    def train_step(self, batch: LatentBatch) -> dict[str, float]:
        """One AdamW step on the DDPM loss, then the EMA update."""
        self.model.train()
        loss = self.diffusion_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.train_config.grad_clip
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        self.optimizer.step()
        if self.ema is not None:
            decay = min(self.train_config.ema_decay, (1 + self.step) / (EMA_WARMUP_STEPS + self.step))
            ema_update(self.ema, self.model, decay)
        return {
            "loss": float(loss.detach()),
            "grad_norm": float(grad_norm),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
        }

    @torch.no_grad()
    def evaluate(self, batch: LatentBatch, *, seed: int = 0) -> float:
        """The loss of ``batch`` with fixed draws (no condition dropout); does not touch any RNG state."""
        was_training = self.model.training
        self.model.eval()
        try:
            return float(
                self.diffusion_loss(batch, generator=torch.Generator().manual_seed(seed), cond_drop_prob=0.0)
            )
        finally:
            self.model.train(was_training)

    def on_epoch_end(self, epoch: int) -> None:
        """Decay the learning rate."""
        self.lr_scheduler.step()

    def on_checkpoint(self, path: Path) -> None:
        """Export the head beside the model when ``head_path`` is set."""
        if self.head_path is not None:
            self.export_head().save(self.head_path)

    # --- export -----------------------------------------------------------------------------------
    def export_head(self) -> DiffusionHead:
        """The teacher head (EMA weights when enabled)."""
        source = self.ema if self.ema is not None else self.model
        return DiffusionHead(
            kind="teacher",
            denoiser_config=self.model.config,
            schedule_config=self.schedule.config,
            state_dict={k: v.detach().cpu().clone() for k, v in source.state_dict().items()},
            latent_scale=self.latent_scale,
            metadata={
                **self.head_metadata,
                "trainer": "diffusion",
                "steps": self.step,
                "epochs": self.epoch,
                "uses_ema": self.ema is not None,
                "train_config": self.train_config.to_dict(),
            },
        )
