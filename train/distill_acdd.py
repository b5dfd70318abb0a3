"""Adversarial conditional diffusion distillation (ACDD, FastVoiceGrad, arXiv 2409.02245).

A one-step student ``G(x_s, sigma_s)`` of an EDM teacher, started where conversion starts it:
the voice's own VITS latent (prior + flow, at RVC's noise scale 0.66666, computed from the
window's content and pitch) diffused to a level ``sigma_s = EDMConfig.sigma_at(strength)``,
strength ~ U[strength_min, strength_max]. Its output ``z_hat = G(z_vits + sigma_s eps, sigma_s)``
(EDM preconditioning, weights from the teacher) is trained with

(a) waveform losses: ``z_hat`` through the voice's frozen VITS decoder, against the decoder's
    waveform of the window's posterior latent z0 (the best waveform the decoder can make of the
    clip; the latent dataset holds no audio), scored by a multi-period discriminator (LSGAN, as
    HiFi-GAN/VITS) with feature matching; the discriminator starts from the voice's own VITS
    discriminator when the experiment has one;
(b) score distillation (ADD, Sauer et al. 2023, eq. 4-5): ``z_hat`` noised again to
    ``sigma ~ log-normal`` and denoised by the frozen, guided teacher; the loss pulls ``z_hat``
    towards that (stop-gradient) estimate.

``L_G = adv_weight L_adv + fm_weight L_fm + distill_weight L_dist``; the discriminator takes one
step on its LSGAN loss per student step. The student is exported as ``diffusion_acdd.pt``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from infer.diffusion.edm import Conditions, edm_denoise, guided_denoise
from infer.diffusion.head import DiffusionHead, DiffusionHeadError
from infer.nn.configs import ConfigError, check_config_keys
from infer.options import ACDD_HEAD, EDM_PARAMETERISATION, TEACHER_HEAD
from infer.pitch.f0 import f0_to_coarse
from infer.progress import ProgressFn, StopFn
from infer.synthesizer import DEFAULT_NOISE_SCALE, Synthesizer
from train.diffusion import (
    LatentBatch,
    LatentDataset,
    check_fraction,
    check_optimizer_settings,
    masked_mse,
)
from train.diffusion_edm import sample_sigmas
from train.distill import TeacherStudentMixin, teacher_fingerprint
from train.trainer import MetricsFn, Trainer, TrainerConfig
from train.vits.losses import discriminator_loss, feature_matching_loss, generator_adversarial_loss

__all__ = ["AcddConfig", "AcddTrainer", "score_distillation_target", "vits_latent"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AcddConfig:
    """ACDD settings.

    Attributes:
        batch_size: utterance windows per step.
        segment_frames: window length in latent frames (short: every window is decoded to audio).
        learning_rate: AdamW learning rate of the student.
        d_learning_rate: AdamW learning rate of the discriminator.
        adam_betas: AdamW betas of both (HiFi-GAN's 0.8, 0.99).
        weight_decay: AdamW weight decay.
        grad_clip: max global gradient norm of each network (0 = no clipping).
        lr_decay: learning-rate factor per epoch.
        strength_min: lowest start level (fraction of the rho-schedule) seen in training.
        strength_max: highest start level.
        adv_weight: weight of the LSGAN generator loss.
        fm_weight: weight of the feature-matching loss (which already carries VITS' factor 2).
        distill_weight: weight of the score-distillation loss.
        guidance_weight: w of the teacher's classifier-free guidance in score distillation.
        prior_noise_scale: noise scale of the VITS prior sample that starts the student.
    """

    batch_size: int = 8
    segment_frames: int = 32
    learning_rate: float = 1e-4
    d_learning_rate: float = 1e-4
    adam_betas: tuple[float, float] = (0.8, 0.99)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lr_decay: float = 1.0
    strength_min: float = 0.3
    strength_max: float = 0.6
    adv_weight: float = 1.0
    fm_weight: float = 1.0
    distill_weight: float = 10.0
    guidance_weight: float = 0.0
    prior_noise_scale: float = DEFAULT_NOISE_SCALE

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_optimizer_settings(name, self)
        for key in (
            "d_learning_rate",
            "adv_weight",
            "fm_weight",
            "distill_weight",
            "guidance_weight",
            "prior_noise_scale",
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name}.{key} must be a number >= 0, got {value!r}")
        check_fraction(name, "strength_min", self.strength_min, closed_top=True)
        check_fraction(name, "strength_max", self.strength_max, closed_top=True)
        if not 0.0 < self.strength_min <= self.strength_max:
            raise ConfigError(f"{name}: need 0 < strength_min <= strength_max <= 1")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AcddConfig:
        """Build from a plain dict; unknown keys are a :class:`ConfigError`."""
        check_config_keys(cls, data, require_all=False)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field."""
        out = asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out


@torch.no_grad()
def vits_latent(synth: Synthesizer, cond: Conditions, noise_scale: float) -> Tensor:
    """The VITS prior + flow latent of a batch, as conversion makes it: (B, C, T), unscaled, masked."""
    lengths = cond.mask.sum(dim=(1, 2)).long()
    pitch = None
    if synth.config.use_f0:
        coarse = np.stack([f0_to_coarse(row) for row in cond.f0_hz.cpu().numpy()])
        pitch = torch.from_numpy(coarse.astype(np.int64)).to(cond.mask.device)
    m_p, logs_p, x_mask = synth.prior(cond.content, lengths, pitch, cond.speaker)
    z_p = synth.sample_prior(m_p, logs_p, x_mask, noise_scale=noise_scale)
    return synth.flow_reverse(z_p, x_mask, cond.speaker) * cond.mask


@torch.no_grad()
def score_distillation_target(
    teacher: nn.Module, z_hat: Tensor, cond: Conditions, head: DiffusionHead, guidance_weight: float
) -> Tensor:
    """The frozen teacher's guided estimate of ``z_hat`` re-noised to log-normal levels (ADD eq. 4)."""
    config = head.edm_config()
    sigma = sample_sigmas(z_hat.shape[0], config)
    noise = torch.randn(z_hat.shape).to(z_hat.device)
    noisy = (z_hat + sigma.to(z_hat.device, z_hat.dtype).view(-1, 1, 1) * noise) * cond.mask
    return guided_denoise(teacher, noisy, sigma, cond, config, guidance_weight)  # type: ignore[arg-type]


class AcddTrainer(TeacherStudentMixin, Trainer):
    """ACDD; see the module docstring.

    Args:
        config: loop settings (run folder, epochs, checkpoints).
        dataset: the latent dataset of the voice.
        teacher: the EDM teacher head.
        synthesizer: the voice's VITS synthesizer (frozen: prior and flow start the student, the
            decoder renders its output).
        discriminator: a multi-period discriminator (trained here), e.g. the voice's own.
        acdd_config: settings.
        device: where to train.
        head_path: where every checkpoint also exports the head (``<model>/diffusion_acdd.pt``).
        head_metadata: plain data added to the exported head's metadata.
        progress, should_stop, on_metrics: see :class:`~train.trainer.Trainer`.
    """

    run_label = "ACDD"
    run_dirname = "acdd"

    @property
    def window_config(self) -> AcddConfig:
        """The ACDD settings (batch size, window)."""
        return self.acdd_config

    def __init__(
        self,
        config: TrainerConfig,
        dataset: LatentDataset,
        teacher: DiffusionHead,
        *,
        synthesizer: Synthesizer,
        discriminator: nn.Module,
        acdd_config: AcddConfig | None = None,
        device: torch.device | str = "cpu",
        head_path: Path | None = None,
        head_metadata: Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
        on_metrics: MetricsFn | None = None,
    ) -> None:
        super().__init__(config, progress=progress, should_stop=should_stop, on_metrics=on_metrics)
        if teacher.kind != TEACHER_HEAD or teacher.parameterisation != EDM_PARAMETERISATION:
            raise DiffusionHeadError(
                "ACDD needs an EDM teacher (diffusion_teacher.pt trained with --diffusion-parameterisation "
                f"edm), got a {teacher.parameterisation} {teacher.kind} head"
            )
        teacher.check_compatible(
            latent_channels=dataset.latent_channels,
            content_dim=dataset.content_dim,
            gin_channels=dataset.gin_channels,
        )
        self.dataset = dataset
        self.teacher_head = teacher
        self.acdd_config = acdd_config or AcddConfig()
        ac = self.acdd_config
        self.edm = teacher.edm_config()
        self.device = torch.device(device)
        self.head_path = head_path
        self.head_metadata = dict(head_metadata or {})
        self.fingerprint = teacher_fingerprint(teacher)
        self.latent_scale = teacher.latent_scale
        self.synth = copy.deepcopy(synthesizer).to(self.device).eval().requires_grad_(False)
        self.hop_length = self.synth.config.hop_length
        self.teacher = teacher.build_denoiser(self.device)
        self.student = teacher.build_denoiser(self.device).requires_grad_(True).train()
        self.discriminator = discriminator.to(self.device).train()
        self.optimizer_g = torch.optim.AdamW(
            self.student.parameters(), lr=ac.learning_rate, betas=ac.adam_betas, weight_decay=ac.weight_decay
        )
        self.optimizer_d = torch.optim.AdamW(
            self.discriminator.parameters(),
            lr=ac.d_learning_rate,
            betas=ac.adam_betas,
            weight_decay=ac.weight_decay,
        )
        self.scheduler_g = torch.optim.lr_scheduler.ExponentialLR(self.optimizer_g, gamma=ac.lr_decay)
        self.scheduler_d = torch.optim.lr_scheduler.ExponentialLR(self.optimizer_d, gamma=ac.lr_decay)

    # --- Trainer interface ------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """The student and the discriminator."""
        return {"student": self.student, "discriminator": self.discriminator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One AdamW each."""
        return {"student": self.optimizer_g, "discriminator": self.optimizer_d}

    def schedulers(self) -> dict[str, Any]:
        """Per-epoch learning-rate decays."""
        return {"student": self.scheduler_g, "discriminator": self.scheduler_d}

    def student_output(self, x_start: Tensor, sigma: Tensor, cond: Conditions) -> Tensor:
        """The student's one evaluation ``D_student(x_start, sigma)``, (B, C, T) scaled."""
        return edm_denoise(self.student, x_start, sigma, cond, self.edm)

    def _waveform(self, z_scaled: Tensor, cond: Conditions, sine_noise: Tensor) -> Tensor:
        """Decode a scaled latent to (B, 1, T * hop), zero past each item's valid frames."""
        wave = self.synth.decode(
            z_scaled / self.latent_scale * cond.mask, cond.f0_hz, cond.speaker, sine_noise=sine_noise
        )
        return wave * cond.mask.repeat_interleave(self.hop_length, dim=-1)

    def train_step(self, batch: LatentBatch) -> dict[str, float]:
        """One discriminator step and one student step (see the module docstring)."""
        ac = self.acdd_config
        b = batch.to(self.device)
        cond = Conditions(b.content, b.f0_hz, b.speaker, b.mask)
        z0 = b.z0 * self.latent_scale
        count, _, frames = z0.shape
        # Draws on the CPU's global RNG (checkpointed by the base) for reproducible resumes.
        strength = ac.strength_min + (ac.strength_max - ac.strength_min) * torch.rand(count)
        sigma = torch.tensor([self.edm.sigma_at(float(s)) for s in strength], dtype=torch.float64)
        noise = torch.randn(z0.shape).to(self.device)
        sine_noise = torch.randn(count, frames * self.hop_length).to(self.device)
        z_vits = vits_latent(self.synth, cond, ac.prior_noise_scale) * self.latent_scale
        x_start = (z_vits + sigma.to(self.device, z0.dtype).view(-1, 1, 1) * noise) * b.mask
        with torch.no_grad():
            real = self._waveform(z0, cond, sine_noise)
        self.student.train()
        z_hat = self.student_output(x_start, sigma, cond)
        fake = self._waveform(z_hat, cond, sine_noise)

        real_logits, fake_logits, _, _ = self.discriminator(real, fake.detach())
        loss_d = discriminator_loss(real_logits, fake_logits)
        self.optimizer_d.zero_grad(set_to_none=True)
        loss_d.backward()
        grad_d = self._clip(self.discriminator)
        self.optimizer_d.step()

        _, fake_logits, real_maps, fake_maps = self.discriminator(real, fake)
        loss_adv = generator_adversarial_loss(fake_logits)
        loss_fm = feature_matching_loss(real_maps, fake_maps)
        target = score_distillation_target(
            self.teacher, z_hat.detach(), cond, self.teacher_head, ac.guidance_weight
        )
        loss_dist = masked_mse(z_hat, target, b.mask)
        loss_g = ac.adv_weight * loss_adv + ac.fm_weight * loss_fm + ac.distill_weight * loss_dist
        self.optimizer_g.zero_grad(set_to_none=True)
        loss_g.backward()
        grad_g = self._clip(self.student)
        self.optimizer_g.step()
        with torch.no_grad():
            latent_error = masked_mse(z_hat, z0, b.mask)
        return {
            "loss_g": float(loss_g.detach()),
            "loss_d": float(loss_d.detach()),
            "loss_adv": float(loss_adv.detach()),
            "loss_fm": float(loss_fm.detach()),
            "loss_dist": float(loss_dist.detach()),
            "latent_mse": float(latent_error),
            "grad_norm_g": grad_g,
            "grad_norm_d": grad_d,
            "lr": float(self.optimizer_g.param_groups[0]["lr"]),
        }

    def _clip(self, module: nn.Module) -> float:
        clip = self.acdd_config.grad_clip
        return float(nn.utils.clip_grad_norm_(module.parameters(), clip if clip > 0 else float("inf")))

    def on_epoch_end(self, epoch: int) -> None:
        """Decay the learning rates."""
        self.scheduler_g.step()
        self.scheduler_d.step()

    def on_checkpoint(self, path: Path) -> None:
        """Export the ACDD head beside the model when ``head_path`` is set."""
        if self.head_path is not None:
            self.export_head().save(self.head_path)

    # --- export -----------------------------------------------------------------------------------
    def export_head(self) -> DiffusionHead:
        """The ACDD head with the student's weights."""
        ac = self.acdd_config
        return DiffusionHead(
            kind=ACDD_HEAD,
            parameterisation=EDM_PARAMETERISATION,
            edm=self.edm,
            denoiser_config=self.teacher_head.denoiser_config,
            schedule_config=None,
            state_dict={k: v.detach().cpu().clone() for k, v in self.student.state_dict().items()},
            latent_scale=self.latent_scale,
            metadata={
                **self.head_metadata,
                "trainer": "acdd",
                "steps": self.step,
                "epochs": self.epoch,
                "teacher_sha256": self.fingerprint,
                "strength_range": [ac.strength_min, ac.strength_max],
                "acdd_config": ac.to_dict(),
            },
        )
