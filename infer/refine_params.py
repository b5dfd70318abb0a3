"""The user's choices for diffusion refinement (torch-free, so forms and CLIs can read its defaults)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from infer.configs import ConfigError, check_config_keys
from infer.options import REFINE_STARTS, SAMPLERS, diffusion_sampler_names, names

__all__ = ["RefineParams"]


@dataclass(frozen=True)
class RefineParams:
    """User choices for diffusion refinement.

    Attributes:
        sampler: a diffusion sampler of :data:`infer.options.SAMPLERS`: ``'ddpm'`` (ancestral),
            ``'ddim'`` (eta = 0), ``'lcm'``, ``'edm'`` (Heun), ``'cm'`` or ``'acdd'``.
        steps: network evaluations for LCM/CM (1..4), sampler steps for DDPM/DDIM (1..T; the
            shallow start caps them at ``strength * T``), Heun steps for EDM (2N - 1 evaluations),
            1 for ACDD.
        guidance_weight: w >= 0; 0 is the plain conditional prediction.
        start: ``'noise'`` or ``'shallow'``.
        strength: for ``'shallow'``, the fraction of T the VITS latent is noised to, in (0, 1].
        seed: seed of every noise draw; None draws a fresh seed.
    """

    sampler: str = "lcm"
    steps: int = 4
    guidance_weight: float = 0.0
    start: str = "noise"
    strength: float = 0.5
    seed: int | None = 0

    def __post_init__(self) -> None:
        samplers = diffusion_sampler_names()
        if self.sampler not in samplers:
            raise ConfigError(f"RefineParams.sampler must be one of {samplers}, got {self.sampler!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"RefineParams.steps must be a positive int, got {self.steps!r}")
        max_steps = SAMPLERS[self.sampler].max_steps
        if self.steps > max_steps:
            raise ConfigError(f"the {self.sampler} sampler takes 1 to {max_steps} steps, got {self.steps}")
        for name in ("guidance_weight", "strength"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"RefineParams.{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not self.guidance_weight >= 0.0:
            raise ConfigError(f"RefineParams.guidance_weight must be >= 0, got {self.guidance_weight}")
        if self.start not in REFINE_STARTS:
            raise ConfigError(f"RefineParams.start must be one of {names(REFINE_STARTS)}, got {self.start!r}")
        if not 0.0 < self.strength <= 1.0:
            raise ConfigError(f"RefineParams.strength must be in (0, 1], got {self.strength}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0
        ):
            raise ConfigError(f"RefineParams.seed must be a non-negative int or None, got {self.seed!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RefineParams:
        """Build from a plain dict; unknown keys are a :class:`ConfigError`."""
        check_config_keys(cls, data, require_all=False)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field."""
        return asdict(self)
