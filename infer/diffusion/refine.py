"""The refine loop: sample a VITS decoder latent with a diffusion head.

Two starts:

* ``'noise'``: from pure noise at t = T (LCM-SVC), or sigma_max for the EDM family;
* ``'shallow'``: from the VITS prior + flow latent noised to ``strength * T`` (so-vits-svc 4.1's
  shallow diffusion, FastVoiceGrad), which keeps the VITS result's structure. For the EDM family
  (samplers ``edm``, ``cm``, ``acdd``) the level is ``sigma = EDMConfig.sigma_at(strength)``, the
  point that far up the rho = 7 schedule; for ``acdd`` that level is the student's one knob.

Guidance lives here, not in the samplers. A teacher runs classifier-free guidance
(Ho & Salimans 2022, eq. 6 with the LCM paper's sign convention): ``eps = (1 + w) eps_cond - w
eps_uncond``, both predictions from one batched forward (w = 0 runs the conditional pass only).
An LCM student takes w as an input, one network evaluation per step. The EDM family guides the
denoiser output the same way, ``(1 + w) D_cond - w D_uncond`` (:func:`~infer.diffusion.edm.guided_denoise`).
"""

from __future__ import annotations

import itertools
import logging
import math

import torch
from torch import Tensor

from infer.diffusion.denoiser import Denoiser
from infer.diffusion.edm import Conditions, HeunSampler, guided_denoise
from infer.diffusion.head import DiffusionHead, check_head_for_sampler
from infer.diffusion.schedulers import make_sampler
from infer.errors import TimbreError
from infer.options import CM_HEAD, EDM_PARAMETERISATION
from infer.progress import ProgressFn, StopFn, check_stop, report
from infer.refine_params import RefineParams

__all__ = ["RefineError", "RefineParams", "guided_eps", "network_evaluations", "refine"]

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
        head: the head ``params.sampler`` needs (:func:`~infer.diffusion.head.check_head_for_sampler`).
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
    check_head_for_sampler(head, params.sampler)
    _check_inputs(head, x, f0_hz, e, x_mask, z_init)
    if params.start == "shallow" and z_init is None:
        raise RefineError("start='shallow' needs z_init, the VITS prior + flow latent (B, C, T)")
    if denoiser is None:
        denoiser = head.build_denoiser(x.device)
    if head.parameterisation == EDM_PARAMETERISATION:
        cond = Conditions(x.float(), f0_hz.float(), e.float(), x_mask.float())
        return _refine_edm(head, denoiser, cond, params, z_init, progress, should_stop)
    if head.consistency is not None and not (
        head.consistency.guidance_min - 1e-6 <= params.guidance_weight <= head.consistency.guidance_max + 1e-6
    ):
        raise RefineError(
            f"this LCM head was distilled for guidance weights in [{head.consistency.guidance_min}, "
            f"{head.consistency.guidance_max}], got {params.guidance_weight}"
        )
    device = x.device
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


def network_evaluations(params: RefineParams, *, num_train_timesteps: int = 1000) -> int:
    """Denoiser evaluations of one refine call (a guided teacher's batched pair counts once).

    For the shallow start DDPM/DDIM steps are capped at ``strength * T`` (and LCM's at the grid
    points below it, which this count does not model: pass what the head allows).
    """
    if params.sampler == "edm":
        return HeunSampler.evaluations(params.steps)
    if params.sampler in ("ddpm", "ddim") and params.start == "shallow":
        return min(params.steps, max(1, round(params.strength * num_train_timesteps)))
    return params.steps


def _start_sigma(head: DiffusionHead, params: RefineParams) -> float:
    config = head.edm_config()
    return config.sigma_max if params.start == "noise" else config.sigma_at(params.strength)


def _refine_edm(
    head: DiffusionHead,
    denoiser: Denoiser,
    cond: Conditions,
    params: RefineParams,
    z_init: Tensor | None,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> Tensor:
    """The EDM family: Heun steps of an EDM teacher, consistency steps of a CM, ACDD's one step.

    * ``edm``: Karras et al. Algorithm 1 over ``karras_sigmas(steps, sigma_start)``;
    * ``cm``: Song et al. 2023, Algorithm 1 (multistep consistency sampling):
      ``z <- f(x, sigma_0)``, then per later level ``x = z + sqrt(sigma^2 - sigma_min^2) n`` and
      ``z <- f(x, sigma)``;
    * ``acdd``: ``z = D_student(x, sigma_start)``, one evaluation.

    ``x`` starts at ``z_init * scale + sigma_start n`` (shallow) or ``sigma_max n`` (noise).
    """
    config = head.edm_config()
    mask = cond.mask
    device = mask.device
    generator = torch.Generator(device=device)
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    shape = (mask.shape[0], head.denoiser_config.latent_channels, mask.shape[-1])
    sigma_start = _start_sigma(head, params)
    noise = torch.randn(shape, generator=generator, device=device)
    if params.start == "shallow":
        assert z_init is not None
        sample = (z_init.float() * head.latent_scale + sigma_start * noise) * mask
    else:
        sample = noise * sigma_start * mask
    w = params.guidance_weight
    use_boundary = head.kind == CM_HEAD

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        return guided_denoise(denoiser, x, sigma, cond, config, w, use_boundary=use_boundary).float()

    batch = shape[0]
    if params.sampler == "edm":
        heun = HeunSampler(config)
        sigmas = heun.sigmas(params.steps, sigma_start)
        for i, (sigma, sigma_next) in enumerate(itertools.pairwise(sigmas)):
            check_stop(should_stop)
            sample = heun.step(denoise, sigma, sigma_next, sample) * mask
            report(progress, (i + 1) / params.steps, f"edm step {i + 1}/{params.steps}")
    elif params.sampler == "cm":
        levels = HeunSampler(config).sigmas(params.steps, sigma_start)[:-1]
        for i, sigma in enumerate(levels):
            check_stop(should_stop)
            if i > 0:
                fresh = torch.randn(shape, generator=generator, device=device)
                sample = sample + math.sqrt(max(sigma**2 - config.sigma_min**2, 0.0)) * fresh * mask
            sample = denoise(sample, torch.full((batch,), sigma, dtype=torch.float64)) * mask
            report(progress, (i + 1) / len(levels), f"cm step {i + 1}/{len(levels)}")
    else:
        check_stop(should_stop)
        sample = denoise(sample, torch.full((batch,), sigma_start, dtype=torch.float64)) * mask
        report(progress, 1.0, "acdd step 1/1")
    log.debug("refined %s latent with %s from sigma %.3g, w=%.2f", shape, params.sampler, sigma_start, w)
    return sample / head.latent_scale
