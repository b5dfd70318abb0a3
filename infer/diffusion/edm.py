"""EDM-parameterised latent diffusion (Karras et al. 2022) and its one-step students.

CoMoSVC (arXiv 2401.01792) trains its teacher in the EDM formulation and distils a consistency
model from it; FastVoiceGrad's ACDD (arXiv 2409.02245) distils a one-step student that starts
from the source latent diffused to a chosen level. All three share this module's conventions:

* the data are VITS latents multiplied by the head's ``latent_scale`` (unit variance), so
  ``sigma_data = 1`` by default;
* noising is variance exploding: ``x = z0 + sigma n`` (Karras et al. eq. 1 with s(t) = 1);
* the network is a :class:`~infer.diffusion.denoiser.Denoiser` ``F`` wrapped by the
  preconditioning of Karras et al. Table 1: ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)``;
  the consistency student swaps c_skip / c_out for the boundary-condition scalings of Song et al.
  2023 (Appendix C), so that ``f(x, sigma_min) = x`` exactly.

The Denoiser's step embedding was built for t in 0..1000; ``c_noise = ln(sigma) / 4`` is fed to it
multiplied by :data:`NOISE_EMBED_SCALE` so that the EDM range ``ln(0.002) / 4 .. ln(80) / 4``
spans a comparable stretch of its sinusoid periods.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from infer.diffusion.denoiser import Denoiser
from infer.nn.configs import ConfigError, check_config_keys

__all__ = [
    "NOISE_EMBED_SCALE",
    "Conditions",
    "EDMConfig",
    "HeunSampler",
    "boundary_scalings",
    "edm_denoise",
    "edm_scalings",
    "guided_denoise",
    "karras_sigmas",
]

NOISE_EMBED_SCALE = 1000.0
"""c_noise is multiplied by this before the Denoiser's sinusoidal step embedding."""

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
"""``denoise(x (B, C, T), sigma (B,)) -> D(x, sigma) (B, C, T)``: a (guided) denoiser."""


@dataclass(frozen=True)
class EDMConfig:
    """The noise family of an EDM head (Karras et al. 2022, Table 1 and Sec. 5).

    Attributes:
        sigma_min: smallest noise level (the consistency boundary).
        sigma_max: largest noise level (the pure-noise start).
        sigma_data: standard deviation of the (scaled) data.
        rho: exponent of the sigma schedule (eq. 5; 7 in the paper).
        p_mean: mean of ln(sigma) for training (log-normal, Sec. 5: -1.2).
        p_std: standard deviation of ln(sigma) for training (1.2).
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 1.0
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self) -> None:
        name = type(self).__name__
        for key in ("sigma_min", "sigma_max", "sigma_data", "rho", "p_mean", "p_std"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name}.{key} must be a finite number, got {value!r}")
            object.__setattr__(self, key, float(value))
        if not 0.0 < self.sigma_min < self.sigma_max:
            raise ConfigError(
                f"{name}: need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"
            )
        if self.sigma_data <= 0 or self.rho <= 0 or self.p_std <= 0:
            raise ConfigError(f"{name}: sigma_data, rho and p_std must be positive")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EDMConfig:
        """Build from a plain dict; unknown keys are a :class:`ConfigError`."""
        check_config_keys(cls, data, require_all=False)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field."""
        return asdict(self)

    def sigma_at(self, fraction: float) -> float:
        """The noise level ``fraction`` of the way up the rho-schedule (0: sigma_min, 1: sigma_max).

        This is how a shallow start's ``strength`` maps to a noise level for the EDM family.
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (lo + fraction * (hi - lo)) ** self.rho


@dataclass(frozen=True)
class Conditions:
    """The denoiser's conditions, at the latent frame rate.

    Attributes:
        content: (B, T, content_dim) content features.
        f0_hz: (B, T) f0 in Hz, 0 when unvoiced.
        speaker: (B, gin, 1) speaker embedding.
        mask: (B, 1, T) float, 1 on valid frames.
    """

    content: Tensor
    f0_hz: Tensor
    speaker: Tensor
    mask: Tensor

    def doubled(self) -> Conditions:
        """Every tensor concatenated with itself along the batch (for one guided forward)."""
        return Conditions(*(torch.cat([t, t]) for t in (self.content, self.f0_hz, self.speaker, self.mask)))


def _column(values: Tensor, like: Tensor) -> Tensor:
    return values.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


def edm_scalings(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Karras et al. 2022, Table 1 (EDM column): ``(c_skip, c_out, c_in, c_noise)`` of sigma (B,).

    ``c_skip = sd^2 / (sigma^2 + sd^2)``, ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``,
    ``c_in = 1 / sqrt(sigma^2 + sd^2)``, ``c_noise = ln(sigma) / 4``; each (B,) in sigma's dtype.
    """
    sigma = sigma.to(torch.float64)
    root = torch.sqrt(sigma**2 + sigma_data**2)
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / root
    c_in = 1.0 / root
    c_noise = torch.log(sigma) / 4.0
    return c_skip, c_out, c_in, c_noise


def boundary_scalings(sigma: Tensor, sigma_min: float, sigma_data: float) -> tuple[Tensor, Tensor]:
    """Song et al. 2023, Appendix C: consistency scalings ``(c_skip, c_out)`` of sigma (B,).

    ``c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2)`` and
    ``c_out = (sigma - sigma_min) sd / sqrt(sigma^2 + sd^2)``: c_skip(sigma_min) = 1 and
    c_out(sigma_min) = 0, so ``f(x, sigma_min) = x`` (the boundary condition).
    """
    sigma = sigma.to(torch.float64)
    shifted = sigma - sigma_min
    c_skip = sigma_data**2 / (shifted**2 + sigma_data**2)
    c_out = shifted * sigma_data / torch.sqrt(sigma**2 + sigma_data**2)
    return c_skip, c_out


def karras_sigmas(num_steps: int, config: EDMConfig, sigma_start: float | None = None) -> list[float]:
    """Karras et al. eq. 5: ``num_steps`` levels from ``sigma_start`` (or sigma_max) to sigma_min, then 0.

    ``sigma_i = (s_max^(1/rho) + i / (N - 1) (s_min^(1/rho) - s_max^(1/rho)))^rho`` for
    i = 0..N-1, and sigma_N = 0. One step is ``[sigma_start, 0]``.
    """
    if num_steps < 1:
        raise ValueError(f"steps must be >= 1, got {num_steps}")
    top = config.sigma_max if sigma_start is None else float(sigma_start)
    if not config.sigma_min <= top <= config.sigma_max:
        raise ValueError(f"sigma_start must lie in [{config.sigma_min}, {config.sigma_max}], got {top}")
    if num_steps == 1:
        return [top, 0.0]
    hi, lo = top ** (1 / config.rho), config.sigma_min ** (1 / config.rho)
    sigmas = [(hi + i / (num_steps - 1) * (lo - hi)) ** config.rho for i in range(num_steps)]
    return [*sigmas, 0.0]


def edm_denoise(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor,
    cond: Conditions,
    config: EDMConfig,
    *,
    use_boundary: bool = False,
    drop_cond: Tensor | None = None,
) -> Tensor:
    """The preconditioned denoiser ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)``.

    Args:
        denoiser: the network F (no w-embedding).
        x: (B, C, T) noisy scaled latent.
        sigma: (B,) noise levels.
        cond: the conditions.
        config: sigma_data and sigma_min.
        use_boundary: use the consistency scalings (:func:`boundary_scalings`) for c_skip / c_out.
        drop_cond: (B,) bool; True runs the item unconditionally.

    Returns:
        (B, C, T) the clean-latent estimate, masked.
    """
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, config.sigma_data)
    if use_boundary:
        c_skip, c_out = boundary_scalings(sigma, config.sigma_min, config.sigma_data)
    f = denoiser(
        _column(c_in, x) * x,
        (c_noise * NOISE_EMBED_SCALE).to(device=x.device, dtype=torch.float32),
        cond.content,
        cond.f0_hz,
        cond.speaker,
        cond.mask,
        drop_cond=drop_cond,
    )
    return (_column(c_skip, x) * x + _column(c_out, x) * f.to(x.dtype)) * cond.mask


def guided_denoise(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor,
    cond: Conditions,
    config: EDMConfig,
    guidance_weight: float | Tensor,
    *,
    use_boundary: bool = False,
) -> Tensor:
    """Classifier-free guidance on the denoiser: ``(1 + w) D_cond - w D_uncond`` (one batched forward).

    A float ``w = 0`` runs the conditional pass only. ``w`` may be a float or (B,) per item.
    """
    if not isinstance(guidance_weight, Tensor) and guidance_weight == 0.0:
        return edm_denoise(denoiser, x, sigma, cond, config, use_boundary=use_boundary)
    batch = x.shape[0]
    drop = torch.cat([torch.zeros(batch, dtype=torch.bool), torch.ones(batch, dtype=torch.bool)])
    both = edm_denoise(
        denoiser,
        torch.cat([x, x]),
        torch.cat([sigma, sigma]),
        cond.doubled(),
        config,
        use_boundary=use_boundary,
        drop_cond=drop.to(x.device),
    )
    w = _column(guidance_weight, x) if isinstance(guidance_weight, Tensor) else guidance_weight
    return (1.0 + w) * both[:batch] - w * both[batch:]


class HeunSampler:
    """Karras et al. 2022, Algorithm 1 (deterministic, S_churn = 0): Heun's 2nd-order ODE solver.

    The probability-flow ODE is ``dx/dsigma = (x - D(x, sigma)) / sigma`` (eq. 1 with sigma(t) = t).

    Args:
        config: the noise family.
    """

    name = "edm"

    def __init__(self, config: EDMConfig) -> None:
        self.config = config

    def sigmas(self, num_steps: int, sigma_start: float | None = None) -> list[float]:
        """``num_steps + 1`` descending levels ending at 0 (:func:`karras_sigmas`)."""
        return karras_sigmas(num_steps, self.config, sigma_start)

    @staticmethod
    def evaluations(num_steps: int) -> int:
        """Network evaluations of N steps: 2N - 1 (the step to sigma = 0 is a plain Euler step)."""
        return 2 * num_steps - 1

    def step(
        self, denoise: DenoiseFn, sigma: float | Tensor, sigma_next: float | Tensor, sample: Tensor
    ) -> Tensor:
        """One step from ``sigma`` to ``sigma_next`` < sigma; ``denoise`` is called once or twice.

        ``sigma`` and ``sigma_next`` are floats or (B,) per item (the consistency trainer's);
        ``sigma_next`` must be 0 for every item or for none.

        Algorithm 1, lines 5-8: ``d = (x - D(x, s)) / s``, ``x' = x + (s' - s) d``; unless s' = 0,
        ``d' = (x' - D(x', s')) / s'`` and ``x' = x + (s' - s) (d + d') / 2``.
        """
        batch = sample.shape[0]
        level = _levels(sigma, batch)
        level_next = _levels(sigma_next, batch)
        s, s_next = _column(level, sample), _column(level_next, sample)
        d = (sample - denoise(sample, level)) / s
        euler = sample + (s_next - s) * d
        if bool((level_next == 0).all()):
            return euler
        if bool((level_next == 0).any()):
            raise ValueError("sigma_next must be 0 for every item or for none")
        d_next = (euler - denoise(euler, level_next)) / s_next
        return sample + (s_next - s) * 0.5 * (d + d_next)


def _levels(sigma: float | Tensor, batch: int) -> Tensor:
    if isinstance(sigma, Tensor):
        return sigma.detach().to("cpu", torch.float64).reshape(-1).expand(batch)
    return torch.full((batch,), float(sigma), dtype=torch.float64)
