"""Latent consistency distillation (LCD) of the teacher LDM into an LCM head.

Luo et al. 2023 (Latent Consistency Models), Algorithm 1, as LCM-SVC applies it (its Algorithm 1):

1. draw z0 and conditions c, a grid index n (so ``t_{n+k} = n k`` and ``t_n = (n - 1) k`` for
   the skipping interval k) and a guidance weight w ~ U[w_min, w_max];
2. noise: ``z_{n+k} = sqrt(a_{n+k}) z0 + sqrt(1 - a_{n+k}) eps``;
3. one DDIM step of the frozen teacher with classifier-free guidance at w from ``t_{n+k}`` to
   ``t_n``: ``z_hat_n = Psi(z_{n+k}, (1 + w) eps_c - w eps_u)`` (equal to the paper's
   ``z + (1 + w) Psi(c) - w Psi(null)`` because a DDIM step is affine in eps);
4. loss ``d(f_theta(z_{n+k}, w, c, t_{n+k}), f_theta-(z_hat_n, w, c, t_n))`` with the consistency
   parametrisation ``f = c_skip(t) z + c_out(t) z0_hat`` (boundary ``c_skip(0) = 1, c_out(0) = 0``,
   so the target at t_n = 0 is z_hat_n itself);
5. ``theta- <- stopgrad(mu theta- + (1 - mu) theta)``.

The student is the teacher's network plus a w-embedding (zero-initialised, so it starts as the
teacher) and is initialised from the teacher's weights. The target network theta- is exported as
the ``diffusion_lcm.pt`` head.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from infer.diffusion.denoiser import Denoiser
from infer.diffusion.head import DiffusionHead, DiffusionHeadError
from infer.diffusion.refine import guided_eps
from infer.diffusion.schedulers import ConsistencyConfig, DDIMSampler, LCMSampler
from infer.nn.configs import ConfigError, check_config_keys
from infer.progress import ProgressFn, StopFn
from train.diffusion import (
    LatentBatch,
    LatentDataset,
    check_fraction,
    check_optimizer_settings,
    ema_update,
    epoch_order,
    masked_mse,
)
from train.trainer import MetricsFn, ResumeError, Trainer, TrainerConfig

__all__ = ["DISTANCES", "DistillConfig", "DistillTrainer", "pseudo_huber", "teacher_fingerprint"]

log = logging.getLogger(__name__)

DISTANCES = ("l2", "huber")


@dataclass(frozen=True)
class DistillConfig:
    """Distillation settings.

    Attributes:
        batch_size: utterance windows per step.
        segment_frames: window length in latent frames.
        learning_rate: AdamW learning rate of the student.
        adam_betas: AdamW betas.
        weight_decay: AdamW weight decay.
        grad_clip: max global gradient norm (0 = no clipping).
        lr_decay: learning-rate factor per epoch.
        skip_interval: k; must divide T (the LCM sampler's grid is k, 2k, ..., T).
        guidance_min: w_min of the sampled guidance weights.
        guidance_max: w_max.
        target_decay: mu, the EMA decay of the target network.
        distance: ``'huber'`` (pseudo-Huber) or ``'l2'``.
        huber_c: pseudo-Huber constant per element: 0.00054 (Song & Dhariwal 2023, Sec. 3.3,
            c = 0.00054 sqrt(d) on the un-normalised norm; see :func:`pseudo_huber`).
        sigma_data: sigma_data of the boundary-condition scalings.
        timestep_scaling: the scalings' time factor (LCM's 10).
    """

    batch_size: int = 16
    segment_frames: int = 256
    learning_rate: float = 1e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lr_decay: float = 1.0
    skip_interval: int = 20
    guidance_min: float = 0.0
    guidance_max: float = 3.0
    target_decay: float = 0.95
    distance: str = "huber"
    huber_c: float = 0.00054
    sigma_data: float = 0.5
    timestep_scaling: float = 10.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_optimizer_settings(name, self)
        check_fraction(name, "target_decay", self.target_decay)
        if self.distance not in DISTANCES:
            raise ConfigError(f"{name}.distance must be one of {DISTANCES}, got {self.distance!r}")
        if isinstance(self.huber_c, bool) or not isinstance(self.huber_c, (int, float)) or self.huber_c <= 0:
            raise ConfigError(f"{name}.huber_c must be a positive number, got {self.huber_c!r}")
        self.consistency()  # validates skip interval, guidance range and scalings

    def consistency(self) -> ConsistencyConfig:
        """The settings the LCM sampler needs at inference."""
        return ConsistencyConfig(
            skip_interval=self.skip_interval,
            sigma_data=self.sigma_data,
            timestep_scaling=self.timestep_scaling,
            guidance_min=self.guidance_min,
            guidance_max=self.guidance_max,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DistillConfig:
        """Build from a plain dict; unknown keys are a :class:`ConfigError`."""
        check_config_keys(cls, data, require_all=False)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field."""
        out = asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out


def pseudo_huber(prediction: Tensor, target: Tensor, mask: Tensor, c: float) -> Tensor:
    """Pseudo-Huber distance (Song & Dhariwal 2023, eq. 7), normalised per element.

    Per item ``sqrt(||x - y||^2 / d + c^2) - c`` over its d valid elements, i.e. the paper's
    ``sqrt(||x - y||^2 + c'^2) - c'`` with ``c' = c sqrt(d)``, divided by ``sqrt(d)`` so that
    windows of any length weigh alike. Averaged over the batch.

    Args:
        prediction, target: (B, C, T); mask: (B, 1, T).
    """
    channels = prediction.shape[1]
    dims = (mask.sum(dim=(1, 2)) * channels).clamp(min=1.0)
    mean_sq = ((prediction - target) ** 2 * mask).sum(dim=(1, 2)) / dims
    return (torch.sqrt(mean_sq + c * c) - c).mean()


def teacher_fingerprint(head: DiffusionHead) -> str:
    """SHA-256 over the teacher's weights and configs (a resumed run must use the same teacher)."""
    digest = hashlib.sha256()
    digest.update(repr(sorted(head.denoiser_config.to_dict().items())).encode())
    family = head.schedule_config if head.schedule_config is not None else head.edm_config()
    digest.update(repr(sorted(family.to_dict().items())).encode())
    digest.update(repr(head.latent_scale).encode())
    for key in sorted(head.state_dict):
        tensor = head.state_dict[key].detach().float().cpu().contiguous()
        digest.update(key.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


class TeacherStudentMixin:
    """What every trainer that distils a frozen teacher head into a student shares.

    The checkpoint carries the teacher's fingerprint (a resume against another teacher is refused)
    and batches are shuffled windows of the latent dataset, deterministic for (seed, epoch). The
    subclass names itself (``run_label``, ``run_dirname``) and gives ``window_config``, a config
    with ``batch_size`` and ``segment_frames``.
    """

    run_label: str
    run_dirname: str
    fingerprint: str
    dataset: LatentDataset
    config: TrainerConfig

    @property
    def window_config(self) -> Any:
        """The config holding ``batch_size`` and ``segment_frames``."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """The teacher's fingerprint."""
        return {"teacher_sha256": self.fingerprint}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint distilled from another teacher."""
        if state.get("teacher_sha256") != self.fingerprint or set(state) != {"teacher_sha256"}:
            raise ResumeError(
                f"this {self.run_label} checkpoint was made from another teacher head; retraining the "
                f"teacher invalidates it (delete the {self.run_dirname} run folder to start over)"
            )

    def batches_per_epoch(self) -> int:
        """Utterances / batch size, rounded up."""
        return math.ceil(len(self.dataset) / self.window_config.batch_size)

    def batches(self, epoch: int) -> Iterator[LatentBatch]:
        """Shuffled windows, deterministic for (seed, epoch)."""
        wc = self.window_config
        groups, generator = epoch_order(len(self.dataset), wc.batch_size, self.config.seed, epoch)
        for group in groups:
            yield self.dataset.batch(group, wc.segment_frames, generator)


class EmaStudentMixin(TeacherStudentMixin):
    """A student trained by one AdamW with per-epoch decay, and its EMA target."""

    student: nn.Module
    target: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any

    def modules(self) -> dict[str, nn.Module]:
        """The online student and the EMA target (the teacher is frozen and comes from its head)."""
        return {"student": self.student, "target": self.target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The student's AdamW."""
        return {"adamw": self.optimizer}

    def schedulers(self) -> dict[str, Any]:
        """The per-epoch learning-rate decay."""
        return {"lr": self.lr_scheduler}


class DistillTrainer(EmaStudentMixin, Trainer):
    """Latent consistency distillation; see the module docstring.

    Args:
        config: loop settings (run folder, epochs, checkpoints).
        dataset: the latent dataset the teacher was trained on (or one like it).
        teacher: the teacher head (kind ``'teacher'``).
        distill_config: distillation settings.
        device: where to train.
        head_path: where every checkpoint also exports the LCM head (``<model>/diffusion_lcm.pt``).
        head_metadata: plain data added to the exported head's metadata.
        progress, should_stop, on_metrics: see :class:`~train.trainer.Trainer`.
    """

    run_label = "distillation"
    run_dirname = "distill"

    @property
    def window_config(self) -> DistillConfig:
        """The distillation settings (batch size, window)."""
        return self.distill_config

    def __init__(
        self,
        config: TrainerConfig,
        dataset: LatentDataset,
        teacher: DiffusionHead,
        *,
        distill_config: DistillConfig | None = None,
        device: torch.device | str = "cpu",
        head_path: Path | None = None,
        head_metadata: Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
        on_metrics: MetricsFn | None = None,
    ) -> None:
        super().__init__(config, progress=progress, should_stop=should_stop, on_metrics=on_metrics)
        if teacher.kind != "teacher":
            raise DiffusionHeadError(
                f"distillation needs the teacher head (diffusion_teacher.pt), got a {teacher.kind} head"
            )
        teacher.check_compatible(
            latent_channels=dataset.latent_channels,
            content_dim=dataset.content_dim,
            gin_channels=dataset.gin_channels,
        )
        self.dataset = dataset
        self.teacher_head = teacher
        self.distill_config = distill_config or DistillConfig()
        dc = self.distill_config
        self.device = torch.device(device)
        self.head_path = head_path
        self.head_metadata = dict(head_metadata or {})
        self.fingerprint = teacher_fingerprint(teacher)
        self.schedule = teacher.schedule()
        self.consistency = dc.consistency()
        self.lcm = LCMSampler(self.schedule, self.consistency)  # raises when k does not divide T
        self.solver = DDIMSampler(self.schedule)
        self.latent_scale = teacher.latent_scale
        self.teacher = teacher.build_denoiser(self.device)
        student_config = replace(teacher.denoiser_config, use_w_embedding=True)
        self.student = Denoiser(student_config)
        self.student.load_teacher_weights({k: v.float() for k, v in teacher.state_dict.items()})
        self.student.to(self.device).train()
        self.target = copy.deepcopy(self.student).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.student.parameters(), lr=dc.learning_rate, betas=dc.adam_betas, weight_decay=dc.weight_decay
        )
        self.lr_scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=dc.lr_decay)

    # --- Trainer interface ------------------------------------------------------------------------
    def train_step(self, batch: LatentBatch) -> dict[str, float]:
        """One LCD step (Algorithm 1), then the target EMA update."""
        dc = self.distill_config
        b = batch.to(self.device)
        mask = b.mask
        z0 = b.z0 * self.latent_scale
        count = z0.shape[0]
        k = dc.skip_interval
        # Random draws on the CPU's global RNG (checkpointed by the base) for reproducible resumes.
        n = torch.randint(1, self.schedule.num_train_timesteps // k + 1, (count,))
        w_cpu = dc.guidance_min + (dc.guidance_max - dc.guidance_min) * torch.rand(count)
        noise = torch.randn(z0.shape).to(self.device)
        t_hi = (n * k).to(self.device)
        t_lo = t_hi - k
        w = w_cpu.to(self.device)
        conds = (b.content, b.f0_hz, b.speaker, mask)
        z_hi = self.schedule.add_noise(z0, noise, t_hi) * mask
        with torch.no_grad():
            eps_teacher = guided_eps(self.teacher, z_hi, t_hi, b.content, b.f0_hz, b.speaker, mask, w)
            z_lo = self.solver.step(eps_teacher, t_hi, t_lo, z_hi).prev_sample * mask
            target_eps = self.target(z_lo, t_lo, *conds, w=w)
            target = self.lcm.consistency_function(target_eps, t_lo, z_lo) * mask
        self.student.train()
        online = self.lcm.consistency_function(self.student(z_hi, t_hi, *conds, w=w), t_hi, z_hi) * mask
        if dc.distance == "huber":
            loss = pseudo_huber(online, target, mask, dc.huber_c)
        else:
            loss = masked_mse(online, target, mask)
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
        """Export the LCM head beside the model when ``head_path`` is set."""
        if self.head_path is not None:
            self.export_head().save(self.head_path)

    # --- export -----------------------------------------------------------------------------------
    def export_head(self) -> DiffusionHead:
        """The LCM head with the target network's weights."""
        return DiffusionHead(
            kind="lcm",
            denoiser_config=self.student.config,
            schedule_config=self.schedule.config,
            state_dict={k: v.detach().cpu().clone() for k, v in self.target.state_dict().items()},
            latent_scale=self.latent_scale,
            consistency=self.consistency,
            metadata={
                **self.head_metadata,
                "trainer": "distill",
                "steps": self.step,
                "epochs": self.epoch,
                "teacher_sha256": self.fingerprint,
                "distill_config": self.distill_config.to_dict(),
            },
        )
