"""Consistency distillation of an EDM teacher into a one-step consistency model (CoMoSVC).

CoMoSVC (arXiv 2401.01792, Sec. 3.2) after Song et al. 2023 (Consistency Models, Algorithm 2):

1. the N levels ``sigma_min = s_1 < ... < s_N = sigma_max`` of Karras et al. eq. 5;
2. draw z0 and conditions, an index n in 1..N-1 and noise: ``x_{n+1} = z0 + s_{n+1} eps``;
3. one Heun step of the frozen teacher (classifier-free guided at ``guidance_weight``) from
   ``s_{n+1}`` to ``s_n``: ``x_hat_n``;
4. loss ``d(f_theta(x_{n+1}, s_{n+1}), f_theta-(x_hat_n, s_n))`` with
   ``f = c_skip(sigma) x + c_out(sigma) F(c_in x, c_noise)`` and the boundary scalings of
   :func:`~infer.diffusion.edm.boundary_scalings` (``f(x, sigma_min) = x``);
5. ``theta- <- stopgrad(mu theta- + (1 - mu) theta)``.

The student F starts from the teacher's weights. The target network theta- is exported as the
``diffusion_cm.pt`` head.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from infer.diffusion.denoiser import Denoiser
from infer.diffusion.edm import Conditions, HeunSampler, edm_denoise, guided_denoise, karras_sigmas
from infer.diffusion.head import DiffusionHead, DiffusionHeadError
from infer.nn.configs import ConfigError, check_config_keys
from infer.options import CM_HEAD, EDM_PARAMETERISATION, TEACHER_HEAD
from infer.progress import ProgressFn, StopFn
from train.diffusion import (
    LatentBatch,
    LatentDataset,
    check_fraction,
    check_optimizer_settings,
    ema_update,
    masked_mse,
)
from train.distill import DISTANCES, EmaStudentMixin, pseudo_huber, teacher_fingerprint
from train.trainer import MetricsFn, Trainer, TrainerConfig

__all__ = ["ConsistencyDistillConfig", "ConsistencyTrainer", "consistency_target"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsistencyDistillConfig:
    """Consistency distillation settings.

    Attributes:
        batch_size: utterance windows per step.
        segment_frames: window length in latent frames.
        learning_rate: AdamW learning rate of the student.
        adam_betas: AdamW betas.
        weight_decay: AdamW weight decay.
        grad_clip: max global gradient norm (0 = no clipping).
        lr_decay: learning-rate factor per epoch.
        num_scales: N, levels of the discretised ODE (Song et al. use 18 on CIFAR-10 with EDM).
        target_decay: mu, the EMA decay of the target network.
        guidance_weight: w of the teacher's classifier-free guidance in the Heun steps.
        distance: ``'huber'`` (pseudo-Huber) or ``'l2'``.
        huber_c: pseudo-Huber constant per element (see :func:`train.distill.pseudo_huber`).
    """

    batch_size: int = 16
    segment_frames: int = 256
    learning_rate: float = 1e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lr_decay: float = 1.0
    num_scales: int = 18
    target_decay: float = 0.95
    guidance_weight: float = 0.0
    distance: str = "huber"
    huber_c: float = 0.00054

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_optimizer_settings(name, self)
        check_fraction(name, "target_decay", self.target_decay)
        if isinstance(self.num_scales, bool) or not isinstance(self.num_scales, int) or self.num_scales < 2:
            raise ConfigError(f"{name}.num_scales must be an int >= 2, got {self.num_scales!r}")
        if self.distance not in DISTANCES:
            raise ConfigError(f"{name}.distance must be one of {DISTANCES}, got {self.distance!r}")
        for key in ("guidance_weight", "huber_c"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name}.{key} must be a number >= 0, got {value!r}")
        if self.huber_c == 0:
            raise ConfigError(f"{name}.huber_c must be positive")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConsistencyDistillConfig:
        """Build from a plain dict; unknown keys are a :class:`ConfigError`."""
        check_config_keys(cls, data, require_all=False)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field."""
        out = asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out


@torch.no_grad()
def consistency_target(
    teacher: Denoiser,
    target: Denoiser,
    x_hi: Tensor,
    levels: tuple[Tensor, Tensor],
    cond: Conditions,
    head: DiffusionHead,
    guidance_weight: float,
) -> Tensor:
    """``f_theta-(x_hat_n, s_n)``: the teacher's guided Heun step s_{n+1} -> s_n, then the target network.

    Args:
        teacher: the frozen EDM teacher F; target: the EMA student F.
        x_hi: (B, C, T) ``z0 + s_{n+1} eps``.
        levels: ``(s_{n+1}, s_n)``, each (B,).
        cond: the conditions; head: the teacher head (its EDM config).
        guidance_weight: w of the teacher's guidance (0: conditional pass only).
    """
    config = head.edm_config()
    sigma_hi, sigma_lo = levels

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        return guided_denoise(teacher, x, sigma, cond, config, guidance_weight)

    x_lo = HeunSampler(config).step(denoise, sigma_hi, sigma_lo, x_hi) * cond.mask
    return edm_denoise(target, x_lo, sigma_lo, cond, config, use_boundary=True)


class ConsistencyTrainer(EmaStudentMixin, Trainer):
    """Consistency distillation of an EDM teacher; see the module docstring.

    Args:
        config: loop settings (run folder, epochs, checkpoints).
        dataset: the latent dataset the teacher was trained on.
        teacher: the EDM teacher head.
        distill_config: distillation settings.
        device: where to train.
        head_path: where every checkpoint also exports the CM head (``<model>/diffusion_cm.pt``).
        head_metadata: plain data added to the exported head's metadata.
        progress, should_stop, on_metrics: see :class:`~train.trainer.Trainer`.
    """

    run_label = "consistency"
    run_dirname = "cm"

    @property
    def window_config(self) -> ConsistencyDistillConfig:
        """The distillation settings (batch size, window)."""
        return self.distill_config

    def __init__(
        self,
        config: TrainerConfig,
        dataset: LatentDataset,
        teacher: DiffusionHead,
        *,
        distill_config: ConsistencyDistillConfig | None = None,
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
                "consistency distillation needs an EDM teacher (diffusion_teacher.pt trained with "
                f"--diffusion-parameterisation edm), got a {teacher.parameterisation} {teacher.kind} head"
            )
        teacher.check_compatible(
            latent_channels=dataset.latent_channels,
            content_dim=dataset.content_dim,
            gin_channels=dataset.gin_channels,
        )
        self.dataset = dataset
        self.teacher_head = teacher
        self.distill_config = distill_config or ConsistencyDistillConfig()
        dc = self.distill_config
        self.edm = teacher.edm_config()
        self.device = torch.device(device)
        self.head_path = head_path
        self.head_metadata = dict(head_metadata or {})
        self.fingerprint = teacher_fingerprint(teacher)
        ascending = list(reversed(karras_sigmas(dc.num_scales, self.edm)[:-1]))
        self.levels = torch.tensor(ascending, dtype=torch.float64)
        self.latent_scale = teacher.latent_scale
        self.teacher = teacher.build_denoiser(self.device)
        self.student = teacher.build_denoiser(self.device).requires_grad_(True).train()
        self.target = copy.deepcopy(self.student).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.student.parameters(), lr=dc.learning_rate, betas=dc.adam_betas, weight_decay=dc.weight_decay
        )
        self.lr_scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=dc.lr_decay)

    # --- Trainer interface ------------------------------------------------------------------------
    def train_step(self, batch: LatentBatch) -> dict[str, float]:
        """One consistency-distillation step, then the target EMA update."""
        dc = self.distill_config
        b = batch.to(self.device)
        cond = Conditions(b.content, b.f0_hz, b.speaker, b.mask)
        z0 = b.z0 * self.latent_scale
        count = z0.shape[0]
        # Draws on the CPU's global RNG (checkpointed by the base) for reproducible resumes.
        n = torch.randint(0, dc.num_scales - 1, (count,))
        noise = torch.randn(z0.shape).to(self.device)
        sigma_hi, sigma_lo = self.levels[n + 1], self.levels[n]
        x_hi = (z0 + sigma_hi.to(self.device, z0.dtype).view(-1, 1, 1) * noise) * b.mask
        target = consistency_target(
            self.teacher,
            self.target,
            x_hi,
            (sigma_hi, sigma_lo),
            cond,
            self.teacher_head,
            dc.guidance_weight,
        )
        self.student.train()
        online = edm_denoise(self.student, x_hi, sigma_hi, cond, self.edm, use_boundary=True)
        if dc.distance == "huber":
            loss = pseudo_huber(online, target, b.mask, dc.huber_c)
        else:
            loss = masked_mse(online, target, b.mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = dc.grad_clip
        grad_norm = nn.utils.clip_grad_norm_(self.student.parameters(), clip if clip > 0 else float("inf"))
        self.optimizer.step()
        ema_update(self.target, self.student, dc.target_decay)
        return {
            "loss": float(loss.detach()),
            "grad_norm": float(grad_norm),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
        }

    def on_epoch_end(self, epoch: int) -> None:
        """Decay the learning rate."""
        self.lr_scheduler.step()

    def on_checkpoint(self, path: Path) -> None:
        """Export the CM head beside the model when ``head_path`` is set."""
        if self.head_path is not None:
            self.export_head().save(self.head_path)

    # --- export -----------------------------------------------------------------------------------
    def export_head(self) -> DiffusionHead:
        """The CM head with the target network's weights."""
        return DiffusionHead(
            kind=CM_HEAD,
            parameterisation=EDM_PARAMETERISATION,
            edm=self.edm,
            denoiser_config=self.teacher_head.denoiser_config,
            schedule_config=None,
            state_dict={k: v.detach().cpu().clone() for k, v in self.target.state_dict().items()},
            latent_scale=self.latent_scale,
            metadata={
                **self.head_metadata,
                "trainer": "cm",
                "steps": self.step,
                "epochs": self.epoch,
                "teacher_sha256": self.fingerprint,
                "distill_config": self.distill_config.to_dict(),
            },
        )
