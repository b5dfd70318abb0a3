"""What the report card converts: held-out segments, probe phrases, saved checkpoints."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from infer.errors import TimbreError
from infer.fsutil import atomic_write_text
from train.report.config import (
    CHECKPOINT_RE,
    HELDOUT_FILENAME,
    HELDOUT_FORMAT,
    HELDOUT_MAX_SEGMENTS,
    PROBE_AUDIO_ENV_VAR,
    PROBE_PHRASES_PATH,
    SEGMENTS_PER_HELDOUT,
    SHARED_DIR_ENV_VAR,
    CheckpointFile,
    ReportError,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- held-out clips


def segment_names(work_dir: Path) -> list[str]:
    from train.features import WAVS_16K_DIRNAME

    folder = work_dir / WAVS_16K_DIRNAME
    names = [p.stem for p in folder.glob("*.wav") if not p.name.startswith(".")]
    return sorted(names, key=segment_key)


def segment_key(name: str) -> tuple[int, int, str]:
    head, _, tail = name.partition("_")
    return (int(head) if head.isdigit() else 1 << 30, int(tail) if tail.isdigit() else 0, name)


def choose_heldout(segment_names: Sequence[str], *, max_segments: int = HELDOUT_MAX_SEGMENTS) -> list[str]:
    """Deterministic held-out segments, evenly spread over the dataset (so from different clips).

    One segment per :data:`SEGMENTS_PER_HELDOUT`, at most ``max_segments``; none below that size.
    """
    names = sorted(segment_names, key=segment_key)
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
    segments = segment_names(work)
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
        root = Path(shared).expanduser() if shared else Path(__file__).resolve().parents[3] / "shared"
        candidate = root / "data" / "voices"
    return candidate if candidate.is_dir() else None


def training_voices(work_dir: Path, audio_dir: Path) -> set[str]:
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
        match = CHECKPOINT_RE.match(path.name)
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


def spread(items: Sequence[CheckpointFile], limit: int) -> list[CheckpointFile]:
    """At most ``limit`` items evenly spread, the last always kept."""
    if len(items) <= limit:
        return list(items)
    if limit == 1:
        return [items[-1]]
    picks = {round(i * (len(items) - 1) / (limit - 1)) for i in range(limit)}
    return [items[i] for i in sorted(picks)]
