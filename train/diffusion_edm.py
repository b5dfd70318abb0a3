"""EDM teacher training (Karras et al. 2022, CoMoSVC's teacher) on the latent dataset.

The same data, conditions, condition dropout, EMA and checkpoints as the eps teacher of
:mod:`train.diffusion`; only the loss and the exported head differ. Per item
``ln sigma ~ N(P_mean, P_std^2)`` (Sec. 5), ``x = z0 + sigma n`` and the loss is
``lambda(sigma) ||D(x, sigma) - z0||^2`` with ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``
(Table 1), which is the unit-weighted loss on the raw network output ``F``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from infer.diffusion.denoiser import DenoiserConfig
from infer.diffusion.edm import Conditions, EDMConfig, edm_denoise
from infer.diffusion.head import DiffusionHead
from infer.options import EDM_PARAMETERISATION, TEACHER_HEAD
from infer.progress import ProgressFn, StopFn
from train.diffusion import DiffusionTrainConfig, DiffusionTrainer, LatentBatch, LatentDataset
from train.trainer import MetricsFn, TrainerConfig

__all__ = ["EDMTrainer", "edm_loss_weight", "sample_sigmas"]


def edm_loss_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 (Karras et al. Table 1), (B,) -> (B,)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_sigmas(count: int, config: EDMConfig, generator: torch.Generator | None = None) -> Tensor:
    """(count,) float64 training levels ``exp(P_mean + P_std n)``, clamped to [sigma_min, sigma_max]."""
    normal = torch.randn(count, generator=generator, dtype=torch.float64)
    sigma = torch.exp(config.p_mean + config.p_std * normal)
    return sigma.clamp(config.sigma_min, config.sigma_max)


class EDMTrainer(DiffusionTrainer):
    """The EDM-parameterised teacher; see the module docstring.

    Args:
        config: loop settings (run folder, epochs, checkpoints).
        dataset: the latent dataset.
        denoiser_config: network sizes; its latent/content/gin widths must match the dataset.
        edm: the noise family (default :class:`EDMConfig`).
        train_config: optimisation settings (shared with the eps teacher).
        latent_scale: multiply z0 by this; measured on ``dataset`` (1 / std) when None.
        device: where to train.
        head_path: where every checkpoint also exports the head.
        head_metadata: plain data added to the exported head's metadata.
        progress, should_stop, on_metrics: see :class:`~train.trainer.Trainer`.
    """

    def __init__(
        self,
        config: TrainerConfig,
        dataset: LatentDataset,
        *,
        denoiser_config: DenoiserConfig,
        edm: EDMConfig | None = None,
        train_config: DiffusionTrainConfig | None = None,
        latent_scale: float | None = None,
        device: torch.device | str = "cpu",
        head_path: Path | None = None,
        head_metadata: Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
        on_metrics: MetricsFn | None = None,
    ) -> None:
        super().__init__(
            config,
            dataset,
            denoiser_config=denoiser_config,
            train_config=train_config,
            latent_scale=latent_scale,
            device=device,
            head_path=head_path,
            head_metadata=head_metadata,
            progress=progress,
            should_stop=should_stop,
            on_metrics=on_metrics,
        )
        self.edm = edm or EDMConfig()

    def diffusion_loss(
        self,
        batch: LatentBatch,
        *,
        generator: torch.Generator | None = None,
        cond_drop_prob: float | None = None,
    ) -> Tensor:
        """The weighted EDM denoising loss of ``batch`` (draws on the CPU, as the eps teacher's)."""
        b = batch.to(self.device)
        z0 = b.z0 * self.latent_scale
        count = z0.shape[0]
        sigma = sample_sigmas(count, self.edm, generator)
        noise = torch.randn(z0.shape, generator=generator).to(self.device)
        p_drop = self.train_config.cond_drop_prob if cond_drop_prob is None else cond_drop_prob
        drop = torch.rand(count, generator=generator) < p_drop
        x = (z0 + sigma.to(self.device, z0.dtype).view(-1, 1, 1) * noise) * b.mask
        cond = Conditions(b.content, b.f0_hz, b.speaker, b.mask)
        denoised = edm_denoise(self.model, x, sigma, cond, self.edm, drop_cond=drop.to(self.device))
        weight = edm_loss_weight(sigma, self.edm.sigma_data).to(self.device, z0.dtype).view(-1, 1, 1)
        channels = z0.shape[1]
        error = ((denoised - z0) ** 2 * b.mask * weight).sum()
        return error / (b.mask.sum() * channels).clamp(min=1.0)

    def export_head(self) -> DiffusionHead:
        """The EDM teacher head (EMA weights when enabled)."""
        head = super().export_head()
        return DiffusionHead(
            kind=TEACHER_HEAD,
            parameterisation=EDM_PARAMETERISATION,
            edm=self.edm,
            denoiser_config=head.denoiser_config,
            schedule_config=None,
            state_dict=head.state_dict,
            latent_scale=head.latent_scale,
            metadata={**head.metadata, "trainer": "diffusion-edm", "edm": self.edm.to_dict()},
        )
