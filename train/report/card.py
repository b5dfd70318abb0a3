"""Building the report card: probes -> every checkpoint's conversions -> measures -> ``report.json``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from infer.fsutil import atomic_write_text
from infer.progress import ProgressFn, StopFn, check_stop, report, sub_progress
from train.report.config import (
    PROBE_AUDIO_ENV_VAR,
    PROBE_SAMPLE_RATE_HZ,
    REPORT_FILENAME,
    REPORT_FORMAT,
    SIMILARITY_TIE,
    NoProbeError,
    ReportConfig,
    ReportError,
)
from train.report.measure import (
    Meter,
    ProbeRef,
    collect_probes,
    finite,
    key_shift,
    measure_output,
    median_f0,
    pick_best,
    similarity,
    summarise,
    target_reference,
    write_previews,
)
from train.report.probes import checkpoint_files, heldout_names, segment_names, spread

log = logging.getLogger(__name__)


@dataclass
class _Plan:
    """What the probe phase found: the checkpoints to evaluate, the probes and the target voice."""

    checkpoints_saved: int
    evaluated: list[Any]
    metadata: Any
    f0_method: str
    meter: Meter
    heldout: set[str]
    target_embedding: np.ndarray | None
    target_median_hz: float | None
    refs: list[ProbeRef]
    preview_ids: set[str]
    notes: list[str] = field(default_factory=list)


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

    Three phases: :func:`_plan` (checkpoints, probes, the target voice's reference),
    :func:`_evaluate` (every checkpoint converts every probe, each output measured) and
    :func:`_card` (the best checkpoint, previews, the JSON document).

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
    config = config or ReportConfig()
    work = Path(work_dir)
    report(progress, 0.0, "preparing the probes")
    plan = _plan(work, name, config, pretrained_dir, f0_method, should_stop)
    index_path = _index_path(work, name)
    index_rate = config.index_rate if index_path is not None else 0.0
    rows, outputs = _evaluate(
        plan,
        (index_path, index_rate),
        config,
        pretrained_dir,
        sub_progress(progress, 0.05, 0.95),
        should_stop,
    )
    best_index = pick_best(rows)
    for i, row in enumerate(rows):
        row["is_best"] = i == best_index
    report(progress, 0.96, "writing previews")
    previews = write_previews(work, plan.refs, outputs[best_index])
    card = _card(plan, name, rows[best_index], rows, previews, index_rate, config, budget)
    atomic_write_text(work / REPORT_FILENAME, json.dumps(card, indent=2))
    report(progress, 1.0, f"report card written; best checkpoint {rows[best_index]['checkpoint']}")
    return card


def _plan(
    work: Path,
    name: str,
    config: ReportConfig,
    pretrained_dir: Path | None,
    f0_method: str | None,
    should_stop: StopFn | None,
) -> _Plan:
    from infer.models import load_voice_model
    from infer.pitch import default_method
    from train.vits import DEFAULT_EXPORT_DIRNAME

    checkpoints = checkpoint_files(work / DEFAULT_EXPORT_DIRNAME, name)
    if not checkpoints:
        raise ReportError(
            f"no trained checkpoint of {name!r} in {work / DEFAULT_EXPORT_DIRNAME}: train first"
        )
    evaluated = spread(checkpoints, config.max_checkpoints)
    final_model = load_voice_model(evaluated[-1].path)
    meta = final_model.metadata
    method = f0_method or meta.extra.get("f0_method") or default_method(pretrained_dir)
    meter = Meter(config.metric_pitch_method)
    heldout = set(heldout_names(work))
    training = [s for s in segment_names(work) if s not in heldout]
    if not training:
        raise ReportError(f"no prepared training segment in {work}; run the prepare stage first")
    target_embedding, target_median_hz = target_reference(work, training, meter, should_stop)
    notes: list[str] = []
    probes = collect_probes(work, heldout, config, notes)
    if not probes:
        raise NoProbeError(
            "no probe clip: the dataset is too small to hold clips out, and the probe phrases' "
            f"corpus folder is missing (set {PROBE_AUDIO_ENV_VAR}; see assets/probes/README.md)"
        )
    refs: list[ProbeRef] = []
    for found in probes:
        check_stop(should_stop)
        f0_hz = meter.f0(found.audio_16k)
        is_shifted = found.kind == "phrase" and final_model.config.use_f0
        shift = key_shift(median_f0(f0_hz), target_median_hz) if is_shifted else 0.0
        probe = replace(found, pitch_shift_semitones=shift)
        text = probe.text if probe.text is not None else meter.transcribe(probe.audio_16k)
        refs.append(ProbeRef(probe, meter.embedding(probe.audio_16k), f0_hz, text))
    by_phrase_first = sorted(refs, key=lambda r: r.probe.kind != "phrase")
    return _Plan(
        checkpoints_saved=len(checkpoints),
        evaluated=evaluated,
        metadata=meta,
        f0_method=method,
        meter=meter,
        heldout=heldout,
        target_embedding=target_embedding,
        target_median_hz=target_median_hz,
        refs=refs,
        preview_ids={r.probe.probe_id for r in by_phrase_first[: config.preview_count]},
        notes=notes,
    )


def _evaluate(
    plan: _Plan,
    index: tuple[Path | None, float],
    config: ReportConfig,
    pretrained_dir: Path | None,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> tuple[list[dict[str, Any]], list[dict[str, tuple[np.ndarray, int]]]]:
    """Every checkpoint converts every probe; one row of measures per checkpoint, and the previews' audio."""
    from infer.audio import resample
    from infer.pipeline import Converter, ConvertParams, Resources, load_voice

    index_path, index_rate = index
    resources = Resources(
        pretrained_dir=Path(pretrained_dir) if pretrained_dir else Resources().pretrained_dir,
        device=config.device,
    )
    kinds = {ref.probe.probe_id: ref.probe.kind for ref in plan.refs}
    rows: list[dict[str, Any]] = []
    outputs: list[dict[str, tuple[np.ndarray, int]]] = []
    total = len(plan.evaluated) * len(plan.refs)
    for n, checkpoint in enumerate(plan.evaluated):
        converter = Converter(load_voice(checkpoint.path, index_path, device=config.device), resources)
        per_probe = []
        kept: dict[str, tuple[np.ndarray, int]] = {}
        for i, ref in enumerate(plan.refs):
            check_stop(should_stop)
            report(
                progress, (n * len(plan.refs) + i) / total, f"{checkpoint.path.name}: {ref.probe.probe_id}"
            )
            params = ConvertParams(
                pitch_shift_semitones=ref.probe.pitch_shift_semitones,
                f0_method=plan.f0_method,
                index_rate=index_rate,
                seed=0,
            )
            result = converter.convert(ref.probe.audio_16k, params)
            output_16k = resample(result.audio, result.sample_rate, PROBE_SAMPLE_RATE_HZ)
            per_probe.append(measure_output(plan.meter, ref, output_16k, plan.target_embedding))
            if ref.probe.probe_id in plan.preview_ids:
                kept[ref.probe.probe_id] = (result.audio, result.sample_rate)
        rows.append(
            {
                "checkpoint": checkpoint.path.name,
                "epoch": checkpoint.epoch,
                "step": checkpoint.step,
                "is_final": checkpoint.is_final,
                "mean": summarise(per_probe, kinds),
                "per_probe": per_probe,
            }
        )
        outputs.append(kept)
    return rows, outputs


def _card(
    plan: _Plan,
    name: str,
    best: Mapping[str, Any],
    rows: list[dict[str, Any]],
    previews: Mapping[str, Any],
    index_rate: float,
    config: ReportConfig,
    budget: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The report card document."""
    from infer.content.whisper import ENCODER_NAME, ENGLISH_NOTE

    meta = plan.metadata
    return {
        "format": REPORT_FORMAT,
        "model": name,
        "created": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "encoder": meta.content_encoder,
        "encoder_note": ENGLISH_NOTE if meta.content_encoder == ENCODER_NAME else None,
        "budget": {
            **dict(budget or {}),
            "trained_epochs": meta.epochs,
            "trained_steps": meta.steps,
            "heldout_segments": len(plan.heldout),
        },
        "conversion": {
            "sampler": "off",
            "f0_method": plan.f0_method,
            "index_rate": index_rate,
            "seed": 0,
            "metric_pitch_method": config.metric_pitch_method,
            "target_f0_median_hz": plan.target_median_hz,
        },
        "checkpoints_saved": plan.checkpoints_saved,
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
                "source_similarity_to_target": finite(similarity(ref.embedding, plan.target_embedding)),
                "preview": previews.get(ref.probe.probe_id),
            }
            for ref in plan.refs
        ],
        "notes": [*plan.notes, *plan.meter.notes],
    }


def _index_path(work_dir: Path, name: str) -> Path | None:
    found = sorted(work_dir.glob(f"added_IVF*_Flat_nprobe_1_{name}_v*.index"))
    return found[-1] if found else None


# --------------------------------------------------------------------------- reading, for the UI
