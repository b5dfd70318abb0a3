"""Noise schedule and the DDPM, DDIM and LCM samplers behind one step interface.

Timestep convention (Ho et al. 2020 index their chain t = 1..T with x_0 the data): tables have
``T + 1`` entries and index 0 is the clean state, ``alpha_bar(0) = 1`` and ``beta(0) = 0``, so
noising at ``t = 0`` returns ``z0`` exactly. Training draws ``t`` from ``1..T``; every sampler
walks a descending list of timesteps that ends at 0, and a step maps ``t -> t_prev``.

Every sampler has the same two calls:

* ``timesteps(num_steps, start_t=None) -> list[int]``: ``num_steps + 1`` descending values, the
  first ``<= start_t`` (default ``T``) and the last 0;
* ``step(model_output, t, t_prev, sample, generator=None) -> StepOutput`` where ``model_output``
  is the network's noise prediction eps (already guided; guidance lives in the refine loop).

``t`` and ``t_prev`` are ints (one timestep for the whole batch) or (B,) int64 tensors (one per
item, as the distillation trainer uses them).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from infer.nn.configs import ConfigError, check_config_keys

__all__ = [
    "BETA_SCHEDULES",
    "ConsistencyConfig",
    "DDIMSampler",
    "DDPMSampler",
    "LCMSampler",
    "NoiseSchedule",
    "NoiseScheduleConfig",
    "Sampler",
    "StepOutput",
    "consistency_scalings",
    "make_sampler",
]

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
COSINE_OFFSET = 0.008  # s in Nichol & Dhariwal 2021, eq. 17
COSINE_MAX_BETA = 0.999  # their clipping of beta_t near t = T
Timestep = int | Tensor


def _check_number(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{owner}.{name} must be a number, got {value!r}")
    return float(value)


def _check_int(owner: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{owner}.{name} must be an int, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{owner}.{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class NoiseScheduleConfig:
    """The forward process q(z_t | z_0) of the teacher.

    Attributes:
        num_train_timesteps: T, the number of noising steps.
        beta_schedule: ``'linear'`` (Ho et al.), ``'scaled_linear'`` (linear in sqrt(beta), Stable
            Diffusion) or ``'cosine'`` (Nichol & Dhariwal; ignores beta_start/beta_end).
        beta_start: beta_1.
        beta_end: beta_T.
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_int(name, "num_train_timesteps", self.num_train_timesteps, 2)
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(
                f"{name}.beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}"
            )
        start = _check_number(name, "beta_start", self.beta_start)
        end = _check_number(name, "beta_end", self.beta_end)
        if not 0.0 < start <= end < 1.0:
            raise ConfigError(f"{name}: need 0 < beta_start <= beta_end < 1, got {start}, {end}")
        object.__setattr__(self, "beta_start", start)
        object.__setattr__(self, "beta_end", end)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoiseScheduleConfig:
        """Build from a plain dict; unknown keys are a :class:`ConfigError`."""
        check_config_keys(cls, data, require_all=False)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field."""
        return asdict(self)


@dataclass(frozen=True)
class ConsistencyConfig:
    """Settings shared by latent consistency distillation and LCM sampling.

    Attributes:
        skip_interval: k, the skipping-step interval of LCD (Luo et al. 2023, Sec. 4.3); the LCM
            sampler picks its timesteps from the grid ``k, 2k, ..., T``. Must divide T.
        sigma_data: sigma_data of the boundary-condition scalings.
        timestep_scaling: t is multiplied by this before the scalings (the LCM release's
            ``t / 0.1``, i.e. 10).
        guidance_min: w_min of the guidance weights seen in distillation.
        guidance_max: w_max; the distilled network is only trained for w in [w_min, w_max].
    """

    skip_interval: int = 20
    sigma_data: float = 0.5
    timestep_scaling: float = 10.0
    guidance_min: float = 0.0
    guidance_max: float = 3.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_int(name, "skip_interval", self.skip_interval, 1)
        for key in ("sigma_data", "timestep_scaling", "guidance_min", "guidance_max"):
            object.__setattr__(self, key, _check_number(name, key, getattr(self, key)))
        if self.sigma_data <= 0 or self.timestep_scaling <= 0:
            raise ConfigError(f"{name}: sigma_data and timestep_scaling must be positive")
        if not 0.0 <= self.guidance_min <= self.guidance_max:
            raise ConfigError(
                f"{name}: need 0 <= guidance_min <= guidance_max, "
                f"got {self.guidance_min}, {self.guidance_max}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConsistencyConfig:
        """Build from a plain dict; unknown keys are a :class:`ConfigError`."""
        check_config_keys(cls, data, require_all=False)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field."""
        return asdict(self)


def _betas(config: NoiseScheduleConfig) -> Tensor:
    """beta_1..beta_T as float64 (T,)."""
    steps = config.num_train_timesteps
    if config.beta_schedule == "linear":
        return torch.linspace(config.beta_start, config.beta_end, steps, dtype=torch.float64)
    if config.beta_schedule == "scaled_linear":
        root = torch.linspace(
            math.sqrt(config.beta_start), math.sqrt(config.beta_end), steps, dtype=torch.float64
        )
        return root**2
    # Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2),
    # and beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), clipped at 0.999.
    grid = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((grid + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return torch.clamp(1 - alpha_bar[1:] / alpha_bar[:-1], max=COSINE_MAX_BETA)


class NoiseSchedule:
    """Precomputed tables of a :class:`NoiseScheduleConfig`, indexed by t = 0..T (0 = clean).

    Attributes:
        config: the config.
        num_train_timesteps: T.
        betas: (T+1,) float64, ``betas[0] = 0``.
        alphas: (T+1,) float64, ``1 - betas``.
        alphas_cumprod: (T+1,) float64 alpha_bar, ``alphas_cumprod[0] = 1``.
    """

    def __init__(self, config: NoiseScheduleConfig) -> None:
        self.config = config
        self.num_train_timesteps = config.num_train_timesteps
        betas = torch.cat([torch.zeros(1, dtype=torch.float64), _betas(config)])
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    def _check_t(self, t: Timestep) -> None:
        low, high = (int(t.min()), int(t.max())) if isinstance(t, Tensor) else (t, t)
        if low < 0 or high > self.num_train_timesteps:
            raise ValueError(f"timesteps must lie in 0..{self.num_train_timesteps}, got {low}..{high}")

    def coefficient(self, table: Tensor, t: Timestep, like: Tensor) -> Tensor:
        """``table[t]`` shaped (1, 1, ...) or (B, 1, ...) against ``like``, in its dtype and device."""
        self._check_t(t)
        index = t.detach().to("cpu", torch.long).reshape(-1) if isinstance(t, Tensor) else torch.tensor([t])
        values = table[index]
        return values.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def alpha_bar(self, t: Timestep, like: Tensor) -> Tensor:
        """alpha_bar(t) broadcastable against ``like``."""
        return self.coefficient(self.alphas_cumprod, t, like)

    def add_noise(self, z0: Tensor, noise: Tensor, t: Timestep) -> Tensor:
        """Sample q(z_t | z_0): ``sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) noise`` (Ho et al. eq. 4).

        Args:
            z0: (B, C, T) clean latent.
            noise: (B, C, T) standard normal.
            t: int or (B,) int64 timesteps in 0..T; t = 0 returns ``z0``.
        """
        a = self.coefficient(self.alphas_cumprod, t, z0)
        return a.sqrt() * z0 + (1.0 - a).sqrt() * noise

    def predict_z0(self, sample: Tensor, eps: Tensor, t: Timestep) -> Tensor:
        """z0 implied by eps: ``(z_t - sqrt(1 - a_t) eps) / sqrt(a_t)`` (Ho et al. eq. 4 solved for z0)."""
        a = self.coefficient(self.alphas_cumprod, t, sample)
        return (sample - (1.0 - a).sqrt() * eps) / a.sqrt()

    def predict_eps(self, sample: Tensor, z0: Tensor, t: Timestep) -> Tensor:
        """eps implied by a z0 estimate: ``(z_t - sqrt(a_t) z0) / sqrt(1 - a_t)``; t must be > 0."""
        a = self.coefficient(self.alphas_cumprod, t, sample)
        return (sample - a.sqrt() * z0) / (1.0 - a).sqrt()


def consistency_scalings(
    t: Timestep, *, sigma_data: float, timestep_scaling: float, like: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Boundary-condition scalings of the consistency function f = c_skip(t) z + c_out(t) F.

    Song et al. 2023 (Consistency Models, Sec. 3 and Appendix C) with the LCM release's discrete time
    argument ``s = t * timestep_scaling``: ``c_skip = sigma_data^2 / (s^2 + sigma_data^2)`` and
    ``c_out = s / sqrt(s^2 + sigma_data^2)``, so c_skip(0) = 1 and c_out(0) = 0 exactly.

    Returns:
        ``(c_skip, c_out)`` shaped like ``t`` (float64 for an int), or broadcastable against
        ``like`` (in its dtype/device) when given.
    """
    s = torch.as_tensor(t, dtype=torch.float64).reshape(-1) * timestep_scaling
    c_skip = sigma_data**2 / (s**2 + sigma_data**2)
    c_out = s / torch.sqrt(s**2 + sigma_data**2)
    if like is None:
        if not isinstance(t, Tensor):
            return c_skip[0], c_out[0]
        return c_skip, c_out
    shape = (-1, *([1] * (like.dim() - 1)))
    return (
        c_skip.to(device=like.device, dtype=like.dtype).view(shape),
        c_out.to(device=like.device, dtype=like.dtype).view(shape),
    )


@dataclass(frozen=True)
class StepOutput:
    """What one sampler step returns.

    Attributes:
        prev_sample: (B, C, T) the sample at ``t_prev``.
        pred_z0: (B, C, T) the step's estimate of the clean latent.
    """

    prev_sample: Tensor
    pred_z0: Tensor


def _noise_like(sample: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)


def _is_positive(t: Timestep) -> bool:
    """True when any timestep is above 0 (the step then draws fresh noise)."""
    return bool((t > 0).any()) if isinstance(t, Tensor) else t > 0


class Sampler(ABC):
    """A reverse-process sampler over a :class:`NoiseSchedule`; see the module docstring."""

    name: ClassVar[str]

    def __init__(self, schedule: NoiseSchedule) -> None:
        self.schedule = schedule

    def _start(self, num_steps: int, start_t: int | None) -> int:
        T = self.schedule.num_train_timesteps
        start = T if start_t is None else start_t
        if not 1 <= start <= T:
            raise ValueError(f"start_t must lie in 1..{T}, got {start}")
        if not 1 <= num_steps <= start:
            raise ValueError(
                f"{self.name}: steps must lie in 1..{start} when starting at t = {start}, got {num_steps}"
            )
        return start

    def timesteps(self, num_steps: int, start_t: int | None = None) -> list[int]:
        """``num_steps + 1`` descending timesteps from ``start_t`` (default T) to 0, evenly spaced."""
        start = self._start(num_steps, start_t)
        return [start * i // num_steps for i in range(num_steps, -1, -1)]

    @abstractmethod
    def step(
        self,
        model_output: Tensor,
        t: Timestep,
        t_prev: Timestep,
        sample: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """Move ``sample`` (B, C, T) from ``t`` to ``t_prev`` < t given eps ``model_output`` (B, C, T)."""


class DDPMSampler(Sampler):
    """Ancestral sampling from the posterior q(z_{t'} | z_t, z0_hat), for any subsequence of steps.

    With every step (N = T) this is Ho et al.'s Algorithm 2 / eq. 11 with sigma_t^2 = beta_tilde_t.
    For a sparser subsequence t -> t' the step uses the chain's effective beta
    ``1 - alpha_bar_t / alpha_bar_t'``.
    """

    name = "ddpm"

    def step(
        self,
        model_output: Tensor,
        t: Timestep,
        t_prev: Timestep,
        sample: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """One ancestral step; draws noise from ``generator`` unless ``t_prev`` is 0 everywhere."""
        sched = self.schedule
        a_t = sched.alpha_bar(t, sample)
        a_prev = sched.alpha_bar(t_prev, sample)
        beta = 1.0 - a_t / a_prev
        pred_z0 = sched.predict_z0(sample, model_output, t)
        # Ho et al. eq. 7: mean = sqrt(a_prev) beta / (1 - a_t) z0
        #                       + sqrt(1 - beta) (1 - a_prev) / (1 - a_t) z_t,
        # variance beta_tilde = (1 - a_prev) / (1 - a_t) beta (0 when t_prev = 0).
        mean = (a_prev.sqrt() * beta / (1.0 - a_t)) * pred_z0 + (
            (1.0 - beta).sqrt() * (1.0 - a_prev) / (1.0 - a_t)
        ) * sample
        if _is_positive(t_prev):
            variance = (1.0 - a_prev) / (1.0 - a_t) * beta
            mean = mean + variance.clamp(min=0.0).sqrt() * _noise_like(sample, generator)
        return StepOutput(prev_sample=mean, pred_z0=pred_z0)


class DDIMSampler(Sampler):
    """DDIM (Song, Meng & Ermon 2021); deterministic with ``eta = 0`` (the default).

    Args:
        schedule: the noise schedule.
        eta: 0 gives the deterministic DDIM, 1 a DDPM-like stochastic step (their eq. 16).
    """

    name = "ddim"

    def __init__(self, schedule: NoiseSchedule, *, eta: float = 0.0) -> None:
        super().__init__(schedule)
        if eta < 0:
            raise ValueError(f"DDIM eta must be >= 0, got {eta}")
        self.eta = float(eta)

    def step(
        self,
        model_output: Tensor,
        t: Timestep,
        t_prev: Timestep,
        sample: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """One DDIM step; uses ``generator`` only when ``eta > 0``."""
        sched = self.schedule
        a_t = sched.alpha_bar(t, sample)
        a_prev = sched.alpha_bar(t_prev, sample)
        pred_z0 = sched.predict_z0(sample, model_output, t)
        # Song et al. eq. 12: z_{t'} = sqrt(a') z0_hat + sqrt(1 - a' - sigma^2) eps + sigma noise,
        # with eq. 16: sigma = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a').
        sigma = self.eta * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)).clamp(min=0.0).sqrt()
        direction = (1.0 - a_prev - sigma**2).clamp(min=0.0).sqrt() * model_output
        prev = a_prev.sqrt() * pred_z0 + direction
        if self.eta > 0 and _is_positive(t_prev):
            prev = prev + sigma * _noise_like(sample, generator)
        return StepOutput(prev_sample=prev, pred_z0=pred_z0)


class LCMSampler(Sampler):
    """Multistep latent consistency sampling (Luo et al. 2023, LCM Algorithm 3; LCM-SVC Algorithm 2).

    Each step evaluates the consistency function ``f(z_t, t) = c_skip(t) z_t + c_out(t) z0_hat``
    (LCM Sec. 4.2: z0_hat from the eps prediction) and, unless ``t_prev`` is 0, re-noises that
    estimate to ``t_prev`` with fresh noise.

    Args:
        schedule: the teacher's noise schedule.
        consistency: skipping interval and boundary-condition settings of the distillation.
    """

    name = "lcm"

    def __init__(self, schedule: NoiseSchedule, consistency: ConsistencyConfig) -> None:
        super().__init__(schedule)
        if schedule.num_train_timesteps % consistency.skip_interval:
            raise ConfigError(
                f"the LCM skip interval {consistency.skip_interval} must divide "
                f"T = {schedule.num_train_timesteps}"
            )
        self.consistency = consistency

    def grid(self) -> list[int]:
        """The distillation grid ``T, T - k, ..., k`` (descending)."""
        k = self.consistency.skip_interval
        return list(range(self.schedule.num_train_timesteps, 0, -k))

    def timesteps(self, num_steps: int, start_t: int | None = None) -> list[int]:
        """``num_steps`` grid points at or below ``start_t``, evenly spread from the top, then 0.

        When ``start_t`` lies below the smallest grid point, the smallest grid point is used.
        """
        T = self.schedule.num_train_timesteps
        start = T if start_t is None else start_t
        if not 1 <= start <= T:
            raise ValueError(f"start_t must lie in 1..{T}, got {start}")
        grid = [t for t in self.grid() if t <= start] or [self.consistency.skip_interval]
        if not 1 <= num_steps <= len(grid):
            raise ValueError(f"lcm: steps must lie in 1..{len(grid)} here, got {num_steps}")
        picked = [grid[i * len(grid) // num_steps] for i in range(num_steps)]
        return [*picked, 0]

    def scalings(self, t: Timestep, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(c_skip(t), c_out(t))`` broadcastable against ``like``."""
        c = self.consistency
        return consistency_scalings(
            t, sigma_data=c.sigma_data, timestep_scaling=c.timestep_scaling, like=like
        )

    def consistency_function(self, model_output: Tensor, t: Timestep, sample: Tensor) -> Tensor:
        """f(z_t, t) = c_skip(t) z_t + c_out(t) (z_t - sqrt(1 - a_t) eps) / sqrt(a_t), (B, C, T)."""
        c_skip, c_out = self.scalings(t, sample)
        return c_skip * sample + c_out * self.schedule.predict_z0(sample, model_output, t)

    def step(
        self,
        model_output: Tensor,
        t: Timestep,
        t_prev: Timestep,
        sample: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """Consistency estimate at ``t``, re-noised to ``t_prev`` (returned as is when t_prev is 0)."""
        denoised = self.consistency_function(model_output, t, sample)
        if not _is_positive(t_prev):
            return StepOutput(prev_sample=denoised, pred_z0=denoised)
        noisy = self.schedule.add_noise(denoised, _noise_like(sample, generator), t_prev)
        return StepOutput(prev_sample=noisy, pred_z0=denoised)


def make_sampler(name: str, schedule: NoiseSchedule, consistency: ConsistencyConfig | None = None) -> Sampler:
    """The sampler called ``name`` (``'ddpm'``, ``'ddim'`` or ``'lcm'``; LCM needs ``consistency``)."""
    if name == "ddpm":
        return DDPMSampler(schedule)
    if name == "ddim":
        return DDIMSampler(schedule)
    if name == "lcm":
        if consistency is None:
            raise ConfigError("the LCM sampler needs the distillation's ConsistencyConfig")
        return LCMSampler(schedule, consistency)
    raise ConfigError(f"unknown sampler {name!r}; choose 'ddpm', 'ddim' or 'lcm'")
