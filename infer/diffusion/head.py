"""The diffusion head of a voice model: denoiser weights plus everything needed to sample with them.

A model folder may hold ``diffusion_teacher.pt`` (the latent diffusion model, for the DDPM and DDIM
samplers) and ``diffusion_lcm.pt`` (its distilled latent consistency model, for the LCM sampler).
Each file is a plain dict (tensors, numbers, strings, lists, dicts) and loads with
``torch.load(weights_only=True)``::

    {"format": "timbre-diffusion-head-1", "kind": "teacher" | "lcm",
     "denoiser": DenoiserConfig dict, "schedule": NoiseScheduleConfig dict,
     "consistency": ConsistencyConfig dict | None, "latent_scale": float,
     "state_dict": {name: tensor}, "metadata": {plain data}}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from infer.diffusion.denoiser import Denoiser, DenoiserConfig
from infer.diffusion.schedulers import ConsistencyConfig, NoiseSchedule, NoiseScheduleConfig
from infer.errors import ModelLoadError, TimbreError
from infer.fsutil import atomic_torch_save
from infer.nn.configs import ConfigError
from infer.options import HEAD_KINDS, LCM_HEAD, SAMPLERS, TEACHER_HEAD, diffusion_sampler_names
from infer.safeload import load_checkpoint

__all__ = [
    "HEAD_FILENAMES",
    "HEAD_FORMAT",
    "LCM_FILENAME",
    "TEACHER_FILENAME",
    "DiffusionHead",
    "DiffusionHeadError",
    "head_kind_for_sampler",
    "load_head",
    "load_head_for_sampler",
]

log = logging.getLogger(__name__)

HEAD_FORMAT = "timbre-diffusion-head-1"
TEACHER_FILENAME = "diffusion_teacher.pt"
LCM_FILENAME = "diffusion_lcm.pt"
HEAD_FILENAMES = {TEACHER_HEAD: TEACHER_FILENAME, LCM_HEAD: LCM_FILENAME}
_TOP_KEYS = frozenset(
    {"format", "kind", "denoiser", "schedule", "consistency", "latent_scale", "state_dict", "metadata"}
)


class DiffusionHeadError(TimbreError):
    """A diffusion head is missing, does not fit the voice model, or does not fit the chosen sampler."""


def head_kind_for_sampler(sampler: str) -> str:
    """The head kind a diffusion sampler needs (the sampler table's ``head_kind``)."""
    spec = SAMPLERS.get(sampler)
    if spec is None or not spec.head_kind:
        raise DiffusionHeadError(
            f"unknown diffusion sampler {sampler!r}; choose one of {', '.join(diffusion_sampler_names())}"
        )
    return spec.head_kind


def _is_plain(value: Any, depth: int = 0) -> bool:
    if depth > 8:
        return False
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


@dataclass(frozen=True, eq=False)
class DiffusionHead:
    """A trained denoiser with its schedule, latent scale and (for LCM) consistency settings.

    Attributes:
        kind: ``'teacher'`` (DDPM/DDIM with classifier-free guidance) or ``'lcm'`` (distilled student,
            guidance weight as a network input).
        denoiser_config: the network's sizes (``use_w_embedding`` is True exactly for ``'lcm'``).
        schedule_config: the teacher's noise schedule.
        state_dict: the denoiser's weights (float32 or float16 tensors).
        latent_scale: multiply VITS latents by this before diffusion (1 / std of z0 over the training set).
        consistency: LCM distillation settings (skip interval, guidance range); None for a teacher.
        metadata: plain data (training steps, source model name...).
    """

    kind: str
    denoiser_config: DenoiserConfig
    schedule_config: NoiseScheduleConfig
    state_dict: dict[str, Tensor]
    latent_scale: float
    consistency: ConsistencyConfig | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ConfigError(f"DiffusionHead.kind must be one of {HEAD_KINDS}, got {self.kind!r}")
        is_lcm = self.kind == LCM_HEAD
        if self.denoiser_config.use_w_embedding != is_lcm:
            raise ConfigError(f"a {self.kind} head needs use_w_embedding={is_lcm} in its denoiser config")
        if (self.consistency is not None) != is_lcm:
            raise ConfigError("an 'lcm' head needs a ConsistencyConfig and a 'teacher' head must have none")
        T = self.schedule_config.num_train_timesteps
        if self.consistency is not None and T % self.consistency.skip_interval:
            raise ConfigError(
                f"skip interval {self.consistency.skip_interval} does not divide "
                f"T = {self.schedule_config.num_train_timesteps}"
            )
        scale = self.latent_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
            raise ConfigError(f"DiffusionHead.latent_scale must be a positive finite number, got {scale!r}")
        object.__setattr__(self, "latent_scale", float(scale))
        if not isinstance(self.metadata, dict) or not _is_plain(self.metadata):
            raise ConfigError(
                "DiffusionHead.metadata must be a dict of plain data "
                "(str keys; str, number, bool, None, list or dict values)"
            )

    @property
    def filename(self) -> str:
        """The file name this head takes in a model folder."""
        return HEAD_FILENAMES[self.kind]

    def schedule(self) -> NoiseSchedule:
        """The precomputed noise schedule."""
        return NoiseSchedule(self.schedule_config)

    def build_denoiser(self, device: torch.device | str | None = None) -> Denoiser:
        """A float32 :class:`Denoiser` with these weights (strict), in eval mode, on ``device``."""
        model = Denoiser(self.denoiser_config)
        try:
            model.load_state_dict({k: v.float() for k, v in self.state_dict.items()}, strict=True)
        except RuntimeError as exc:
            raise ModelLoadError(f"the diffusion head's weights do not fit its config: {exc}") from exc
        model.eval().requires_grad_(False)
        return model.to(device) if device is not None else model

    def check_compatible(self, *, latent_channels: int, content_dim: int, gin_channels: int) -> None:
        """Raise :class:`DiffusionHeadError` unless the head fits a synthesizer of these sizes."""
        c = self.denoiser_config
        wanted = {
            "latent_channels": latent_channels,
            "content_dim": content_dim,
            "gin_channels": gin_channels,
        }
        have = {
            "latent_channels": c.latent_channels,
            "content_dim": c.content_dim,
            "gin_channels": c.gin_channels,
        }
        if wanted != have:
            raise DiffusionHeadError(
                f"the diffusion head was trained for {have} but the voice model has {wanted}; "
                "retrain it with `python -m train diffusion` for this model"
            )

    def to_dict(self) -> dict[str, Any]:
        """The plain-data file layout (see the module docstring)."""
        return {
            "format": HEAD_FORMAT,
            "kind": self.kind,
            "denoiser": self.denoiser_config.to_dict(),
            "schedule": self.schedule_config.to_dict(),
            "consistency": None if self.consistency is None else self.consistency.to_dict(),
            "latent_scale": self.latent_scale,
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.state_dict.items()},
            "metadata": dict(self.metadata),
        }

    def save(self, path: str | Path) -> Path:
        """Write the head atomically to ``path`` (a file) and return it."""
        path = Path(path)
        atomic_torch_save(self.to_dict(), path)
        log.info("saved %s diffusion head to %s", self.kind, path)
        return path

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "diffusion head") -> DiffusionHead:
        """Inverse of :meth:`to_dict`; raises :class:`ModelLoadError` for anything that does not fit."""
        if not isinstance(data, Mapping) or data.get("format") != HEAD_FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ModelLoadError(
                f"{source}: not a Timbre diffusion head (format {found!r}, expected {HEAD_FORMAT!r})"
            )
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise ModelLoadError(f"{source}: unknown keys {unknown}; the file may come from a newer Timbre")
        state = data.get("state_dict")
        if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
        ):
            raise ModelLoadError(f"{source}: 'state_dict' must map names to tensors")
        try:
            consistency = data.get("consistency")
            head = cls(
                kind=data.get("kind"),
                denoiser_config=DenoiserConfig.from_dict(data.get("denoiser", {})),
                schedule_config=NoiseScheduleConfig.from_dict(data.get("schedule", {})),
                state_dict=dict(state),
                latent_scale=data.get("latent_scale"),
                consistency=None if consistency is None else ConsistencyConfig.from_dict(consistency),
                metadata=dict(data.get("metadata") or {}),
            )
        except (ConfigError, TypeError) as exc:
            raise ModelLoadError(f"{source}: {exc}") from exc
        head._check_state_shapes(source)
        return head

    def _check_state_shapes(self, source: str) -> None:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in Denoiser(self.denoiser_config).state_dict().items()}
        found = {k: tuple(v.shape) for k, v in self.state_dict.items()}
        missing = sorted(set(expected) - set(found))
        unexpected = sorted(set(found) - set(expected))
        wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        if missing or unexpected or wrong:
            raise ModelLoadError(
                f"{source}: weights do not fit the stored denoiser config (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}); the file is damaged or was edited"
            )


def load_head(path: str | Path) -> DiffusionHead:
    """Read a diffusion head file as data (``weights_only``), strictly validated."""
    path = Path(path)
    return DiffusionHead.from_dict(load_checkpoint(path), source=path.name)


def load_head_for_sampler(model_dir: str | Path, sampler: str) -> DiffusionHead:
    """The head in ``model_dir`` that ``sampler`` (``'ddpm'``, ``'ddim'``, ``'lcm'``) needs.

    Raises:
        DiffusionHeadError: the folder has no such head; the message says which stage makes it.
    """
    kind = head_kind_for_sampler(sampler)
    path = Path(model_dir) / HEAD_FILENAMES[kind]
    if not path.is_file():
        other = Path(model_dir) / HEAD_FILENAMES[LCM_HEAD if kind == TEACHER_HEAD else TEACHER_HEAD]
        if kind == LCM_HEAD:
            hint = "train it with `python -m train distill`" + (
                ", or choose the ddpm/ddim sampler (this model has a teacher head)" if other.is_file() else ""
            )
        else:
            hint = "train it with `python -m train diffusion`" + (
                ", or choose the lcm sampler (this model has an LCM head)" if other.is_file() else ""
            )
        raise DiffusionHeadError(
            f"this voice model has no diffusion head for the {sampler} sampler ({path.name} is missing in "
            f"{Path(model_dir)}); {hint}, or set the sampler to 'off'"
        )
    head = load_head(path)
    if head.kind != kind:
        raise DiffusionHeadError(
            f"{path.name} holds a {head.kind} head, but the {sampler} sampler needs a {kind} head"
        )
    return head
