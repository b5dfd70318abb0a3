"""Reading a written report card back: its table and its A/B preview pairs."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from train.report.config import REPORT_FILENAME, ReportError

log = logging.getLogger(__name__)


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
