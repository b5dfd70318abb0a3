"""Training data: gather audio from a folder, a file list or a zip; check it; slice it RVC's way.

Size: ingest (folders, lists, zips), checks and the resumable slicer share one manifest and
one state file.

:func:`collect_dataset` finds and decodes every clip, skips what cannot be used (with the reason)
and writes a report (``dataset.json`` in the work folder). :func:`prepare_dataset` cuts the clips
into segments with :mod:`train.slicing` and writes RVC's folders ``0_gt_wavs/`` (model rate) and
``1_16k_wavs/`` (16 kHz), both float32 WAV named ``{file_index}_{segment}.wav``. It is resumable:
files whose path, size and mtime are unchanged since the last run are not processed again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from infer.errors import AudioDecodeError, TimbreError
from infer.options import AUDIO_SUFFIXES
from infer.progress import ProgressFn, StopFn, check_stop, report
from train.slicing import FEATURE_SAMPLE_RATE, SliceConfig, frame_rms, preprocess_audio, slicer_frames

log = logging.getLogger(__name__)

ZIP_SUFFIX = ".zip"
GT_WAVS_DIRNAME = "0_gt_wavs"
WAVS_16K_DIRNAME = "1_16k_wavs"
EXTRACT_DIRNAME = "extracted"
MANIFEST_FILENAME = "dataset.json"
PREPARE_STATE_FILENAME = "prepare_state.json"
STATE_FORMAT = 1
MIN_USABLE_DURATION_S = 60.0
CLIPPED_SHARE_WARN = 0.001
LOW_SAMPLE_RATE_HZ = 32000
ANALYSIS_FALLBACK_RATE_HZ = 44100
STATE_SAVE_INTERVAL_S = 2.0
TRUNCATION_TOLERANCE_S = 0.1
# libsndfile reads these headers quietly; the rate of other formats is read after ffmpeg decoded them.
_PROBE_FIRST_SUFFIXES = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".aifc", ".caf", ".au"}
)
_PROBE_AFTER_SUFFIXES = frozenset({".mp3", ".opus"})


class DatasetError(TimbreError):
    """The dataset as a whole cannot be used (missing, over the limits, nothing decodable...)."""


@dataclass(frozen=True)
class DatasetLimits:
    """Caps on what :func:`collect_dataset` accepts (zip archives and folders alike)."""

    max_total_bytes: int = 2 * 1024**3
    max_files: int = 10_000
    max_file_bytes: int = 1024**3

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"{f.name} must be positive, got {getattr(self, f.name)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetLimits:
        """Build from a plain dict; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown dataset limit keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of the dataset.

    Attributes:
        path: as found (inside an archive: ``archive.zip:member``).
        reason: what is wrong, for people.
        code: short machine-readable cause ('unsupported_type', 'too_large', 'silent', or the
            decoder's reason such as 'empty' / 'not_audio').
    """

    path: str
    reason: str
    code: str


@dataclass(frozen=True)
class DatasetFile:
    """One usable clip.

    Attributes:
        path: the decoded file.
        size_bytes: file size when collected.
        mtime_ns: modification time when collected.
        sample_rate: native rate, or None when it could not be read without decoding.
        duration_s: decoded length.
        clipped_share: share of samples on a full-scale plateau.
        silent_share: share of 15 ms frames below the slicer threshold (-42 dBFS by default).
        looks_like_noise: the loud parts are spectrally flat like noise, not voice.
        is_truncated: decoding stopped well before the length the header claims (damaged file);
            only the decodable part is used.
    """

    path: Path
    size_bytes: int
    mtime_ns: int
    sample_rate: int | None
    duration_s: float
    clipped_share: float
    silent_share: float
    looks_like_noise: bool
    is_truncated: bool = False


@dataclass(frozen=True)
class DatasetReport:
    """What the dataset holds, and what is wrong with it.

    Attributes:
        duration_s: total length of the usable clips.
        usable_duration_s: the part of it that is not silence.
        clip_count: number of usable clips.
        skipped: files left out, with reasons.
        clipped_share: share of clipped samples over all usable clips.
        silent_share: share of silent time over all usable clips.
        sample_rates: native sample rates seen (Hz, sorted; unknown rates are not listed).
        warnings: findings for people, each saying what it means for the model.
    """

    duration_s: float
    usable_duration_s: float
    clip_count: int
    skipped: tuple[SkippedFile, ...]
    clipped_share: float
    silent_share: float
    sample_rates: tuple[int, ...]
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        out = asdict(self)
        out["skipped"] = [asdict(s) for s in self.skipped]
        out["sample_rates"] = list(self.sample_rates)
        out["warnings"] = list(self.warnings)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetReport:
        """Inverse of :meth:`to_dict`."""
        return cls(
            duration_s=float(data["duration_s"]),
            usable_duration_s=float(data["usable_duration_s"]),
            clip_count=int(data["clip_count"]),
            skipped=tuple(SkippedFile(**s) for s in data["skipped"]),
            clipped_share=float(data["clipped_share"]),
            silent_share=float(data["silent_share"]),
            sample_rates=tuple(int(r) for r in data["sample_rates"]),
            warnings=tuple(data["warnings"]),
        )


@dataclass(frozen=True)
class DatasetManifest:
    """The usable clips of a dataset and its report (also saved as ``dataset.json``)."""

    files: tuple[DatasetFile, ...]
    report: DatasetReport
    work_dir: Path

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        files = []
        for f in self.files:
            row = asdict(f)
            row["path"] = str(f.path)
            files.append(row)
        return {
            "format": STATE_FORMAT,
            "work_dir": str(self.work_dir),
            "files": files,
            "report": self.report.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetManifest:
        """Inverse of :meth:`to_dict`."""
        files = tuple(DatasetFile(**{**row, "path": Path(row["path"])}) for row in data["files"])
        return cls(
            files=files, report=DatasetReport.from_dict(data["report"]), work_dir=Path(data["work_dir"])
        )


@dataclass(frozen=True)
class PreparedDataset:
    """Result of :func:`prepare_dataset`.

    Attributes:
        gt_wavs_dir: model-rate segments (``0_gt_wavs``).
        wavs_16k_dir: 16 kHz segments (``1_16k_wavs``), same names.
        segment_names: every segment file name, sorted.
        duration_s: total segment length.
        files_processed: clips sliced in this run.
        files_reused: clips whose segments were kept from an earlier run.
        skipped: clips that failed to decode now.
    """

    gt_wavs_dir: Path
    wavs_16k_dir: Path
    segment_names: tuple[str, ...]
    duration_s: float
    files_processed: int
    files_reused: int
    skipped: tuple[SkippedFile, ...] = field(default=())

    @property
    def segment_count(self) -> int:
        """Number of segments."""
        return len(self.segment_names)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from infer.fsutil import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False))


def _file_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _walk_folder(folder: Path, exclude: Path) -> list[Path]:
    """Files under ``folder`` (sorted, hidden entries and ``exclude`` left out, links not followed)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (root_path / d).resolve() != exclude)
        found.extend(root_path / name for name in sorted(files) if not name.startswith("."))
    return found


def _extract_archive(
    zip_path: Path, work_dir: Path, slot: str, limits: DatasetLimits
) -> tuple[list[Path], list[SkippedFile]]:
    """Extract (or reuse an earlier extraction of) one archive under ``work_dir/extracted``."""
    from infer.ziputil import safe_extract_zip

    base = work_dir / EXTRACT_DIRNAME
    dest = base / slot
    marker = base / f"{slot}.json"
    size, mtime_ns = _file_key(zip_path)
    source = str(zip_path.resolve())
    if marker.exists() and dest.is_dir():
        try:
            done = json.loads(marker.read_text())
            paths = [dest / rel for rel in done["extracted"]]
            if (done["zip"], done["size_bytes"], done["mtime_ns"]) == (source, size, mtime_ns) and all(
                p.is_file() for p in paths
            ):
                log.info("reusing the extraction of %s", zip_path.name)
                skipped = [SkippedFile(**s) for s in done["skipped"]]
                return paths, skipped
        except (json.JSONDecodeError, KeyError, TypeError, OSError):
            log.info("extraction record of %s is unreadable; extracting again", zip_path.name)
    if dest.exists():
        shutil.rmtree(dest)
    result = safe_extract_zip(
        zip_path,
        dest,
        max_total_bytes=limits.max_total_bytes,
        max_files=limits.max_files,
        max_member_bytes=limits.max_file_bytes,
        allowed_suffixes=AUDIO_SUFFIXES,
    )
    skipped = [SkippedFile(f"{zip_path.name}:{s.name}", s.reason, "unsupported_type") for s in result.skipped]
    _write_json(
        marker,
        {
            "zip": source,
            "size_bytes": size,
            "mtime_ns": mtime_ns,
            "extracted": [p.relative_to(dest).as_posix() for p in result.extracted],
            "skipped": [asdict(s) for s in skipped],
        },
    )
    return list(result.extracted), skipped


def _gather(
    sources: Sequence[Path], work_dir: Path, limits: DatasetLimits
) -> tuple[list[Path], list[SkippedFile]]:
    """Expand folders and archives into candidate audio files; apply the limits."""
    exclude = work_dir.resolve()
    candidates: list[Path] = []
    skipped: list[SkippedFile] = []
    for number, source in enumerate(sources):
        if source.is_dir():
            listed = _walk_folder(source, exclude)
        elif source.is_file() and source.suffix.lower() == ZIP_SUFFIX:
            extracted, archive_skipped = _extract_archive(
                source, work_dir, f"{number:03d}_{source.stem}", limits
            )
            candidates.extend(extracted)
            skipped.extend(archive_skipped)
            continue
        elif source.is_file():
            listed = [source]
        elif len(sources) == 1:
            raise DatasetError(
                f"dataset source {source} does not exist; pick a folder, audio files or a .zip"
            )
        else:
            skipped.append(SkippedFile(str(source), "file not found", "not_found"))
            continue
        for path in listed:
            suffix = path.suffix.lower()
            if suffix in AUDIO_SUFFIXES:
                candidates.append(path)
            elif suffix == ZIP_SUFFIX:
                skipped.append(
                    SkippedFile(str(path), "archive inside the dataset; add it as a source itself", "archive")
                )
            else:
                skipped.append(
                    SkippedFile(
                        str(path), f"not an audio file type ({suffix or 'no suffix'})", "unsupported_type"
                    )
                )
    unique: dict[Path, Path] = {}
    for path in candidates:
        unique.setdefault(path.resolve(), path)
    candidates = list(unique.values())
    if len(candidates) > limits.max_files:
        raise DatasetError(
            f"the dataset has {len(candidates)} audio files, more than the limit of {limits.max_files}; "
            "use fewer, longer files"
        )
    kept: list[Path] = []
    total = 0
    for path in candidates:
        try:
            size = path.stat().st_size
        except OSError as exc:
            skipped.append(SkippedFile(str(path), f"cannot read the file: {exc}", "not_found"))
            continue
        if size > limits.max_file_bytes:
            skipped.append(
                SkippedFile(
                    str(path),
                    f"file is {size} bytes, over the {limits.max_file_bytes}-byte limit",
                    "too_large",
                )
            )
            continue
        total += size
        kept.append(path)
    if total > limits.max_total_bytes:
        raise DatasetError(
            f"the dataset's audio files total {total} bytes, more than the limit of "
            f"{limits.max_total_bytes}; use less audio or compress it (flac, mp3)"
        )
    return kept, skipped


def _probe_header(path: Path) -> tuple[int | None, float | None]:
    """(native sample rate, claimed duration in s) from the file header via libsndfile, or Nones."""
    import soundfile

    try:
        info = soundfile.info(str(path))
    except (RuntimeError, OSError, ValueError, TypeError):
        return None, None
    return int(info.samplerate), float(info.duration)


def _silent_share(audio: np.ndarray, sample_rate: int, config: SliceConfig) -> float:
    frames = slicer_frames(sample_rate, config)
    rms = frame_rms(audio, frames.win_samples, frames.hop_samples)
    return float(np.mean(rms < frames.threshold)) if rms.size else 1.0


def _analyse(path: Path, config: SliceConfig) -> DatasetFile | SkippedFile:
    """Decode one candidate and measure it."""
    from infer.audio import inspect_audio, load_audio

    suffix = path.suffix.lower()
    rate, claimed_s = _probe_header(path) if suffix in _PROBE_FIRST_SUFFIXES else (None, None)
    analysis_rate = rate or ANALYSIS_FALLBACK_RATE_HZ
    try:
        size, mtime_ns = _file_key(path)
        audio = load_audio(path, analysis_rate)
    except AudioDecodeError as exc:
        return SkippedFile(str(path), str(exc), str(getattr(exc, "reason", "decode_failed")))
    except OSError as exc:
        return SkippedFile(str(path), f"cannot read the file: {exc}", "not_found")
    if rate is None and suffix in _PROBE_AFTER_SUFFIXES:
        rate, claimed_s = _probe_header(path)
    found = inspect_audio(audio, analysis_rate)
    is_truncated = claimed_s is not None and found.duration_s < claimed_s - TRUNCATION_TOLERANCE_S
    if found.is_silent:
        return SkippedFile(
            str(path), f"silent (RMS {found.rms_dbfs:.1f} dBFS): nothing to learn from", "silent"
        )
    return DatasetFile(
        path=path,
        size_bytes=size,
        mtime_ns=mtime_ns,
        sample_rate=rate,
        duration_s=found.duration_s,
        clipped_share=found.clipped_share,
        silent_share=_silent_share(audio, analysis_rate, config),
        looks_like_noise=found.looks_like_noise,
        is_truncated=is_truncated,
    )


def _names(paths: Iterable[Path], limit: int = 5) -> str:
    names = [p.name for p in paths]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def build_report(files: Sequence[DatasetFile], skipped: Sequence[SkippedFile]) -> DatasetReport:
    """Totals and warnings for a set of analysed clips."""
    duration = sum(f.duration_s for f in files)
    usable = sum(f.duration_s * (1.0 - f.silent_share) for f in files)
    clipped = sum(f.clipped_share * f.duration_s for f in files) / duration if duration > 0 else 0.0
    silent = sum(f.silent_share * f.duration_s for f in files) / duration if duration > 0 else 0.0
    rates = tuple(sorted({f.sample_rate for f in files if f.sample_rate is not None}))
    warnings: list[str] = []
    if not files:
        warnings.append("no usable audio: every file was skipped (see the skipped list)")
    elif usable < MIN_USABLE_DURATION_S:
        warnings.append(
            f"less than 1 minute of usable audio ({usable:.1f} s): expect a weak model; "
            "10 minutes or more of clean speech or singing works best"
        )
    if clipped >= CLIPPED_SHARE_WARN:
        warnings.append(
            f"{clipped:.1%} of samples are clipped: the model will learn the distortion; "
            "use recordings made at a lower level"
        )
    if len(rates) > 1:
        warnings.append(
            f"multiple sample rates: {', '.join(str(r) for r in rates)} Hz; "
            "all are resampled to the model rate"
        )
    low = [r for r in rates if r < LOW_SAMPLE_RATE_HZ]
    if low:
        warnings.append(
            f"some audio is at a low sample rate ({', '.join(str(r) for r in low)} Hz): it has no high "
            "frequencies, so the model's output will sound dull above half that rate"
        )
    noisy = [f.path for f in files if f.looks_like_noise]
    if noisy:
        warnings.append(
            f"{len(noisy)} file(s) sound like noise rather than a voice ({_names(noisy)}); remove them"
        )
    truncated = [f.path for f in files if f.is_truncated]
    if truncated:
        warnings.append(
            f"{len(truncated)} file(s) look truncated or damaged ({_names(truncated)}); only the part that "
            "decodes is used: re-export them to use all of it"
        )
    if files and silent > 0.5:
        warnings.append(f"{silent:.0%} of the audio is silence; it is cut out, so the usable part is shorter")
    decode_failures = [s for s in skipped if s.code not in ("unsupported_type", "archive")]
    if decode_failures:
        warnings.append(f"{len(decode_failures)} file(s) could not be used (see the skipped list for why)")
    return DatasetReport(
        duration_s=float(duration),
        usable_duration_s=float(usable),
        clip_count=len(files),
        skipped=tuple(skipped),
        clipped_share=float(clipped),
        silent_share=float(silent),
        sample_rates=rates,
        warnings=tuple(warnings),
    )


def collect_dataset(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    work_dir: str | os.PathLike[str],
    *,
    limits: DatasetLimits | None = None,
    config: SliceConfig | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> DatasetManifest:
    """Find, decode and check every clip of a dataset.

    Args:
        source: a folder (searched recursively), an audio file, a ``.zip`` archive (extracted
            safely into ``work_dir/extracted``), or a list of any of these.
        work_dir: the training work folder; ``dataset.json`` is written there.
        limits: file count and size caps (defaults: 10 000 files, 2 GiB, 1 GiB per file).
        config: slicing settings; its silence threshold defines the reported silent share.
        progress: receives (fraction, message).
        should_stop: checked between files; raises Cancelled. A failed or cancelled call removes
            the archives it unpacked.

    Returns:
        The usable clips (sorted by path) and the report. Undecodable, empty and silent files
        are skipped with reasons, never fatal.

    Raises:
        DatasetError: the source is missing or over the limits.
        UnsafeFileError: an archive is unsafe (path traversal, links, zip bomb...).
    """
    limits = limits or DatasetLimits()
    config = config or SliceConfig()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if isinstance(source, (str, os.PathLike)):
        sources = [Path(source).expanduser()]
    else:
        sources = [Path(s).expanduser() for s in source]
    if not sources:
        raise DatasetError("no dataset source given; pick a folder, audio files or a .zip")
    report(progress, 0.0, "looking for audio files")
    extracted = work / EXTRACT_DIRNAME
    before = set(os.listdir(extracted)) if extracted.is_dir() else None
    try:
        candidates, skipped = _gather(sources, work, limits)
        files: list[DatasetFile] = []
        for number, path in enumerate(candidates):
            check_stop(should_stop)
            report(progress, number / max(1, len(candidates)), f"checking {path.name}")
            outcome = _analyse(path, config)
            if isinstance(outcome, SkippedFile):
                log.info("skipping %s: %s", path, outcome.reason)
                skipped.append(outcome)
            else:
                files.append(outcome)
    except BaseException:
        _remove_new_extractions(extracted, before)
        raise
    files.sort(key=lambda f: str(f.path))
    manifest = DatasetManifest(files=tuple(files), report=build_report(files, skipped), work_dir=work)
    _write_json(work / MANIFEST_FILENAME, manifest.to_dict())
    report(progress, 1.0, f"{len(files)} usable clips, {len(skipped)} skipped")
    for warning in manifest.report.warnings:
        log.warning("dataset: %s", warning)
    return manifest


def _remove_new_extractions(extracted: Path, before: set[str] | None) -> None:
    """Remove what a failed or cancelled collection unpacked (entries of ``extracted`` not in ``before``)."""
    if not extracted.is_dir():
        return
    if before is None:
        shutil.rmtree(extracted, ignore_errors=True)
        return
    for name in set(os.listdir(extracted)) - before:
        target = extracted / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)


def load_manifest(work_dir: str | os.PathLike[str]) -> DatasetManifest:
    """Read the ``dataset.json`` that :func:`collect_dataset` wrote in ``work_dir``."""
    path = Path(work_dir) / MANIFEST_FILENAME
    try:
        return DatasetManifest.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise DatasetError(
            f"no dataset has been collected in {work_dir}; collect the dataset first"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{path} is damaged ({exc}); collect the dataset again") from exc


@dataclass(frozen=True)
class _FileOutcome:
    key: str
    names: tuple[str, ...]
    duration_s: float
    error: str | None = None
    code: str | None = None


def _prepare_file(
    path: str, key: str, file_index: int, sample_rate: int, config: dict[str, Any], gt_dir: str, k16_dir: str
) -> _FileOutcome:
    """Decode, slice and write one clip (runs in a worker process when ``workers > 1``)."""
    from infer.audio import load_audio, save_audio

    try:
        audio = load_audio(path, sample_rate)
    except AudioDecodeError as exc:
        return _FileOutcome(key, (), 0.0, str(exc), str(getattr(exc, "reason", "decode_failed")))
    segments = preprocess_audio(audio, sample_rate, SliceConfig.from_dict(config))
    names = []
    duration = 0.0
    for number, segment in enumerate(segments):
        name = f"{file_index}_{number}.wav"
        save_audio(Path(gt_dir) / name, segment.audio, sample_rate, use_float32=True)
        save_audio(Path(k16_dir) / name, segment.audio_16k, FEATURE_SAMPLE_RATE, use_float32=True)
        names.append(name)
        duration += segment.audio.shape[0] / sample_rate
    return _FileOutcome(key, tuple(names), duration)


def _remove_outputs(dirs: Sequence[Path], file_index: int) -> None:
    for folder in dirs:
        for stale in folder.glob(f"{file_index}_*.wav"):
            stale.unlink()


def _load_state(path: Path, sample_rate: int, config: SliceConfig) -> dict[str, Any] | None:
    """The previous run's state if it used the same settings, else None."""
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, OSError) as exc:
        log.warning("ignoring the unreadable %s (%s); preparing every file again", path.name, exc)
        return None
    same = (
        isinstance(state, dict)
        and state.get("format") == STATE_FORMAT
        and state.get("sample_rate") == sample_rate
        and state.get("slice_config") == config.to_dict()
        and isinstance(state.get("files"), dict)
    )
    if not same:
        log.info("sample rate or slicing settings changed; preparing every file again")
        return None
    return state


def _is_reusable(entry: dict[str, Any] | None, size: int, mtime_ns: int, dirs: Sequence[Path]) -> bool:
    if not entry or entry.get("size_bytes") != size or entry.get("mtime_ns") != mtime_ns:
        return False
    if entry.get("status") == "skipped":
        return True
    return entry.get("status") == "done" and all(
        (d / n).is_file() for d in dirs for n in entry.get("names", [])
    )


def prepare_dataset(
    manifest: DatasetManifest,
    work_dir: str | os.PathLike[str],
    *,
    sample_rate: int,
    config: SliceConfig | None = None,
    workers: int = 1,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> PreparedDataset:
    """Slice every clip into training segments (RVC's preprocess), resumably.

    Args:
        manifest: from :func:`collect_dataset`.
        work_dir: the training work folder; ``0_gt_wavs/``, ``1_16k_wavs/`` and
            ``prepare_state.json`` go there.
        sample_rate: the model rate (32000, 40000 or 48000 for RVC models).
        config: slicing settings.
        workers: processes to use; 1 runs in this process.
        progress: receives (fraction, message).
        should_stop: checked between files; raises Cancelled after saving what is done.

    Returns:
        The segment folders and names. Clips unchanged since an earlier run with the same
        settings are reused; a change of settings redoes everything.
    """
    config = config or SliceConfig()
    if sample_rate < FEATURE_SAMPLE_RATE:
        raise ValueError(f"sample_rate must be at least {FEATURE_SAMPLE_RATE}, got {sample_rate}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    work = Path(work_dir)
    gt_dir = work / GT_WAVS_DIRNAME
    k16_dir = work / WAVS_16K_DIRNAME
    dirs = (gt_dir, k16_dir)
    state_path = work / PREPARE_STATE_FILENAME
    state = _fresh_or_resumed_state(state_path, sample_rate, config, dirs)
    entries: dict[str, dict[str, Any]] = state["files"]
    wanted = {str(f.path.resolve()): f.path for f in manifest.files}
    todo, reused = _plan_files(state, wanted, dirs)
    _write_json(state_path, state)
    log.info("preparing %d clip(s), reusing %d", len(todo), reused)

    total = len(wanted)
    last_save = time.monotonic()

    def record(outcome: _FileOutcome) -> None:
        nonlocal last_save
        entry = entries[outcome.key]
        if outcome.error is None:
            entry.update(status="done", names=list(outcome.names), duration_s=outcome.duration_s)
        else:
            entry.update(status="skipped", reason=outcome.error, code=outcome.code)
        if time.monotonic() - last_save >= STATE_SAVE_INTERVAL_S:
            _write_json(state_path, state)
            last_save = time.monotonic()

    args = [(str(p), k, i, sample_rate, config.to_dict(), str(gt_dir), str(k16_dir)) for k, p, i in todo]
    try:
        if workers == 1 or len(todo) < 2:
            for done, job in enumerate(args):
                check_stop(should_stop)
                report(progress, (reused + done) / max(1, total), f"slicing {Path(job[0]).name}")
                record(_prepare_file(*job))
        else:
            _run_pool(args, workers, record, reused, total, progress, should_stop)
    finally:
        _write_json(state_path, state)

    names, duration, skipped = _summarise(entries, wanted)
    report(progress, 1.0, f"{len(names)} segments ready")
    return PreparedDataset(
        gt_wavs_dir=gt_dir,
        wavs_16k_dir=k16_dir,
        segment_names=tuple(sorted(names, key=_segment_sort_key)),
        duration_s=duration,
        files_processed=len(todo),
        files_reused=reused,
        skipped=tuple(skipped),
    )


def _fresh_or_resumed_state(
    state_path: Path, sample_rate: int, config: SliceConfig, dirs: Sequence[Path]
) -> dict[str, Any]:
    """The saved preparation state when it fits these settings; else a new one (outputs cleared)."""
    state = _load_state(state_path, sample_rate, config)
    if state is None:
        for folder in dirs:
            if folder.exists():
                shutil.rmtree(folder)
        state = {
            "format": STATE_FORMAT,
            "sample_rate": sample_rate,
            "slice_config": config.to_dict(),
            "next_index": 0,
            "files": {},
        }
    for folder in dirs:
        folder.mkdir(parents=True, exist_ok=True)
    return state


def _plan_files(
    state: dict[str, Any], wanted: Mapping[str, Path], dirs: Sequence[Path]
) -> tuple[list[tuple[str, Path, int]], int]:
    """Forget clips no longer wanted; (clips to slice as (key, path, index), clips reused as they are)."""
    entries: dict[str, dict[str, Any]] = state["files"]
    for gone in [k for k in entries if k not in wanted]:
        _remove_outputs(dirs, entries[gone]["index"])
        del entries[gone]
    todo: list[tuple[str, Path, int]] = []
    reused = 0
    for key, path in wanted.items():
        entry = entries.get(key)
        try:
            size, mtime_ns = _file_key(path)
        except OSError:
            size, mtime_ns = -1, -1
        if _is_reusable(entry, size, mtime_ns, dirs):
            reused += 1
            continue
        if entry is None:
            entry = {"index": state["next_index"]}
            state["next_index"] += 1
            entries[key] = entry
        _remove_outputs(dirs, entry["index"])
        entry.update(size_bytes=size, mtime_ns=mtime_ns, status="pending", names=[], duration_s=0.0)
        todo.append((key, path, entry["index"]))
    return todo, reused


def _summarise(
    entries: Mapping[str, Mapping[str, Any]], wanted: Mapping[str, Path]
) -> tuple[list[str], float, list[SkippedFile]]:
    """Segment names, their total duration and the skipped clips, from the state's entries."""
    names: list[str] = []
    duration = 0.0
    skipped: list[SkippedFile] = []
    for key, entry in entries.items():
        if entry.get("status") == "done":
            names.extend(entry["names"])
            duration += entry["duration_s"]
        elif entry.get("status") == "skipped":
            skipped.append(
                SkippedFile(str(wanted.get(key, key)), entry.get("reason", ""), entry.get("code", ""))
            )
    return names, duration, skipped


def _segment_sort_key(name: str) -> tuple[int, int]:
    file_index, _, segment = name.removesuffix(".wav").partition("_")
    return int(file_index), int(segment)


def _run_pool(
    args: list[tuple[Any, ...]],
    workers: int,
    record: Callable[[_FileOutcome], None],
    reused: int,
    total: int,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> None:
    """Run :func:`_prepare_file` over ``args`` in ``workers`` spawned processes."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending = {pool.submit(_prepare_file, *job) for job in args}
        done_count = 0
        try:
            while pending:
                check_stop(should_stop)
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished:
                    record(future.result())
                    done_count += 1
                    report(progress, (reused + done_count) / max(1, total), "slicing clips")
        except BaseException:
            # Clips still running finish, but stay 'pending' in the state and are redone next time.
            for future in pending:
                future.cancel()
            raise
