"""The refine loop: sample a VITS decoder latent with a diffusion head.

Two starts:

* ``'noise'``: from pure noise at t = T (LCM-SVC);
* ``'shallow'``: from the VITS prior + flow latent noised to ``strength * T`` (so-vits-svc 4.1's
  shallow diffusion, FastVoiceGrad), which keeps the VITS result's structure.

Guidance lives here, not in the samplers. A teacher runs classifier-free guidance
(Ho & Salimans 2022, eq. 6 with the LCM paper's sign convention): ``eps = (1 + w) eps_cond - w
eps_uncond``, both predictions from one batched forward (w = 0 runs the conditional pass only).
An LCM student takes w as an input, one network evaluation per step.
"""

from __future__ import annotations

import itertools
import logging

import torch
from torch import Tensor

from infer.diffusion.denoiser import Denoiser
from infer.diffusion.head import DiffusionHead, DiffusionHeadError, head_kind_for_sampler
from infer.diffusion.schedulers import make_sampler
from infer.errors import TimbreError
from infer.options import LCM_HEAD
from infer.progress import ProgressFn, StopFn, check_stop, report
from infer.refine_params import RefineParams

__all__ = ["RefineError", "RefineParams", "guided_eps", "refine"]

log = logging.getLogger(__name__)


class RefineError(TimbreError, ValueError):
    """The refine inputs do not fit each other (shapes, a missing start latent, steps out of range)."""


def guided_eps(
    denoiser: Denoiser,
    z_t: Tensor,
    t: Tensor,
    x: Tensor,
    f0_hz: Tensor,
    e: Tensor,
    x_mask: Tensor,
    guidance_weight: float | Tensor,
) -> Tensor:
    """Classifier-free guided noise prediction of a teacher: ``(1 + w) eps_cond - w eps_uncond``.

    Args:
        denoiser: a teacher (no w-embedding).
        z_t: (B, C, T) noisy scaled latent; t: (B,) timesteps.
        x: (B, T, content_dim); f0_hz: (B, T); e: (B, gin, 1); x_mask: (B, 1, T).
        guidance_weight: w >= 0, a float or (B,) per item; a float 0 runs only the conditional pass.

    Returns:
        (B, C, T) guided eps.
    """
    if not isinstance(guidance_weight, Tensor) and guidance_weight == 0.0:
        return denoiser(z_t, t, x, f0_hz, e, x_mask)
    batch = z_t.shape[0]
    drop = torch.cat([torch.zeros(batch, dtype=torch.bool), torch.ones(batch, dtype=torch.bool)]).to(
        z_t.device
    )
    eps = denoiser(
        torch.cat([z_t, z_t]),
        torch.cat([t, t]),
        torch.cat([x, x]),
        torch.cat([f0_hz, f0_hz]),
        torch.cat([e, e]),
        torch.cat([x_mask, x_mask]),
        drop_cond=drop,
    )
    eps_cond, eps_uncond = eps[:batch], eps[batch:]
    w = guidance_weight.to(eps).view(-1, 1, 1) if isinstance(guidance_weight, Tensor) else guidance_weight
    return (1.0 + w) * eps_cond - w * eps_uncond


def _check_inputs(
    head: DiffusionHead, x: Tensor, f0_hz: Tensor, e: Tensor, x_mask: Tensor, z_init: Tensor | None
) -> None:
    c = head.denoiser_config
    if x.dim() != 3 or x.shape[-1] != c.content_dim:
        raise RefineError(f"content features must be (B, T, {c.content_dim}), got {tuple(x.shape)}")
    batch, frames = x.shape[0], x.shape[1]
    if tuple(f0_hz.shape) != (batch, frames):
        raise RefineError(f"f0_hz must be (B, T) = {(batch, frames)}, got {tuple(f0_hz.shape)}")
    if tuple(e.shape) != (batch, c.gin_channels, 1):
        raise RefineError(
            f"speaker embedding must be (B, gin, 1) = {(batch, c.gin_channels, 1)}, got {tuple(e.shape)}"
        )
    if tuple(x_mask.shape) != (batch, 1, frames):
        raise RefineError(f"x_mask must be (B, 1, T) = {(batch, 1, frames)}, got {tuple(x_mask.shape)}")
    if z_init is not None and tuple(z_init.shape) != (batch, c.latent_channels, frames):
        raise RefineError(
            f"z_init must be (B, C, T) = {(batch, c.latent_channels, frames)}, got {tuple(z_init.shape)}"
        )


@torch.no_grad()
def refine(
    head: DiffusionHead,
    x: Tensor,
    f0_hz: Tensor,
    e: Tensor,
    x_mask: Tensor,
    *,
    params: RefineParams,
    z_init: Tensor | None = None,
    denoiser: Denoiser | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> Tensor:
    """Sample a decoder latent z with ``head``.

    Args:
        head: a ``'teacher'`` head for ``ddpm``/``ddim``, an ``'lcm'`` head for ``lcm``.
        x: (B, T, content_dim) content features at the latent frame rate (after retrieval blending).
        f0_hz: (B, T) float f0 in Hz, 0 when unvoiced.
        e: (B, gin, 1) speaker embedding (the synthesizer's ``speaker_embedding(sid)``).
        x_mask: (B, 1, T) float, 1 on valid frames.
        params: sampler, steps, guidance weight, start, strength, seed.
        z_init: (B, C, T) VITS prior + flow latent (unscaled); required for ``start='shallow'``.
        denoiser: ``head.build_denoiser(...)`` on the inputs' device, to reuse across calls; built
            here when None.
        progress: ``progress(fraction, message)`` after every step.
        should_stop: polled before every step; True raises :class:`~infer.errors.Cancelled`.

    Returns:
        (B, C, T) float32 latent in the decoder's (unscaled) units, masked.

    Raises:
        DiffusionHeadError: the head's kind does not fit the sampler.
        RefineError: the inputs do not fit the head or each other.
    """
    needed = head_kind_for_sampler(params.sampler)
    if head.kind != needed:
        if needed == LCM_HEAD:
            raise DiffusionHeadError(
                "the lcm sampler needs a distilled LCM head (diffusion_lcm.pt) but this is the teacher; run "
                "`python -m train distill` or choose the ddpm/ddim sampler"
            )
        raise DiffusionHeadError(
            f"the {params.sampler} sampler needs the teacher head (diffusion_teacher.pt) but this is a "
            "distilled LCM head; choose the lcm sampler"
        )
    _check_inputs(head, x, f0_hz, e, x_mask, z_init)
    if params.start == "shallow" and z_init is None:
        raise RefineError("start='shallow' needs z_init, the VITS prior + flow latent (B, C, T)")
    if head.consistency is not None and not (
        head.consistency.guidance_min - 1e-6 <= params.guidance_weight <= head.consistency.guidance_max + 1e-6
    ):
        raise RefineError(
            f"this LCM head was distilled for guidance weights in [{head.consistency.guidance_min}, "
            f"{head.consistency.guidance_max}], got {params.guidance_weight}"
        )
    device = x.device
    if denoiser is None:
        denoiser = head.build_denoiser(device)
    schedule = head.schedule()
    sampler = make_sampler(params.sampler, schedule, head.consistency)
    T = schedule.num_train_timesteps
    generator = torch.Generator(device=device)
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)

    mask = x_mask.float()
    x = x.float()
    f0_hz = f0_hz.float()
    e = e.float()
    shape = (x.shape[0], head.denoiser_config.latent_channels, x.shape[1])
    if params.start == "shallow":
        assert z_init is not None
        start_t = max(1, round(params.strength * T))
        if head.consistency is not None:
            available = max(1, start_t // head.consistency.skip_interval)
        else:
            available = start_t
        steps = min(params.steps, available)
        timesteps = sampler.timesteps(steps, start_t)
        noise = torch.randn(shape, generator=generator, device=device)
        sample = schedule.add_noise(z_init.float() * head.latent_scale, noise, timesteps[0])
    else:
        if params.sampler != "lcm" and params.steps > T:
            raise RefineError(f"the {params.sampler} sampler takes at most T = {T} steps, got {params.steps}")
        timesteps = sampler.timesteps(params.steps)
        sample = torch.randn(shape, generator=generator, device=device)
    sample = sample * mask
    batch = shape[0]
    n_steps = len(timesteps) - 1
    w = params.guidance_weight
    w_batch = torch.full((batch,), w, device=device) if head.kind == "lcm" else None
    for i, (t, t_prev) in enumerate(itertools.pairwise(timesteps)):
        check_stop(should_stop)
        t_batch = torch.full((batch,), t, dtype=torch.long, device=device)
        if w_batch is not None:
            eps = denoiser(sample, t_batch, x, f0_hz, e, mask, w=w_batch)
        else:
            eps = guided_eps(denoiser, sample, t_batch, x, f0_hz, e, mask, w)
        sample = sampler.step(eps.float(), t, t_prev, sample, generator=generator).prev_sample * mask
        report(progress, (i + 1) / n_steps, f"{params.sampler} step {i + 1}/{n_steps}")
    log.debug("refined %s latent with %s, %d steps, w=%.2f", tuple(shape), params.sampler, n_steps, w)
    return sample / head.latent_scale
