"""Training features: RVC's F0 and content features per prepared 16 kHz segment, cached on disk.

Size: one resumable extraction (cache, state file, process pool); its tasks are small.

For every segment ``<work_dir>/1_16k_wavs/<name>.wav`` (written by :mod:`train.dataset`):

* ``2a_f0/<name>.npy``: coarse pitch, (P,) int64 in 1..255 (pitch models only);
* ``2b-f0nsf/<name>.npy``: F0 in Hz, (P,) float32, 0 = unvoiced (pitch models only);
* ``3_feature256/<name>.npy`` (v1) or ``3_feature768/<name>.npy`` (v2): content features,
  (T, C) float32 at 50 frames/s, ``T = (L - 400) // 320 + 1``, not upsampled.

``P = L // 160`` (100 frames/s). These are the folder and file names RVC's training reads.

The work is resumable: ``features_state.json`` records, per segment, the size and mtime of its
source and which outputs are done, together with the settings that produced them (content
encoder, version, F0 method). A rerun skips what is done, redoes segments whose source changed
and redoes everything a changed setting affects. Every ``.npy`` is written atomically and
recorded only after it is complete, so a killed run never leaves a half file counted as done.

While this process computes content features with torch, F0 for CPU methods runs in a pool of
spawned worker processes (each builds its own pitch extractor, one torch thread each).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from infer import rvc
from infer.errors import TimbreError
from infer.progress import ProgressFn, StopFn, check_stop, report

log = logging.getLogger(__name__)

GT_WAVS_DIRNAME = "0_gt_wavs"
WAVS_16K_DIRNAME = "1_16k_wavs"
F0_COARSE_DIRNAME = "2a_f0"
F0_HZ_DIRNAME = "2b-f0nsf"
FEATURE_STATE_FILENAME = "features_state.json"
STATE_FORMAT = 1
CONTENT_SAMPLE_RATE_HZ = 16000
F0_HOP_LENGTH = 160
STATE_SAVE_INTERVAL_S = 2.0
POLL_INTERVAL_S = 0.2
MIN_POOL_SEGMENTS = 4
"""Below this many F0 jobs, spawning worker processes costs more than it saves."""


class FeatureError(TimbreError):
    """Features cannot be extracted or read (no segments, wrong sample rate, nothing extracted...)."""


@dataclass(frozen=True)
class FailedSegment:
    """A segment whose features could not be computed, with the reason."""

    name: str
    reason: str


@dataclass(frozen=True)
class FeatureSummary:
    """Result of :func:`extract_features`.

    Attributes:
        feature_dir: the content-feature folder (``3_feature256`` or ``3_feature768``).
        done: segments for which this run computed something.
        skipped: segments already complete from an earlier run.
        failures: segments that failed now (their outputs are absent).
        total_frames: content frames over all complete segments.
        elapsed_s: wall time of the call.
    """

    feature_dir: Path
    done: int
    skipped: int
    failures: tuple[FailedSegment, ...]
    total_frames: int
    elapsed_s: float

    @property
    def failed(self) -> int:
        """Number of failed segments."""
        return len(self.failures)


@dataclass(frozen=True)
class TrainingExample:
    """One training example as RVC's data loader wants it (paths of the files of one segment).

    Attributes:
        name: segment name without suffix (``"3_12"``).
        gt_wav_path: model-rate audio in ``0_gt_wavs``.
        feature_path: (T, C) float32 content features.
        f0_coarse_path: (P,) int coarse pitch, or None for models without pitch.
        f0_hz_path: (P,) float32 F0 in Hz, or None for models without pitch.
    """

    name: str
    gt_wav_path: Path
    feature_path: Path
    f0_coarse_path: Path | None = None
    f0_hz_path: Path | None = None


def feature_dir(work_dir: str | os.PathLike[str], version: str) -> Path:
    """The content-feature folder of ``version`` ('v1' or 'v2') in ``work_dir``."""
    _check_version(version)
    return Path(work_dir) / rvc.layout(version).feature_dirname


def extract_features(
    work_dir: str | os.PathLike[str],
    *,
    version: str,
    use_f0: bool,
    f0_method: str,
    content_encoder: str | Path,
    pretrained_dir: Path | None,
    device: str = "cpu",
    workers: int = 2,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> FeatureSummary:
    """Compute (or reuse) F0 and content features for every prepared segment.

    Args:
        work_dir: the training work folder holding ``1_16k_wavs/``.
        version: 'v1' (layer 9 + final_proj, 256-d for HuBERT base) or 'v2' (last layer, 768-d).
        use_f0: also extract pitch (for pitch models).
        f0_method: pitch method name (pm, harvest, crepe, crepe-tiny, fcpe, rmvpe).
        content_encoder: a registered encoder name (``hubert_base``) or a checkpoint path.
        pretrained_dir: folder of the base files (content encoder, rmvpe.pt); None = default.
        device: where content features (and F0 on a GPU device) are computed.
        workers: F0 worker processes for CPU methods; 1 computes F0 in this process.
        progress: receives (fraction, message).
        should_stop: checked between segments; raises Cancelled after saving what is done.

    Returns:
        Counts of computed, reused and failed segments, total content frames and wall time.

    Raises:
        FeatureError: no prepared segments.
        Cancelled: ``should_stop`` returned True (a rerun continues where this one stopped).
        ModelLoadError, AssetError, PitchMethodUnavailable: the encoder or pitch method is unusable.
    """
    _check_version(version)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    started = time.monotonic()
    work = Path(work_dir)
    wav_dir = work / WAVS_16K_DIRNAME
    names = _segment_names(wav_dir)
    content_dir = work / rvc.layout(version).feature_dirname
    coarse_dir, hz_dir = work / F0_COARSE_DIRNAME, work / F0_HZ_DIRNAME
    out_dirs = [content_dir, coarse_dir, hz_dir] if use_f0 else [content_dir]
    for folder in out_dirs:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(folder, set(names))

    state_path = work / FEATURE_STATE_FILENAME
    state = _load_state(state_path)
    content_key = {"version": version, "encoder": _encoder_identity(content_encoder)}
    f0_key = {"method": f0_method.strip().lower()}
    entries: dict[str, dict[str, Any]] = state["segments"]
    if state.get("content") != content_key:
        for name, entry in entries.items():
            entry["content_frames"] = None
            _unlink(content_dir / f"{name}.npy")
        state["content"] = content_key
    if use_f0 and state.get("f0") != f0_key:
        for name, entry in entries.items():
            entry["f0_frames"] = None
            _unlink(coarse_dir / f"{name}.npy", hz_dir / f"{name}.npy")
        state["f0"] = f0_key
    for gone in [n for n in entries if n not in names]:
        del entries[gone]

    content_todo: list[str] = []
    f0_todo: list[str] = []
    for name in names:
        size, mtime_ns = _file_key(wav_dir / f"{name}.wav")
        entry = entries.get(name)
        if entry is None or entry.get("size_bytes") != size or entry.get("mtime_ns") != mtime_ns:
            entry = {"size_bytes": size, "mtime_ns": mtime_ns, "content_frames": None, "f0_frames": None}
            entries[name] = entry
            _unlink(content_dir / f"{name}.npy", coarse_dir / f"{name}.npy", hz_dir / f"{name}.npy")
        if entry.get("content_frames") is None or not (content_dir / f"{name}.npy").is_file():
            entry["content_frames"] = None
            content_todo.append(name)
        if use_f0 and (
            entry.get("f0_frames") is None
            or not (coarse_dir / f"{name}.npy").is_file()
            or not (hz_dir / f"{name}.npy").is_file()
        ):
            entry["f0_frames"] = None
            f0_todo.append(name)
    _save_state(state_path, state)
    log.info(
        "features: %d segments, content to do %d, F0 to do %d", len(names), len(content_todo), len(f0_todo)
    )

    run = _Run(
        state=state,
        state_path=state_path,
        total_units=len(content_todo) + len(f0_todo),
        progress=progress,
    )
    try:
        if content_todo or f0_todo:
            _run_jobs(
                run,
                _Folders(wav=wav_dir, content=content_dir, coarse=coarse_dir, hz=hz_dir),
                _Extraction(version, f0_method, content_encoder, pretrained_dir, device, workers),
                (content_todo, f0_todo),
                should_stop,
            )
    finally:
        _save_state(state_path, state)

    touched = set(content_todo) | set(f0_todo)
    failed_names = set(run.failures)
    total_frames = sum(int(entries[n].get("content_frames") or 0) for n in names if n not in failed_names)
    summary = FeatureSummary(
        feature_dir=content_dir,
        done=len(touched - failed_names),
        skipped=len(names) - len(touched),
        failures=tuple(FailedSegment(n, run.failures[n]) for n in names if n in failed_names),
        total_frames=total_frames,
        elapsed_s=time.monotonic() - started,
    )
    for failure in summary.failures:
        log.warning("features for segment %s failed: %s", failure.name, failure.reason)
    report(progress, 1.0, f"features ready for {len(names) - summary.failed} of {len(names)} segments")
    return summary


def load_training_features(work_dir: str | os.PathLike[str], version: str) -> np.ndarray:
    """All content-feature frames of the prepared segments, stacked (for the retrieval index).

    Returns:
        (N, C) float32, segments in name order, frames in time order.

    Raises:
        FeatureError: no features extracted, or files of different widths.
    """
    folder = feature_dir(work_dir, version)
    names = _segment_names(Path(work_dir) / WAVS_16K_DIRNAME)
    arrays: list[np.ndarray] = []
    missing = 0
    for name in names:
        path = folder / f"{name}.npy"
        if not path.is_file():
            missing += 1
            continue
        arrays.append(_load_feature_file(path))
    if not arrays:
        raise FeatureError(f"no content features in {folder}; run feature extraction first")
    widths = sorted({a.shape[1] for a in arrays})
    if len(widths) > 1:
        raise FeatureError(
            f"the features in {folder} have different widths {widths}; "
            "they come from different content encoders, extract the features again"
        )
    if missing:
        log.warning("%d of %d segments have no content features in %s", missing, len(names), folder)
    return np.concatenate(arrays, axis=0)


def list_training_examples(
    work_dir: str | os.PathLike[str], version: str, *, use_f0: bool
) -> list[TrainingExample]:
    """The segments that have every file training needs (RVC's filelist), in name order.

    A segment is listed when its ``0_gt_wavs`` audio, its content features and (for pitch
    models) both F0 files exist.

    Raises:
        FeatureError: no segment is complete.
    """
    work = Path(work_dir)
    content_dir = feature_dir(work, version)
    gt_dir = work / GT_WAVS_DIRNAME
    coarse_dir, hz_dir = work / F0_COARSE_DIRNAME, work / F0_HZ_DIRNAME
    gt_names = {p.stem for p in gt_dir.glob("*.wav") if not p.name.startswith(".")}
    examples: list[TrainingExample] = []
    for name in sorted(gt_names, key=_segment_sort_key):
        feature_path = content_dir / f"{name}.npy"
        if not feature_path.is_file():
            continue
        coarse_path = hz_path = None
        if use_f0:
            coarse_path, hz_path = coarse_dir / f"{name}.npy", hz_dir / f"{name}.npy"
            if not (coarse_path.is_file() and hz_path.is_file()):
                continue
        examples.append(TrainingExample(name, gt_dir / f"{name}.wav", feature_path, coarse_path, hz_path))
    if not examples:
        needed = "audio, content features and F0 files" if use_f0 else "audio and content features"
        raise FeatureError(
            f"no training segment in {work} has its {needed}; prepare the dataset and extract features first"
        )
    return examples


# --------------------------------------------------------------------------- the work


@dataclass
class _Run:
    """Book-keeping of one extraction run (main process only)."""

    state: dict[str, Any]
    state_path: Path
    total_units: int
    progress: ProgressFn | None
    done_units: int = 0
    last_save: float = field(default_factory=time.monotonic)
    failures: dict[str, str] = field(default_factory=dict)

    def record(self, kind: str, name: str, frames: int | None, error: str | None) -> None:
        entry = self.state["segments"][name]
        if error is None:
            entry[f"{kind}_frames"] = frames
        else:
            entry[f"{kind}_frames"] = None
            self.failures.setdefault(name, f"{kind}: {error}")
        self.done_units += 1
        report(
            self.progress,
            self.done_units / max(1, self.total_units),
            f"{'content features' if kind == 'content' else 'F0'}: {name}",
        )
        if time.monotonic() - self.last_save >= STATE_SAVE_INTERVAL_S:
            _save_state(self.state_path, self.state)
            self.last_save = time.monotonic()


@dataclass(frozen=True)
class _Folders:
    """Where a run reads the segments and writes each kind of feature."""

    wav: Path
    content: Path
    coarse: Path
    hz: Path


@dataclass(frozen=True)
class _Extraction:
    """How features are computed: the layout, the methods, where their weights are, the workers."""

    version: str
    f0_method: str
    content_encoder: str | Path
    pretrained_dir: Path | None
    device: str
    workers: int


def _run_jobs(
    run: _Run,
    folders: _Folders,
    job: _Extraction,
    todo: tuple[list[str], list[str]],
    should_stop: StopFn | None,
) -> None:
    """Content features for ``todo[0]`` and F0 for ``todo[1]``, F0 in a process pool when it pays."""
    content_todo, f0_todo = todo
    wav_dir, content_dir, coarse_dir, hz_dir = folders.wav, folders.content, folders.coarse, folders.hz
    version, f0_method, content_encoder = job.version, job.f0_method, job.content_encoder
    pretrained_dir, device, workers = job.pretrained_dir, job.device, job.workers
    import torch

    from infer.content import load_content_encoder
    from infer.pitch import available_methods, get_pitch_extractor

    encoder = None
    if content_todo:
        encoder = load_content_encoder(
            content_encoder, output=version, device=device, pretrained_dir=pretrained_dir
        )
    use_pool = workers > 1 and len(f0_todo) >= MIN_POOL_SEGMENTS and torch.device(device).type == "cpu"
    if f0_todo and (not use_pool or f0_method.strip().lower() not in available_methods(pretrained_dir)):
        # Builds the extractor used below, or fails early with the registry's message when the
        # method or its weights are missing (rather than once per segment in the workers).
        get_pitch_extractor(f0_method, device=device, pretrained_dir=pretrained_dir)

    def f0_args(name: str) -> tuple[Any, ...]:
        return (
            name,
            str(wav_dir / f"{name}.wav"),
            str(coarse_dir / f"{name}.npy"),
            str(hz_dir / f"{name}.npy"),
            f0_method,
            str(pretrained_dir) if pretrained_dir is not None else None,
            device,
        )

    def content(name: str) -> None:
        frames, error = _content_task(encoder, wav_dir / f"{name}.wav", content_dir / f"{name}.npy")
        run.record("content", name, frames, error)

    if not use_pool:
        content_set = set(content_todo)
        f0_set = set(f0_todo)
        for name in dict.fromkeys([*content_todo, *f0_todo]):
            if name in content_set:
                check_stop(should_stop)
                content(name)
            if name in f0_set:
                check_stop(should_stop)
                run.record("f0", *_f0_task(*f0_args(name)))
        return

    import multiprocessing

    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(f0_todo)), mp_context=context, initializer=_init_f0_worker
    )
    pending: set[Future[tuple[str, int | None, str | None]]] = set()
    try:
        pending = {pool.submit(_f0_task, *f0_args(name)) for name in f0_todo}
        for name in content_todo:
            check_stop(should_stop)
            pending = _collect(run, pending, timeout_s=0.0)
            content(name)
        while pending:
            check_stop(should_stop)
            pending = _collect(run, pending, timeout_s=POLL_INTERVAL_S)
    finally:
        # Jobs already running finish (their files are complete but unrecorded: redone next time).
        pool.shutdown(wait=True, cancel_futures=True)


def _collect(
    run: _Run, pending: set[Future[tuple[str, int | None, str | None]]], *, timeout_s: float
) -> set[Future[tuple[str, int | None, str | None]]]:
    """Record finished F0 jobs; return those still pending."""
    finished, still = wait(pending, timeout=timeout_s, return_when=FIRST_COMPLETED)
    for future in finished:
        try:
            result = future.result()
        except BrokenProcessPool as exc:
            raise FeatureError(
                f"an F0 worker process died ({exc}); the machine may be out of memory, "
                "run the extraction again with workers=1"
            ) from exc
        run.record("f0", *result)
    return still


def _init_f0_worker() -> None:
    """Worker process setup: one torch thread each, so the workers share the cores fairly."""
    import torch

    torch.set_num_threads(1)


def _content_task(encoder: Any, wav_path: Path, out_path: Path) -> tuple[int | None, str | None]:
    """Encode one segment and write ``(T, C)`` float32; return (frames, None) or (None, reason)."""
    import torch

    try:
        audio = read_segment_16k(wav_path)
        feats = encoder.encode(torch.from_numpy(audio)[None])[0]
        array = np.ascontiguousarray(feats.detach().to("cpu", torch.float32).numpy())
        if array.ndim != 2 or array.shape[0] == 0:
            raise FeatureError(f"the encoder returned features of shape {array.shape}")
        if not np.isfinite(array).all():
            raise FeatureError("the features contain NaN or Inf (the audio may be corrupt)")
        _save_npy(out_path, array)
    except (TimbreError, OSError, RuntimeError, ValueError) as exc:
        _unlink(out_path)
        return None, str(exc)
    return int(array.shape[0]), None


def _f0_task(
    name: str,
    wav_path: str,
    coarse_path: str,
    hz_path: str,
    method: str,
    pretrained_dir: str | None,
    device: str,
) -> tuple[str, int | None, str | None]:
    """F0 of one segment at ``p_len = L // 160``; runs in this process or a spawned worker.

    Writes Hz (float32) and coarse (int64) files; returns (name, frames, None) or (name, None, reason).
    """
    from infer.pitch import f0_to_coarse, get_pitch_extractor

    try:
        audio = read_segment_16k(Path(wav_path))
        extractor = get_pitch_extractor(
            method, device=device, pretrained_dir=Path(pretrained_dir) if pretrained_dir else None
        )
        f0_hz = np.asarray(extractor.extract(audio, p_len=audio.shape[0] // F0_HOP_LENGTH), dtype=np.float32)
        coarse = f0_to_coarse(f0_hz).astype(np.int64)
        _save_npy(Path(hz_path), f0_hz)
        _save_npy(Path(coarse_path), coarse)
    except (TimbreError, OSError, RuntimeError, ValueError) as exc:
        _unlink(Path(coarse_path), Path(hz_path))
        return name, None, str(exc)
    return name, int(f0_hz.shape[0]), None


def read_segment_16k(path: Path) -> np.ndarray:
    """A prepared segment as (L,) float32 at 16 kHz (channels averaged).

    Raises:
        FeatureError: the file is not at 16 kHz or holds no samples.
        OSError: the file cannot be read.
    """
    import soundfile as sf

    try:
        audio, sample_rate = sf.read(str(path), dtype="float32", always_2d=False)
    except sf.LibsndfileError as exc:
        raise FeatureError(f"cannot read {path.name} ({exc}); prepare the dataset again") from exc
    if sample_rate != CONTENT_SAMPLE_RATE_HZ:
        raise FeatureError(
            f"{path.name} is at {sample_rate} Hz but features need {CONTENT_SAMPLE_RATE_HZ} Hz segments; "
            "prepare the dataset again"
        )
    if audio.ndim == 2:
        audio = audio.mean(axis=1, dtype=np.float32)
    if audio.shape[0] == 0:
        raise FeatureError(f"{path.name} holds no samples; prepare the dataset again")
    return np.ascontiguousarray(audio, dtype=np.float32)


# --------------------------------------------------------------------------- helpers


def _check_version(version: str) -> None:
    if version not in rvc.LAYOUTS:
        raise ValueError(f"version must be one of {rvc.versions()}, got {version!r}")


def _segment_sort_key(name: str) -> tuple[int, int, str]:
    file_index, _, segment = name.partition("_")
    if file_index.isdigit() and segment.isdigit():
        return int(file_index), int(segment), ""
    return 1 << 62, 0, name


def _segment_names(wav_dir: Path) -> list[str]:
    if not wav_dir.is_dir():
        raise FeatureError(f"{wav_dir} does not exist; prepare the dataset before extracting features")
    names = [p.stem for p in wav_dir.glob("*.wav") if p.is_file() and not p.name.startswith(".")]
    if not names:
        raise FeatureError(f"{wav_dir} holds no segments; prepare the dataset before extracting features")
    return sorted(names, key=_segment_sort_key)


def _file_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _encoder_identity(content_encoder: str | Path) -> str:
    """A string that changes when a different content encoder (or a changed file) is used."""
    from infer.content import available_content_encoders

    text = str(content_encoder)
    if not isinstance(content_encoder, Path) and text in available_content_encoders():
        return f"name:{text}"
    path = Path(content_encoder).expanduser()
    try:
        st = path.stat()
    except OSError:
        return f"path:{path}"
    return f"path:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _empty_state() -> dict[str, Any]:
    return {"format": STATE_FORMAT, "content": None, "f0": None, "segments": {}}


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return _empty_state()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("ignoring the unreadable %s (%s); extracting every segment again", path.name, exc)
        return _empty_state()
    valid = (
        isinstance(state, dict)
        and state.get("format") == STATE_FORMAT
        and isinstance(state.get("segments"), dict)
        and all(isinstance(e, dict) for e in state["segments"].values())
    )
    if not valid:
        log.warning("%s has an unknown layout; extracting every segment again", path.name)
        return _empty_state()
    return state


def _save_state(path: Path, state: dict[str, Any]) -> None:
    from infer.fsutil import atomic_write_text

    atomic_write_text(path, json.dumps(state, indent=1))


def _save_npy(path: Path, array: np.ndarray) -> None:
    from infer.fsutil import atomic_write

    atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


def _load_feature_file(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise FeatureError(f"cannot read {path} ({exc}); extract the features again") from exc
    if array.ndim != 2 or array.shape[0] == 0:
        raise FeatureError(f"{path} holds an array of shape {array.shape}, expected (T, C); extract again")
    return np.asarray(array, dtype=np.float32)


def _unlink(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _remove_leftovers(folder: Path, names: Iterable[str]) -> None:
    """Delete temp files of a killed run and ``.npy`` files whose segment no longer exists."""
    keep = set(names)
    for path in folder.iterdir():
        if not path.is_file():
            continue
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)
        elif path.suffix == ".npy" and path.stem not in keep:
            log.info("removing %s: its segment is gone", path)
            path.unlink(missing_ok=True)
