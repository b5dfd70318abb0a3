"""Signal-processing F0 methods: 'pm' (Praat autocorrelation) and 'harvest' (WORLD), as RVC runs them.

* pm: ``parselmouth.Sound(x, 16000).to_pitch_ac(time_step=0.01, voicing_threshold=0.6,
  pitch_floor=f0_min, pitch_ceiling=f0_max)``; Praat returns fewer frames than the audio
  has hops, so the track is zero-padded on both sides (the extra frame on the left) to
  ``p_len``, as RVC's ``get_f0`` does.
* harvest: ``pyworld.harvest(x, fs=16000, f0_floor, f0_ceil, frame_period=10)`` refined
  by ``pyworld.stonemask``. RVC's ``filter_radius`` median filter is a conversion setting, so
  the registry's extractor returns the raw track (as RVC's training feature extraction does)
  and :mod:`infer.pipeline` applies the filter.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from infer.pitch.base import (
    DEFAULT_F0_MAX_HZ,
    DEFAULT_F0_MIN_HZ,
    HOP_LENGTH,
    SAMPLE_RATE_HZ,
    PitchMethodUnavailable,
    check_audio,
    check_range,
    fit_length,
    resolve_p_len,
)
from infer.pitch.f0 import median_filter_f0
from infer.progress import ProgressFn, StopFn, check_stop, report

log = logging.getLogger(__name__)

PM_TIME_STEP_S = HOP_LENGTH / SAMPLE_RATE_HZ
PM_VOICING_THRESHOLD = 0.6
HARVEST_FRAME_PERIOD_MS = 1000.0 * HOP_LENGTH / SAMPLE_RATE_HZ
HARVEST_FILTER_RADIUS = 0  # raw; the pipeline applies filter_radius


class PraatExtractor:
    """The 'pm' method (parselmouth)."""

    name = "pm"

    def __init__(self) -> None:
        try:
            import parselmouth
        except ImportError as exc:
            raise PitchMethodUnavailable(
                "pitch method 'pm' needs the praat-parselmouth package; install it "
                "(pip install praat-parselmouth) or choose another method"
            ) from exc
        self._parselmouth = parselmouth

    def extract(
        self,
        audio_16k: np.ndarray,
        *,
        p_len: int | None = None,
        f0_min_hz: float = DEFAULT_F0_MIN_HZ,
        f0_max_hz: float = DEFAULT_F0_MAX_HZ,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> np.ndarray:
        """(L,) 16 kHz audio -> (p_len,) float32 F0 Hz, centred by symmetric zero padding."""
        audio = check_audio(audio_16k)
        check_range(f0_min_hz, f0_max_hz)
        p_len = resolve_p_len(audio.shape[0], p_len)
        check_stop(should_stop)
        sound = self._parselmouth.Sound(audio.astype(np.float64), SAMPLE_RATE_HZ)
        try:
            pitch = sound.to_pitch_ac(
                time_step=PM_TIME_STEP_S,
                voicing_threshold=PM_VOICING_THRESHOLD,
                pitch_floor=f0_min_hz,
                pitch_ceiling=f0_max_hz,
            )
        except self._parselmouth.PraatError as exc:
            # Praat refuses inputs shorter than its analysis window: no frame can be voiced.
            log.debug("pm: %s; returning an unvoiced track", str(exc).strip().splitlines()[0])
            return fit_length(np.zeros(0), p_len)
        f0 = np.asarray(pitch.selected_array["frequency"], dtype=np.float64)
        missing = p_len - f0.shape[0]
        if missing > 0:
            left = (missing + 1) // 2
            f0 = np.pad(f0, (left, missing - left))
        report(progress, 1.0, self.name)
        return fit_length(f0, p_len)


class HarvestExtractor:
    """The 'harvest' method (pyworld), with RVC's 3-frame median filter."""

    name = "harvest"

    def __init__(self, filter_radius: int = HARVEST_FILTER_RADIUS) -> None:
        """``filter_radius``: RVC's setting; >= 3 applies the 3-frame median filter, less disables it."""
        self.filter_radius = int(filter_radius)
        try:
            with warnings.catch_warnings():
                # pyworld's __init__ imports the deprecated pkg_resources; the warning is not ours.
                warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
                import pyworld
        except ImportError as exc:
            raise PitchMethodUnavailable(
                "pitch method 'harvest' needs the pyworld package, which is not installed; "
                "install it (pip install pyworld) or choose another method such as 'rmvpe', 'fcpe' or 'pm'"
            ) from exc
        self._pyworld = pyworld

    def extract(
        self,
        audio_16k: np.ndarray,
        *,
        p_len: int | None = None,
        f0_min_hz: float = DEFAULT_F0_MIN_HZ,
        f0_max_hz: float = DEFAULT_F0_MAX_HZ,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> np.ndarray:
        """(L,) 16 kHz audio -> (p_len,) float32 F0 Hz at 10 ms frames starting at t = 0."""
        audio = check_audio(audio_16k)
        check_range(f0_min_hz, f0_max_hz)
        p_len = resolve_p_len(audio.shape[0], p_len)
        check_stop(should_stop)
        if audio.shape[0] == 0:
            return fit_length(np.zeros(0), p_len)
        signal = np.ascontiguousarray(audio, dtype=np.float64)
        f0, times = self._pyworld.harvest(
            signal,
            fs=SAMPLE_RATE_HZ,
            f0_floor=f0_min_hz,
            f0_ceil=f0_max_hz,
            frame_period=HARVEST_FRAME_PERIOD_MS,
        )
        f0 = self._pyworld.stonemask(signal, f0, times, SAMPLE_RATE_HZ)
        f0 = median_filter_f0(f0, self.filter_radius)
        report(progress, 1.0, self.name)
        return fit_length(f0, p_len)
