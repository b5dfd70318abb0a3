"""The typed knobs of a conversion and what it returns (torch-free but for the result's arrays)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infer.configs import check_config_keys
from infer.options import F0_METHODS, SAMPLER_OFF, names
from infer.refine_params import RefineParams

__all__ = ["ConversionResult", "ConvertParams", "PaddingConfig", "convert_params_from_form"]


@dataclass(frozen=True)
class PaddingConfig:
    """RVC's chunking constants in seconds (``x_pad``, ``x_query``, ``x_center``, ``x_max``)."""

    pad_s: int = 1
    query_s: int = 6
    center_s: int = 38
    max_s: int = 41

    @classmethod
    def cpu(cls) -> PaddingConfig:
        """RVC's values on the CPU or without half precision."""
        return cls(1, 6, 38, 41)

    @classmethod
    def gpu_half(cls) -> PaddingConfig:
        """RVC's values for fp16 on a GPU (longer chunks)."""
        return cls(3, 10, 60, 65)

    def __post_init__(self) -> None:
        if not (self.pad_s > 0 and 0 < self.query_s < self.center_s < self.max_s):
            raise ValueError(f"inconsistent padding config {self}")


@dataclass(frozen=True)
class ConvertParams:
    """Every knob of a conversion, with RVC's defaults.

    Attributes:
        pitch_shift_semitones: transpose of the source F0 (+12 = one octave up).
        f0_method: a name of :data:`infer.options.F0_METHODS`; None picks rmvpe when its weights
            are present, else fcpe.
        index_rate: share of retrieved index features blended into the content features.
        filter_radius: median filter on harvest F0 when >= 3 (RVC's semantics).
        rms_mix_rate: 1 keeps the output's loudness envelope, 0 imposes the input's.
        protect: unvoiced frames keep this share of the index-blended features (0.5 = off).
        output_sample_rate: resample the output to this rate; 0 keeps the model's rate.
        speaker_id: row of the speaker embedding for multi-speaker models.
        noise_scale: scale of the prior sample (RVC: 0.66666).
        seed: seed for the prior, NSF and diffusion noise; None draws fresh noise.
        padding: chunking constants; None picks RVC's CPU or GPU-fp16 values.
        refine: diffusion refinement of the decoder latent (LCM-SVC); None is RVC's own path
            (the VITS prior + flow). Its ``seed`` is replaced by one derived from ``seed``.
    """

    pitch_shift_semitones: float = 0.0
    f0_method: str | None = None
    index_rate: float = 0.75
    filter_radius: int = 3
    rms_mix_rate: float = 0.25
    protect: float = 0.33
    output_sample_rate: int = 0
    speaker_id: int = 0
    noise_scale: float = 0.66666
    seed: int | None = None
    padding: PaddingConfig | None = None
    refine: RefineParams | None = None

    def __post_init__(self) -> None:
        methods = names(F0_METHODS)
        checks = [
            (-48 <= self.pitch_shift_semitones <= 48, "pitch_shift_semitones must be within ±48"),
            (self.f0_method is None or self.f0_method in methods, f"f0_method must be one of {methods}"),
            (0.0 <= self.index_rate <= 1.0, "index_rate must be in [0, 1]"),
            (0 <= self.filter_radius <= 7, "filter_radius must be in [0, 7]"),
            (0.0 <= self.rms_mix_rate <= 1.0, "rms_mix_rate must be in [0, 1]"),
            (0.0 <= self.protect <= 0.5, "protect must be in [0, 0.5]"),
            (
                self.output_sample_rate == 0 or self.output_sample_rate >= 16000,
                "output_sample_rate must be 0 (model rate) or at least 16000",
            ),
            (self.speaker_id >= 0, "speaker_id must be >= 0"),
            (0.0 <= self.noise_scale <= 2.0, "noise_scale must be in [0, 2]"),
            (
                self.refine is None or isinstance(self.refine, RefineParams),
                "refine must be RefineParams or None",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message} (got {self})")

    @property
    def sampler(self) -> str:
        """The sampler name: ``'off'`` without refinement."""
        return self.refine.sampler if self.refine is not None else SAMPLER_OFF

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ConvertParams:
        """Build from a plain dict (``padding`` and ``refine`` as dicts), rejecting unknown keys."""
        check_config_keys(cls, values, require_all=False)
        values = dict(values)
        if isinstance(values.get("padding"), Mapping):
            values["padding"] = PaddingConfig(**values["padding"])
        if isinstance(values.get("refine"), Mapping):
            values["refine"] = RefineParams.from_dict(values["refine"])
        return cls(**values)


@dataclass
class ConversionResult:
    """Output audio (float32 mono, peak at most 0.99) and what happened on the way."""

    audio: np.ndarray
    sample_rate: int
    f0_source_hz: np.ndarray
    f0_target_hz: np.ndarray
    f0_method: str
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    precision: str = "fp32"
    """The arithmetic used: ``'fp32'``, ``'bf16'`` or ``'fp16'`` (see :mod:`infer.precision`)."""


REFINE_FORM_FIELDS = {
    "sampler": "sampler",
    "steps": "steps",
    "guidance_weight": "guidance_weight",
    "refine_start": "start",
    "refine_strength": "strength",
}
"""Flat form names of the refinement knobs -> :class:`RefineParams` fields."""


def convert_params_from_form(values: Mapping[str, Any]) -> ConvertParams:
    """:class:`ConvertParams` from one flat form (the CLI's flags, the page's fields) by name.

    ``values`` holds ConvertParams fields plus the flat refinement names of
    :data:`REFINE_FORM_FIELDS`; sampler ``'off'`` (or none) means no refinement. Missing names
    keep their defaults; unknown names are an error.
    """
    flat = dict(values)
    refine_values = {
        field_name: flat.pop(name) for name, field_name in REFINE_FORM_FIELDS.items() if name in flat
    }
    sampler = refine_values.get("sampler", SAMPLER_OFF)
    check_config_keys(ConvertParams, {k: v for k, v in flat.items() if k != "refine"}, require_all=False)
    if sampler != SAMPLER_OFF:
        flat["refine"] = RefineParams(**refine_values, seed=None)
    return ConvertParams.from_dict(flat)
