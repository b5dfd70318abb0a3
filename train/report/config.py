"""Report-card settings, constants, errors and the small records the phases pass around."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from infer.errors import TimbreError
from infer.home import asset_path

log = logging.getLogger(__name__)

REPORT_FILENAME = "report.json"
HELDOUT_FILENAME = "heldout.json"
PREVIEW_DIRNAME = "report_audio"
REPORT_FORMAT = 1
HELDOUT_FORMAT = 1
HELDOUT_MAX_SEGMENTS = 3
SEGMENTS_PER_HELDOUT = 10
"""One segment in this many is held out, up to :data:`HELDOUT_MAX_SEGMENTS`; smaller datasets
(under 10 segments) hold nothing out, as every clip is needed for training."""
TARGET_EMBEDDING_CLIPS = 8
SIMILARITY_TIE = 0.005
MAX_KEY_SHIFT_SEMITONES = 24
PROBE_SAMPLE_RATE_HZ = 16000
PROBE_PHRASES_PATH = asset_path("probes", "phrases.tsv")
PROBE_AUDIO_ENV_VAR = "TIMBRE_PROBE_AUDIO_DIR"
SHARED_DIR_ENV_VAR = "TIMBRE_SHARED_DIR"
SUMMARY_HEADERS = (
    "checkpoint",
    "epoch",
    "step",
    "similarity to target",
    "similarity to source",
    "target wins",
    "F0 RMSE (cents)",
    "CER",
    "best",
)
"""Column names of :func:`report_summary`'s rows."""
METRIC_KEYS = ("similarity_to_target", "similarity_to_source", "f0_rmse_cents", "voicing_error", "cer")
CHECKPOINT_RE = re.compile(r"^(?P<name>.+)_e(?P<epoch>\d+)_s(?P<step>\d+)\.pth$")


class ReportError(TimbreError):
    """The report card cannot be made: no trained checkpoint, no probe, or a damaged report file."""


class NoProbeError(ReportError):
    """There is nothing to convert: no held-out clip and no probe-phrase audio."""


@dataclass(frozen=True)
class ReportConfig:
    """How the report card is made.

    Attributes:
        max_checkpoints: checkpoints evaluated at most, evenly spread, the final one always.
        max_phrases: probe phrases used at most (in ``phrases.tsv`` order).
        probe_audio_dir: the corpus folder of the probe phrases; None = :func:`default_probe_audio_dir`.
        use_probe_phrases: convert the probe phrases (False: held-out clips only).
        metric_pitch_method: F0 method of the F0 metrics (output and source alike).
        index_rate: retrieval blend of the conversions (RVC's default).
        preview_count: probes whose source and best conversion are kept as A/B previews.
        device: where conversions run.
    """

    max_checkpoints: int = 6
    max_phrases: int = 4
    probe_audio_dir: Path | None = None
    use_probe_phrases: bool = True
    metric_pitch_method: str = "pm"
    index_rate: float = 0.75
    preview_count: int = 4
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name, minimum in (("max_checkpoints", 1), ("max_phrases", 0), ("preview_count", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ReportError(f"ReportConfig.{name} must be an int >= {minimum}, got {value!r}")
        if not 0.0 <= self.index_rate <= 1.0:
            raise ReportError(f"ReportConfig.index_rate must be in [0, 1], got {self.index_rate}")
        if self.probe_audio_dir is not None:
            object.__setattr__(self, "probe_audio_dir", Path(self.probe_audio_dir))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ReportConfig:
        """Build from plain data; unknown keys are an error."""
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ReportError(f"unknown report setting(s): {sorted(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class Probe:
    """One clip to convert.

    Attributes:
        probe_id: ``heldout/<segment>`` or the corpus path of a phrase (``us2/speech/013.flac``).
        kind: ``'heldout'`` or ``'phrase'``.
        audio_16k: (L,) float32 mono at 16 kHz.
        text: what it says, when known.
        pitch_shift_semitones: key shift of its conversion.
    """

    probe_id: str
    kind: str
    audio_16k: np.ndarray = field(repr=False)
    text: str | None
    pitch_shift_semitones: float = 0.0

    @property
    def slug(self) -> str:
        """File-name-safe id."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.probe_id.removesuffix(".flac")).strip("-")


@dataclass(frozen=True)
class CheckpointFile:
    """A saved inference file: ``<name>_e<epoch>_s<step>.pth`` or the final ``<name>.pth``."""

    path: Path
    epoch: int | None
    step: int | None
    is_final: bool = False
