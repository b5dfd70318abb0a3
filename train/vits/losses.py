"""RVC's training losses, and what one step computed (:class:`StepTrace`) for comparing it with RVC."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


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


def as_floats(terms: Sequence[Tensor]) -> list[float]:
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
