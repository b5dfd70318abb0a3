"""Pitch (F0) extraction: one :class:`PitchExtractor` protocol, a registry, six method names.

Every extractor maps 16 kHz mono float32 audio to F0 in Hz at 100 frames/s (hop 160),
0 for unvoiced frames, never NaN::

    extractor = get_pitch_extractor(default_method(pretrained_dir), pretrained_dir=pretrained_dir)
    f0_hz = extractor.extract(audio_16k, p_len=len(audio_16k) // 160)
"""

from infer.pitch.base import (
    FRAME_RATE_HZ,
    HOP_LENGTH,
    SAMPLE_RATE_HZ,
    PitchExtractor,
    PitchMethodUnavailable,
)
from infer.pitch.f0 import f0_to_coarse, median_filter_f0, shift_semitones
from infer.pitch.registry import (
    available_methods,
    clear_pitch_extractor_cache,
    default_method,
    get_pitch_extractor,
    pitch_methods,
)

__all__ = [
    "FRAME_RATE_HZ",
    "HOP_LENGTH",
    "SAMPLE_RATE_HZ",
    "PitchExtractor",
    "PitchMethodUnavailable",
    "available_methods",
    "clear_pitch_extractor_cache",
    "default_method",
    "f0_to_coarse",
    "get_pitch_extractor",
    "median_filter_f0",
    "pitch_methods",
    "shift_semitones",
]
