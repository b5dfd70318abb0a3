"""The diffusion heads of a voice model: denoiser weights plus everything needed to sample with them.

A model folder may hold one file per head kind (the table :data:`infer.options.HEADS`):
``diffusion_teacher.pt`` (the latent diffusion model: eps-parameterised for the DDPM and DDIM
samplers, or EDM-parameterised for the Heun sampler), ``diffusion_lcm.pt`` (latent consistency
student of an eps teacher), ``diffusion_cm.pt`` (consistency student of an EDM teacher) and
``diffusion_acdd.pt`` (adversarial one-step student of an EDM teacher). Each file is a plain dict
(tensors, numbers, strings, lists, dicts) and loads with ``torch.load(weights_only=True)``::

    {"format": "timbre-diffusion-head-1", "kind": "teacher" | "lcm" | "cm" | "acdd",
     "parameterisation": "eps" | "edm" (absent in older files: "eps"),
     "denoiser": DenoiserConfig dict, "schedule": NoiseScheduleConfig dict | None (EDM),
     "edm": EDMConfig dict | None (eps), "consistency": ConsistencyConfig dict | None,
     "latent_scale": float, "state_dict": {name: tensor}, "metadata": {plain data}}
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
from infer.diffusion.edm import EDMConfig
from infer.diffusion.schedulers import ConsistencyConfig, NoiseSchedule, NoiseScheduleConfig
from infer.errors import ModelLoadError, TimbreError
from infer.fsutil import atomic_torch_save
from infer.nn.configs import ConfigError
from infer.options import (
    EDM_PARAMETERISATION,
    EPS_PARAMETERISATION,
    HEAD_KINDS,
    HEADS,
    LCM_HEAD,
    PARAMETERISATIONS,
    SAMPLERS,
    TEACHER_HEAD,
    diffusion_sampler_names,
)
from infer.safeload import load_checkpoint

__all__ = [
    "HEAD_FILENAMES",
    "HEAD_FORMAT",
    "LCM_FILENAME",
    "TEACHER_FILENAME",
    "DiffusionHead",
    "DiffusionHeadError",
    "check_head_file",
    "check_head_for_sampler",
    "head_kind_for_sampler",
    "load_head",
    "load_head_for_sampler",
]

log = logging.getLogger(__name__)

HEAD_FORMAT = "timbre-diffusion-head-1"
HEAD_FILENAMES = {kind: spec.filename for kind, spec in HEADS.items()}
TEACHER_FILENAME = HEAD_FILENAMES[TEACHER_HEAD]
LCM_FILENAME = HEAD_FILENAMES[LCM_HEAD]
_TOP_KEYS = frozenset(
    {
        "format",
        "kind",
        "parameterisation",
        "denoiser",
        "schedule",
        "edm",
        "consistency",
        "latent_scale",
        "state_dict",
        "metadata",
    }
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
        schedule_config: the eps teacher's noise schedule; None for the EDM family.
        state_dict: the denoiser's weights (float32 or float16 tensors).
        latent_scale: multiply VITS latents by this before diffusion (1 / std of z0 over the training set).
        consistency: LCM distillation settings (skip interval, guidance range); None for other kinds.
        metadata: plain data (training steps, source model name...).
        parameterisation: ``'eps'`` (DDPM noise prediction) or ``'edm'`` (preconditioned denoiser).
        edm: the EDM noise family; None for eps heads.
    """

    kind: str
    denoiser_config: DenoiserConfig
    schedule_config: NoiseScheduleConfig | None
    state_dict: dict[str, Tensor]
    latent_scale: float
    consistency: ConsistencyConfig | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    parameterisation: str = EPS_PARAMETERISATION
    edm: EDMConfig | None = None

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ConfigError(f"DiffusionHead.kind must be one of {HEAD_KINDS}, got {self.kind!r}")
        if self.parameterisation not in PARAMETERISATIONS:
            raise ConfigError(
                f"DiffusionHead.parameterisation must be one of {tuple(PARAMETERISATIONS)}, "
                f"got {self.parameterisation!r}"
            )
        wanted = HEADS[self.kind].parameterisation
        if wanted and wanted != self.parameterisation:
            raise ConfigError(f"a {self.kind} head is {wanted}-parameterised, not {self.parameterisation}")
        is_edm = self.parameterisation == EDM_PARAMETERISATION
        if (self.edm is not None) != is_edm or (self.schedule_config is None) != is_edm:
            raise ConfigError("an EDM head needs an EDMConfig and no noise schedule; an eps head the reverse")
        is_lcm = self.kind == LCM_HEAD
        if self.denoiser_config.use_w_embedding != is_lcm:
            raise ConfigError(f"a {self.kind} head needs use_w_embedding={is_lcm} in its denoiser config")
        if (self.consistency is not None) != is_lcm:
            raise ConfigError("an 'lcm' head needs a ConsistencyConfig and other heads must have none")
        T = self.schedule_config.num_train_timesteps if self.schedule_config is not None else 0
        if self.consistency is not None and T % self.consistency.skip_interval:
            raise ConfigError(f"skip interval {self.consistency.skip_interval} does not divide T = {T}")
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
        """The precomputed noise schedule of an eps head."""
        if self.schedule_config is None:
            raise DiffusionHeadError(f"this {self.kind} head is EDM-parameterised; it has no DDPM schedule")
        return NoiseSchedule(self.schedule_config)

    def edm_config(self) -> EDMConfig:
        """The EDM noise family of an EDM head."""
        if self.edm is None:
            raise DiffusionHeadError(f"this {self.kind} head is eps-parameterised; it has no EDM settings")
        return self.edm

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
            "parameterisation": self.parameterisation,
            "denoiser": self.denoiser_config.to_dict(),
            "schedule": None if self.schedule_config is None else self.schedule_config.to_dict(),
            "edm": None if self.edm is None else self.edm.to_dict(),
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
            schedule = data.get("schedule", {})
            edm = data.get("edm")
            head = cls(
                kind=data.get("kind"),
                parameterisation=data.get("parameterisation", EPS_PARAMETERISATION),
                edm=None if edm is None else EDMConfig.from_dict(edm),
                denoiser_config=DenoiserConfig.from_dict(data.get("denoiser", {})),
                schedule_config=None if schedule is None else NoiseScheduleConfig.from_dict(schedule),
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


def _read_parameterisation(path: Path) -> str | None:
    """The parameterisation of the head file at ``path``; None when it does not load."""
    try:
        return load_head(path).parameterisation
    except TimbreError:
        return None


def _missing_head_hint(model_dir: Path, kind: str, sampler: str) -> str:
    """What to do about a missing head: the stage that trains it, and samplers the folder can run."""
    stage = HEADS[kind].stage
    wanted = SAMPLERS[sampler].parameterisation or HEADS[kind].parameterisation
    flag = f" --diffusion-parameterisation {wanted}" if kind == TEACHER_HEAD and wanted else ""
    usable = []
    teacher_path = model_dir / HEAD_FILENAMES[TEACHER_HEAD]
    teacher = _read_parameterisation(teacher_path) if teacher_path.is_file() else None
    for name, spec in SAMPLERS.items():
        if not spec.head_kind or name == sampler:
            continue
        if not (model_dir / HEAD_FILENAMES[spec.head_kind]).is_file():
            continue
        if spec.head_kind == TEACHER_HEAD and spec.parameterisation not in ("", teacher):
            continue
        usable.append(name)
    hint = f"train it with `python -m train {stage}{flag}`"
    if usable:
        hint += f", or choose a sampler this model has a head for ({', '.join(usable)})"
    return hint


def load_head_for_sampler(model_dir: str | Path, sampler: str) -> DiffusionHead:
    """The head in ``model_dir`` that ``sampler`` (a diffusion sampler of the table) needs.

    Raises:
        DiffusionHeadError: the folder has no such head, or its teacher has the other
            parameterisation; the message says which stage makes the right one.
    """
    kind = head_kind_for_sampler(sampler)
    model_dir = Path(model_dir)
    path = model_dir / HEAD_FILENAMES[kind]
    if not path.is_file():
        raise DiffusionHeadError(
            f"this voice model has no diffusion head for the {sampler} sampler ({path.name} is missing in "
            f"{model_dir}); {_missing_head_hint(model_dir, kind, sampler)}, or set the sampler to 'off'"
        )
    head = load_head(path)
    check_head_for_sampler(head, sampler, source=path.name)
    return head


def check_head_for_sampler(head: DiffusionHead, sampler: str, *, source: str = "the head") -> None:
    """Raise :class:`DiffusionHeadError` unless ``head`` has the kind and parameterisation of ``sampler``."""
    kind = head_kind_for_sampler(sampler)
    if head.kind != kind:
        served = [
            name
            for name, spec in SAMPLERS.items()
            if spec.head_kind == head.kind and spec.parameterisation in ("", head.parameterisation)
        ]
        raise DiffusionHeadError(
            f"{source} holds a {head.kind} head, but the {sampler} sampler needs a {kind} head "
            f"({HEAD_FILENAMES[kind]}, made by `python -m train {HEADS[kind].stage}`); "
            f"choose the {' or '.join(served)} sampler for this head"
        )
    wanted = SAMPLERS[sampler].parameterisation
    if wanted and head.parameterisation != wanted:
        others = [
            name
            for name, spec in SAMPLERS.items()
            if spec.head_kind == kind and spec.parameterisation == head.parameterisation
        ]
        raise DiffusionHeadError(
            f"the {sampler} sampler needs a {wanted}-parameterised teacher, but this voice's teacher is "
            f"{head.parameterisation}-parameterised; choose {' or '.join(others)}, or retrain it with "
            f"`python -m train diffusion --diffusion-parameterisation {wanted}`"
        )


def check_head_file(path: str | Path, *, latent_channels: int, content_dim: int, gin_channels: int) -> str:
    """Validate a head file of an imported model (format, kind, weights, widths); returns its kind.

    Raises:
        ModelLoadError: the file is not a head, or its name does not match its kind.
        DiffusionHeadError: it was trained for a synthesizer of other sizes.
    """
    path = Path(path)
    head = load_head(path)
    if head.filename != path.name:
        raise ModelLoadError(f"{path.name} holds a {head.kind} head, which belongs in {head.filename}")
    head.check_compatible(latent_channels=latent_channels, content_dim=content_dim, gin_channels=gin_channels)
    return head.kind
