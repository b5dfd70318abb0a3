"""The VITS trainer: RVC's ``train_and_evaluate`` step on the shared base trainer, checkpoints, exports."""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from infer.fsutil import atomic_path
from infer.models import ModelMetadata, save_voice_model
from infer.nn.configs import ConfigError
from infer.nn.masks import slice_segments
from infer.progress import ProgressFn, StopFn, report
from infer.synthesizer import TrainingDraws
from train.features import TrainingExample
from train.mel import mel_spectrogram, spec_to_mel
from train.trainer import MetricsFn, ResumeError, Trainer, TrainerConfig
from train.vits.config import VitsTrainConfig, build_networks, export_synth_config
from train.vits.data import (
    BUCKET_BOUNDARIES_FRAMES,
    RVC_BUCKET_BOUNDARIES_FRAMES,
    BatchCollate,
    VitsBatch,
    VitsDataError,
    VitsDataset,
    bucket_batches,
)
from train.vits.losses import (
    STEP_SCALARS,
    StepForward,
    StepTrace,
    as_floats,
    discriminator_losses,
    feature_matching_loss,
    generator_adversarial_losses,
    kl_loss,
)
from train.vits.pretrained import PretrainedLoad, load_pretrained_module

log = logging.getLogger(__name__)

DEFAULT_RUN_DIRNAME = "vits"
DEFAULT_EXPORT_DIRNAME = "weights"
DEFAULT_CONTENT_ENCODER = "hubert_base"
AMP_TRAIN_DEVICE_TYPES = ("cuda", "xpu")
"""Where ``precision`` fp16/bf16 trains under autocast (the CPU and MPS train in fp32)."""


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
    """The one device resolver's choice; under torchrun each process takes its local GPU."""
    from infer.devices import DeviceError, resolve_device

    try:
        device = resolve_device(config.device)
    except DeviceError as exc:
        raise ConfigError(str(exc)) from exc
    if device.type == "cuda" and world_size > 1:
        return torch.device("cuda", local_rank)
    return device


def _grad_norm(parameters: Sequence[nn.Parameter], max_norm: float | None) -> Tensor:
    """Global L2 norm of the gradients; they are clipped to ``max_norm`` unless it is None."""
    with_grad = [p for p in parameters if p.grad is not None]
    if not with_grad:
        return torch.zeros(())
    if max_norm is None:
        return torch.nn.utils.get_total_norm([p.grad for p in with_grad])
    return torch.nn.utils.clip_grad_norm_(with_grad, max_norm)


_NEVER_STEPS = 1 << 62
_RESUME_FIELDS = ("sample_rate", "version", "use_f0", "size", "batch_size", "seed", "bucketing")


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
            if self.device.type in AMP_TRAIN_DEVICE_TYPES:
                self.amp_dtype = torch.float16 if config.precision == "fp16" else torch.bfloat16
            else:
                log.warning(
                    "precision %s needs CUDA or XPU; training on %s in fp32", config.precision, self.device
                )
        scaler_device = self.device.type if self.device.type in AMP_TRAIN_DEVICE_TYPES else "cuda"
        self.scaler = torch.amp.GradScaler(scaler_device, enabled=self.amp_dtype == torch.float16)
        self.train_g: nn.Module = self.net_g
        self.train_d: nn.Module = self.net_d
        if world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_g = nn.parallel.DistributedDataParallel(self.net_g, device_ids=ids)
            self.train_d = nn.parallel.DistributedDataParallel(self.net_d, device_ids=ids)
        self._last_export_step: int | None = None
        self._skipped_steps = 0
        self._check_buckets()

    def _check_buckets(self) -> None:
        used = {i for batch in self._epoch_batches(1) for i in batch}
        left_out = len(self.dataset) - len(used)
        if not used:
            raise VitsDataError(
                "RVC's sampler leaves out every segment (it uses segments of about 0.75 to 6.75 s); "
                "add longer audio, or train with bucketing 'exact'"
            )
        if left_out:
            log.info(
                "RVC's sampler leaves out %d of %d segments (outside its length buckets)",
                left_out,
                len(self.dataset),
            )

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
        # Checkpoints from before the bucketing option were trained with what is now 'exact'.
        saved, current = {"bucketing": "exact"} | state.get("settings", {}), expected["settings"]
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
        is_rvc = self.vits_config.bucketing == "rvc"
        return bucket_batches(
            self.dataset.size_lengths if is_rvc else self.dataset.lengths,
            self.vits_config.batch_size,
            seed=None if is_rvc else self.vits_config.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world_size,
            boundaries=RVC_BUCKET_BOUNDARIES_FRAMES if is_rvc else BUCKET_BOUNDARIES_FRAMES,
            use_outside=not is_rvc,
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
        collate_fn = BatchCollate(self.spectrogram.hop_length, self.vits_config.segment_frames)
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
            trace.losses |= {"losses_disc_r": as_floats(real_terms), "losses_disc_g": as_floats(fake_terms)}
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
                            trace.losses["losses_gen"] = as_floats(gen_terms)
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
