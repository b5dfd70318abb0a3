"""Timbre web studio (Gradio 6).

``python app.py [--host 127.0.0.1] [--port 7860] [--auth user:password | --auth-file F]
[--models-dir D] [--data-dir D] [--pretrained-dir D]``

A thin front: it builds the tabs, maps widgets to typed parameters and calls the library
through the small adapter functions below; the Gradio-free helpers (tables, status texts, widget
values -> params) live in :mod:`train.studio`. Model code lives in ``infer/`` and ``train/``;
heavy modules (torch, the pipeline) are imported on first use, never at import. Training runs
in background worker processes (:mod:`train.jobs`) whose state lives in an SQLite file in the
data folder, so a closed browser or a restarted app finds every job again.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from infer.catalog import (
    ModelEntry,
    delete_model,
    find_model,
    list_models,
    rename_model,
    resolve_data_dir,
    resolve_models_dir,
    validate_model_name,
)
from infer.errors import Cancelled, TimbreError
from infer.progress import ProgressFn, StopFn, check_stop, report
from train.jobs import Job, JobStore, resume_job, start_job
from train.studio import (
    ASSET_TABLE_HEADERS,
    F0_METHOD_CHOICES,
    JOB_TABLE_HEADERS,
    MAX_WORKERS,
    MODEL_TABLE_HEADERS,
    OUTPUT_RATE_CHOICES,
    REFINE_START_CHOICES,
    RUN_ALL,
    SAMPLER_CHOICES,
    SLICE_MODES,
    STAGES_NEEDING_DATA,
    TRAIN_F0_METHOD_CHOICES,
    TRAIN_SAMPLE_RATES,
    TRAIN_STAGES,
    TRAIN_VERSIONS,
    StudioError,
    TrainForm,
    assets_table,
    check_audio_inputs,
    convert_params_from_ui,
    dataset_report_markdown,
    format_bytes,
    job_choices,
    job_status_markdown,
    jobs_table,
    model_info_markdown,
    models_table,
    pretrained_status_markdown,
    safe_stem,
    stage_dataset_uploads,
    train_params_from_ui,
)

log = logging.getLogger("timbre.app")

APP_DIR = Path(__file__).resolve().parent
CSS_PATH = APP_DIR / "assets" / "studio.css"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
JOBS_DB_NAME = "jobs.sqlite3"
MAX_UPLOAD_SIZE = "4gb"
CONVERT_CONCURRENCY = 1  # conversions run one at a time; the rest wait in Gradio's queue
DEFAULT_CONCURRENCY = 4  # light handlers (lists, polls, renames)
QUEUE_MAX_SIZE = 64
POLL_INTERVAL_S = 2.0
SAMPLE_RATE_16K = 16000
F0_FRAME_RATE_HZ = 100
MAX_PLOT_POINTS = 1500
MAX_METRIC_ROWS = 5000
MAX_CHART_POINTS = 500
LOG_TAIL_LINES = 30
DEVICE_CHOICES = ("auto", "cpu", "cuda")
PRECISION_CHOICES = [
    ("auto (bf16 where the CPU has it)", "auto"),
    ("fp32 (RVC's exact numbers)", "fp32"),
    ("bf16 (about 2x faster on CPU)", "bf16"),
]
INDEX_AUTO = "(model's own index)"
INDEX_NONE = "(no index)"
TRAIN_SIZE_CHOICES = [("full (RVC networks)", "full"), ("tiny (quick trial)", "tiny")]
# The one place that says which function runs each training button (see train.jobs).
TRAIN_TARGETS = {stage: "train.pipeline:run_stage" for stage in (*TRAIN_STAGES, RUN_ALL)}
STAGE_BUTTON_LABELS = {
    "prepare": "1 Prepare",
    "extract": "2 Extract",
    "fit": "3 Train",
    "index": "4 Index",
    "diffusion": "5 Diffusion",
    "distill": "6 Distil",
    "report": "7 Report",
    "export": "8 Export",
}
SELFTEST_TARGET = "train.jobs:selftest_job"
SELFTEST_EXPERIMENT = "selftest"
GENERIC_ERROR = "Something went wrong on the server ({kind}); the details are in its log."


@dataclass(frozen=True)
class StudioPaths:
    """Where the studio reads and writes."""

    models_dir: Path
    data_dir: Path
    pretrained_dir: Path

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def experiments_dir(self) -> Path:
        return self.data_dir / "experiments"

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def jobs_db(self) -> Path:
        return self.data_dir / JOBS_DB_NAME

    def work_dir(self, experiment: str) -> Path:
        return self.experiments_dir / validate_model_name(experiment)


# --------------------------------------------------------------------------------------------
# Error handling, stop flags, worker processes


def ui_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """TimbreError -> gr.Error with its message; anything else -> logged, short generic gr.Error."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except TimbreError as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:
            log.exception("%s failed", fn.__name__)
            raise gr.Error(GENERIC_ERROR.format(kind=type(exc).__name__)) from None

    return wrapper


class StopFlags:
    """One stop flag per (task, browser session): the Cancel button sets the running task's flag."""

    def __init__(self) -> None:
        self._flags: dict[tuple[str, str], threading.Event] = {}
        self._lock = threading.Lock()

    def begin(self, task: str, session: str) -> threading.Event:
        flag = threading.Event()
        with self._lock:
            self._flags[(task, session)] = flag
        return flag

    def end(self, task: str, session: str, flag: threading.Event) -> None:
        with self._lock:
            if self._flags.get((task, session)) is flag:
                del self._flags[(task, session)]

    def stop(self, task: str, session: str) -> bool:
        with self._lock:
            flag = self._flags.get((task, session))
        if flag is None:
            return False
        flag.set()
        return True


class WorkerProcesses:
    """Worker processes started by this app, polled so finished ones are reaped."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.append(proc)

    def reap(self) -> int:
        """Collect finished workers; return how many are still running."""
        with self._lock:
            self._procs = [p for p in self._procs if p.poll() is None]
            return len(self._procs)


def _session(request: gr.Request | None) -> str:
    return (getattr(request, "session_hash", None) or "default") if request is not None else "default"


def _gradio_progress(progress: gr.Progress) -> ProgressFn:
    def update(fraction: float, stage: str) -> None:
        progress(min(1.0, max(0.0, fraction)), desc=stage)

    return update


# --------------------------------------------------------------------------------------------
# Chart data (pure)


def f0_plot_frame(
    f0_source_hz: np.ndarray | None,
    f0_target_hz: np.ndarray | None,
    *,
    frame_rate_hz: float = F0_FRAME_RATE_HZ,
    max_points: int = MAX_PLOT_POINTS,
) -> pd.DataFrame:
    """Long-format F0 curves (time_s, f0_hz, series) for gr.LinePlot; unvoiced frames dropped.

    Args:
        f0_source_hz: (T,) input F0, 0 where unvoiced.
        f0_target_hz: (T,) F0 given to the synthesizer (after the pitch shift).
    """
    frames = []
    for label, curve in (("input", f0_source_hz), ("output", f0_target_hz)):
        if curve is None or len(curve) == 0:
            continue
        f0 = np.asarray(curve, dtype=np.float64).reshape(-1)
        stride = max(1, int(np.ceil(len(f0) / max_points)))
        index = np.arange(0, len(f0), stride)
        values = f0[index]
        voiced = np.isfinite(values) & (values > 0)
        frames.append(
            pd.DataFrame({"time_s": index[voiced] / frame_rate_hz, "f0_hz": values[voiced], "series": label})
        )
    if not frames:
        return pd.DataFrame({"time_s": [], "f0_hz": [], "series": []})
    return pd.concat(frames, ignore_index=True)


def metrics_frame(
    rows: Sequence[tuple[int, dict[str, float | None]]],
    max_points: int = MAX_CHART_POINTS,
    *,
    prefix: str = "loss",
) -> pd.DataFrame:
    """Long-format curves (step, value, metric) of the metrics named ``prefix*``, thinned to ``max_points``.

    The trainers also report learning rate, speed and gradient norms; the chart shows the losses
    (``loss_mel``, and the diffusion stages' ``diffusion/loss``, ``distill/loss``).
    """
    stride = max(1, int(np.ceil(len(rows) / max_points)))
    kept = list(rows[::stride])
    if rows and kept[-1] is not rows[-1]:
        kept.append(rows[-1])
    records = [
        {"step": step, "value": value, "metric": name}
        for step, values in kept
        for name, value in values.items()
        if value is not None and name.rsplit("/", 1)[-1].startswith(prefix)
    ]
    if not records:
        return pd.DataFrame({"step": [], "value": [], "metric": []})
    return pd.DataFrame.from_records(records)


# --------------------------------------------------------------------------------------------
# Conversion adapter


def pick_device(choice: str) -> str:
    if choice in ("cpu", "cuda") or choice.startswith("cuda:"):
        return choice
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _fresh_output_dir(outputs_dir: Path) -> Path:
    folder = outputs_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    folder.mkdir(parents=True)
    return folder


def resolve_index_choice(paths: StudioPaths, entry: ModelEntry, choice: str | None) -> Path | None:
    """The index the user picked: the model's own, none, or one under the models folder."""
    if not choice or choice == INDEX_AUTO:
        return entry.index_path
    if choice == INDEX_NONE:
        return None
    root = paths.models_dir.resolve()
    path = (root / choice).resolve()
    if not path.is_relative_to(root) or path.suffix != ".index" or not path.is_file():
        raise StudioError(f"index {choice!r} is not an .index file in the models folder; refresh the list")
    return path


def index_choices(entries: Sequence[ModelEntry], models_dir: Path) -> list[str]:
    found = []
    for e in entries:
        if e.index_path is not None:
            try:
                found.append(e.index_path.relative_to(models_dir).as_posix())
            except ValueError:
                continue
    return [INDEX_AUTO, INDEX_NONE, *sorted(set(found))]


@dataclass(frozen=True)
class ConvertOutcome:
    """What a batch conversion produced."""

    outputs: tuple[Path, ...]
    archive: Path | None
    f0_source_hz: np.ndarray | None
    f0_target_hz: np.ndarray | None
    failures: tuple[str, ...]
    summary: str


def convert_files(
    inputs: Sequence[Path],
    entry: ModelEntry,
    params: dict[str, Any],
    *,
    index_path: Path | None,
    out_dir: Path,
    pretrained_dir: Path,
    device: str,
    precision: str = "auto",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> ConvertOutcome:
    """Convert each input into ``entry``'s voice; WAVs (and a zip for several) in ``out_dir``.

    With several inputs, a file the library rejects (TimbreError) is reported and skipped; with
    one input, the error is raised. A single input is decoded before the model loads, so a
    broken file is reported at once.
    """
    from infer.audio import load_audio, save_audio

    count = len(inputs)
    decoded = {0: load_audio(inputs[0], SAMPLE_RATE_16K)} if count == 1 else {}
    report(progress, 0.0, "loading the voice model")
    from infer.pipeline import ConvertParams, Resources, convert, load_voice

    try:
        convert_params = ConvertParams.from_dict(params)
    except ValueError as exc:
        raise StudioError(f"invalid conversion settings: {exc}") from exc
    voice = load_voice(entry.pth_path, index_path, device=device)
    try:
        resources = Resources(pretrained_dir=pretrained_dir, device=device, precision=precision)
    except ValueError as exc:
        raise StudioError(f"invalid conversion settings: {exc}") from exc
    outputs: list[Path] = []
    failures: list[str] = []
    first = None
    for number, path in enumerate(inputs):
        check_stop(should_stop)

        def file_progress(fraction: float, stage: str, number: int = number, name: str = path.name) -> None:
            label = f"{name} ({number + 1}/{count}): {stage}" if count > 1 else stage
            report(progress, (number + fraction) / count, label)

        try:
            audio = decoded.pop(number) if number in decoded else load_audio(path, SAMPLE_RATE_16K)
            result = convert(
                audio,
                voice,
                convert_params,
                resources=resources,
                progress=file_progress,
                should_stop=should_stop,
            )
        except TimbreError as exc:
            if count == 1 or isinstance(exc, Cancelled):
                raise
            failures.append(f"{path.name}: {exc}")
            log.warning("conversion of %s failed: %s", path, exc)
            continue
        target = out_dir / f"{safe_stem(path.name)}_{safe_stem(entry.name)}.wav"
        if target.exists():
            target = out_dir / f"{target.stem}_{number + 1}.wav"
        outputs.append(save_audio(target, result.audio, result.sample_rate))
        if first is None:
            first = result
    if not outputs:
        raise StudioError("no file could be converted:\n" + "\n".join(failures))
    archive = None
    if count > 1:
        archive = out_dir / f"timbre_{safe_stem(entry.name)}_{len(outputs)}_files.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in outputs:
                zf.write(path, arcname=path.name)
    report(progress, 1.0, "done")
    summary = f"Converted {len(outputs)} of {count} file(s) with **{entry.name}**"
    if first is not None:
        summary += f" ({first.precision})"
    if first is not None and first.timings_s:
        summary += " · " + ", ".join(f"{k} {v:.1f} s" for k, v in first.timings_s.items())
    if first is not None and first.warnings:
        summary += "\n\n" + "\n".join(f"- ⚠ {w}" for w in first.warnings)
    if failures:
        summary += "\n\n**Skipped:**\n" + "\n".join(f"- {f}" for f in failures)
    return ConvertOutcome(
        outputs=tuple(outputs),
        archive=archive,
        f0_source_hz=None if first is None else first.f0_source_hz,
        f0_target_hz=None if first is None else first.f0_target_hz,
        failures=tuple(failures),
        summary=summary,
    )


# --------------------------------------------------------------------------------------------
# Assets and device adapters


def device_info_markdown() -> str:
    import platform

    import torch

    lines = [
        f"- Python {platform.python_version()} · torch {torch.__version__} · gradio {gr.__version__}",
        f"- CPU cores: {os.cpu_count()} · torch threads: {torch.get_num_threads()} "
        f"(inter-op {torch.get_num_interop_threads()})",
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(f"- cuda:{i} {props.name} · {format_bytes(props.total_memory)}")
    else:
        lines.append("- CUDA: not available (conversion and training run on the CPU)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Handlers


class Studio:
    """The page's handlers: each maps widget values to typed calls into the library."""

    def __init__(self, paths: StudioPaths) -> None:
        self.paths = paths
        self.store = JobStore(paths.jobs_db)
        self.stops = StopFlags()
        self.workers = WorkerProcesses()

    def entries(self) -> list[ModelEntry]:
        return list_models(self.paths.models_dir)

    def model_choices(self, selected: str | None = None) -> dict[str, Any]:
        """The model dropdown's choices, keeping ``selected`` when it still exists."""
        names = [e.name for e in self.entries()]
        value = selected if selected in names else (names[0] if names else None)
        return gr.update(choices=names, value=value)

    # ---- models --------------------------------------------------------------------------

    @ui_errors
    def refresh_models(self, current: str | None) -> tuple[dict[str, Any], dict[str, Any], str]:
        found = self.entries()
        names = [e.name for e in found]
        value = current if current in names else (names[0] if names else None)
        entry = next((e for e in found if e.name == value), None)
        return (
            gr.update(choices=names, value=value),
            gr.update(choices=index_choices(found, self.paths.models_dir), value=INDEX_AUTO),
            model_info_markdown(entry),
        )

    @ui_errors
    def model_info(self, name: str | None) -> str:
        return model_info_markdown(find_model(self.paths.models_dir, name) if name else None)

    @ui_errors
    def list_models(self) -> list[list[str]]:
        return models_table(self.entries())

    @ui_errors
    def rename_model(self, old: str | None, new: str) -> tuple[list[list[str]], dict[str, Any], str]:
        if not old:
            raise StudioError("choose the model to rename first")
        entry = rename_model(self.paths.models_dir, old, (new or "").strip())
        message = f"Renamed **{old}** to **{entry.name}**."
        return models_table(self.entries()), self.model_choices(entry.name), message

    @ui_errors
    def delete_model(self, name: str | None, confirm: str) -> tuple[list[list[str]], dict[str, Any], str]:
        if not name:
            raise StudioError("choose the model to delete first")
        if (confirm or "").strip() != name:
            raise StudioError(f"to delete, type the model's name ({name}) in the confirmation box")
        delete_model(self.paths.models_dir, name)
        return models_table(self.entries()), self.model_choices(), f"Deleted **{name}**."

    @ui_errors
    def export_model(self, name: str | None) -> tuple[str, str]:
        """Pack a model as ``<name>.zip`` (train.export) in a fresh folder under data/exports."""
        from train.export import export_model_zip

        if not name:
            raise StudioError("choose the model to download first")
        find_model(self.paths.models_dir, name)
        folder = _fresh_output_dir(self.paths.exports_dir)
        archive = export_model_zip(self.paths.models_dir, name, dest=folder)
        return str(
            archive
        ), f"**{name}** packed as `{archive.name}` ({format_bytes(archive.stat().st_size)})."

    @ui_errors
    def import_model(
        self, uploads: list[str] | None, name: str | None, overwrite: bool = False
    ) -> tuple[list[list[str]], dict[str, Any], str]:
        """Install an uploaded zip, or a .pth (+ .index), through train.export's checks."""
        from train.export import import_model_files, import_model_zip

        files = [Path(u) for u in uploads or [] if u]
        if not files:
            raise StudioError("upload a model .zip, or a .pth with its optional .index")
        for path in files:
            if not path.is_file() or path.stat().st_size == 0:
                raise StudioError(f"{path.name} is empty (0 bytes) or did not arrive; upload it again")
        by_suffix: dict[str, list[Path]] = {".zip": [], ".pth": [], ".index": []}
        for path in files:
            by_suffix.setdefault(path.suffix.lower(), []).append(path)
        zips, pths, indexes = by_suffix[".zip"], by_suffix[".pth"], by_suffix[".index"]
        target = (name or "").strip() or None
        if len(zips) == 1 and len(files) == 1:
            imported = import_model_zip(
                zips[0], self.paths.models_dir, name=target, overwrite=bool(overwrite)
            )
        elif len(pths) == 1 and len(indexes) <= 1 and len(files) == 1 + len(indexes):
            imported = import_model_files(
                pths[0],
                indexes[0] if indexes else None,
                self.paths.models_dir,
                name=target,
                overwrite=bool(overwrite),
            )
        else:
            raise StudioError("upload one .zip on its own, or one .pth with at most one .index")
        entry = find_model(self.paths.models_dir, imported)
        message = f"Imported **{imported}**: {model_info_markdown(entry)}"
        return models_table(self.entries()), self.model_choices(imported), message

    # ---- convert ------------------------------------------------------------------------

    @ui_errors
    def convert(
        self,
        model_name: str | None,
        index_choice: str | None,
        single: str | None,
        batch: list[str] | None,
        pitch: float,
        f0_method: str,
        index_rate: float,
        filter_radius: float,
        rms_mix_rate: float,
        protect: float,
        output_rate: str,
        speaker_id: float,
        sampler: str,
        diffusion_steps: float,
        guidance_weight: float,
        refine_start: str,
        refine_strength: float,
        device_choice: str,
        precision: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects the tracker)
    ) -> tuple[str | None, list[str], pd.DataFrame, str]:
        inputs = check_audio_inputs([single, *(batch or [])])
        if not model_name:
            raise StudioError("choose a voice model first (refresh the list if you just added one)")
        entry = find_model(self.paths.models_dir, model_name)
        params = convert_params_from_ui(
            pitch, f0_method, index_rate, int(filter_radius), rms_mix_rate, protect, output_rate,
            speaker_id, sampler, int(diffusion_steps), guidance_weight, refine_start, refine_strength,
        )  # fmt: skip
        session = _session(request)
        flag = self.stops.begin("convert", session)
        try:
            outcome = convert_files(
                inputs,
                entry,
                params,
                index_path=resolve_index_choice(self.paths, entry, index_choice),
                out_dir=_fresh_output_dir(self.paths.outputs_dir),
                pretrained_dir=self.paths.pretrained_dir,
                device=pick_device(device_choice),
                precision=precision or "auto",
                progress=_gradio_progress(progress),
                should_stop=flag.is_set,
            )
        finally:
            self.stops.end("convert", session, flag)
        downloads = [str(outcome.archive)] if outcome.archive else [str(p) for p in outcome.outputs]
        plot = f0_plot_frame(outcome.f0_source_hz, outcome.f0_target_hz)
        return str(outcome.outputs[0]), downloads, plot, outcome.summary

    @ui_errors
    def cancel_convert(self, request: gr.Request) -> str:
        was_running = self.stops.stop("convert", _session(request))
        return "Stopping the conversion..." if was_running else "No conversion is running."

    # ---- training and jobs ----------------------------------------------------------------

    def _job(self, job_id: float | None) -> Job | None:
        if not job_id:
            return None
        try:
            return self.store.get_job(int(job_id))
        except TimbreError:
            return None

    def _job_view(self, job_id: float | None) -> tuple[str, pd.DataFrame, str, str]:
        job = self._job(job_id)
        if job is None:
            return job_status_markdown(None), metrics_frame([]), "", ""
        rows = self.store.latest_metrics(job.id, limit=MAX_METRIC_ROWS)
        log_text = "\n".join(self.store.tail_log(job.id, LOG_TAIL_LINES))
        return job_status_markdown(job), metrics_frame(rows), log_text, self._dataset_report(job.experiment)

    def _dataset_report(self, experiment: str) -> str:
        try:
            return dataset_report_markdown(self.paths.work_dir(experiment))
        except TimbreError as exc:
            return str(exc)

    def _dataset_sources(self, experiment: str, uploads: list[str] | None, folder: str | None) -> list[Path]:
        sources: list[Path] = []
        if folder and folder.strip():
            server_folder = Path(folder.strip()).expanduser()
            if not server_folder.is_dir():
                raise StudioError(f"dataset folder {server_folder} does not exist on the server")
            sources.append(server_folder.absolute())
        sources += stage_dataset_uploads(uploads or [], self.paths.work_dir(experiment) / "uploads")
        if not sources:
            raise StudioError("no dataset: upload audio files or a .zip, or give a folder on the server")
        return sources

    @ui_errors
    def train_stage(
        self,
        stage: str,
        experiment: str,
        sample_rate: str,
        version: str,
        use_f0: bool,
        size: str,
        uploads: list[str] | None,
        folder: str | None,
        use_diffusion: bool,
        use_distillation: bool,
        slice_mode: str,
        use_normalization: bool,
        threshold_db: float,
        segment_s: float,
        f0_method: str,
        epochs: float,
        batch_size: float,
        save_every_epochs: float,
        max_steps: float,
        use_pretrained: bool,
        diffusion_epochs: float,
        diffusion_max_steps: float,
        distill_epochs: float,
        distill_max_steps: float,
        workers: float,
        use_report: bool,
    ) -> tuple[Any, ...]:
        """Create and start a training job for one stage (or all of them)."""
        form = TrainForm(
            experiment=(experiment or "").strip(),
            sample_rate=int(sample_rate),
            version=version,
            use_f0=bool(use_f0),
            size=size,
            slice_mode=slice_mode,
            use_normalization=bool(use_normalization),
            threshold_db=float(threshold_db),
            segment_s=float(segment_s),
            f0_method=f0_method,
            epochs=int(epochs),
            batch_size=int(batch_size),
            save_every_epochs=int(save_every_epochs),
            max_steps=int(max_steps or 0),
            use_pretrained=bool(use_pretrained),
            use_diffusion=bool(use_diffusion),
            use_distillation=bool(use_distillation),
            diffusion_epochs=int(diffusion_epochs),
            diffusion_max_steps=int(diffusion_max_steps or 0),
            distill_epochs=int(distill_epochs),
            distill_max_steps=int(distill_max_steps or 0),
            workers=int(workers),
            use_report=bool(use_report),
        )
        active = self.store.active_job(form.experiment)
        if active is not None:
            raise StudioError(
                f"experiment {form.experiment!r} already has job #{active.id} "
                f"({active.kind}, {active.state}); wait for it or cancel it first"
            )
        needs_data = stage in STAGES_NEEDING_DATA
        dataset = self._dataset_sources(form.experiment, uploads, folder) if needs_data else []
        params = train_params_from_ui(
            stage,
            form,
            dataset,
            work_dir=self.paths.work_dir(form.experiment),
            models_dir=self.paths.models_dir,
            pretrained_dir=self.paths.pretrained_dir,
        )
        job_id = self.store.create_job(form.experiment, stage, params)
        self.workers.add(start_job(self.store, job_id, target=TRAIN_TARGETS[stage]))
        jobs = self.store.list_jobs()
        return (gr.update(choices=job_choices(jobs), value=job_id), *self._job_view(job_id), jobs_table(jobs))

    @ui_errors
    def poll(self, job_id: float | None) -> tuple[Any, ...]:
        self.workers.reap()
        self.store.recover_interrupted()
        return (*self._job_view(job_id), jobs_table(self.store.list_jobs()))

    @ui_errors
    def job_status(self, job_id: float | None) -> tuple[str, pd.DataFrame, str, str]:
        self.store.recover_interrupted()
        return self._job_view(job_id)

    @ui_errors
    def list_jobs(self) -> tuple[dict[str, Any], list[list[Any]]]:
        self.store.recover_interrupted()
        jobs = self.store.list_jobs()
        return gr.update(choices=job_choices(jobs)), jobs_table(jobs)

    @ui_errors
    def cancel_job(self, job_id: float | None) -> str:
        if not job_id:
            raise StudioError("pick a job first")
        return job_status_markdown(self.store.request_cancel(int(job_id)))

    @ui_errors
    def resume_job(self, job_id: float | None) -> str:
        if not job_id:
            raise StudioError("pick a job first")
        self.workers.add(resume_job(self.store, int(job_id)))
        return job_status_markdown(self.store.get_job(int(job_id)))

    def select_job(self, evt: gr.SelectData) -> dict[str, Any]:
        row = getattr(evt, "row_value", None)
        return gr.update(value=int(row[0])) if row else gr.update()

    def page_load(self) -> tuple[dict[str, Any], list[list[Any]]]:
        jobs = self.store.list_jobs()
        shown = next((j.id for j in jobs if j.is_active), jobs[0].id if jobs else None)
        return gr.update(choices=job_choices(jobs), value=shown), jobs_table(jobs)

    @ui_errors
    def pretrained_status(
        self,
        sample_rate: str,
        version: str,
        use_f0: bool,
        size: str = "full",
        use_pretrained: bool = True,
        f0_method: str = "auto",
    ) -> str:
        return pretrained_status_markdown(
            self.paths.pretrained_dir, sample_rate, version, use_f0, size, use_pretrained, f0_method
        )

    @ui_errors
    def selftest(self, steps: float) -> tuple[int, str]:
        params = {"steps": int(steps or 20), "step_s": 0.1}
        job_id = self.store.create_job(SELFTEST_EXPERIMENT, "selftest", params)
        self.workers.add(start_job(self.store, job_id, target=SELFTEST_TARGET))
        return job_id, job_status_markdown(self.store.get_job(job_id))

    # ---- assets and device ----------------------------------------------------------------

    @ui_errors
    def asset_status(self) -> list[list[str]]:
        return assets_table(self.paths.pretrained_dir)

    @ui_errors
    def download_asset(
        self,
        name: str | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects the tracker)
    ) -> tuple[list[list[str]], str]:
        from infer.assets import download_asset

        if not name:
            raise StudioError("choose a file to download")
        session = _session(request)
        flag = self.stops.begin("download", session)
        try:
            path = download_asset(
                name, self.paths.pretrained_dir, progress=_gradio_progress(progress), should_stop=flag.is_set
            )
        finally:
            self.stops.end("download", session, flag)
        return assets_table(self.paths.pretrained_dir), f"`{name}` is ready at `{path}`."

    @ui_errors
    def cancel_download(self, request: gr.Request) -> str:
        if self.stops.stop("download", _session(request)):
            return "Stopping the download (the partial file is kept for a resume)..."
        return "No download is running."

    @ui_errors
    def device_info(self) -> str:
        return device_info_markdown()


# --------------------------------------------------------------------------------------------
# The page: one function per tab lays out its widgets and wires their events


def _convert_tab(demo: gr.Blocks, studio: Studio) -> None:
    initial = studio.entries()
    names = [e.name for e in initial]
    with gr.Tab("Convert") as tab, gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320):
            with gr.Row():
                model = gr.Dropdown(
                    names,
                    value=names[0] if names else None,
                    label="Voice model",
                    allow_custom_value=True,
                    scale=4,
                    elem_id="convert-model",
                )
                refresh = gr.Button("Refresh", scale=1, min_width=80, elem_id="convert-refresh")
            model_info = gr.Markdown(
                model_info_markdown(initial[0] if initial else None), elem_id="convert-model-info"
            )
            single = gr.Audio(
                sources=["upload", "microphone"],
                type="filepath",
                label="Input (upload or record)",
                elem_id="convert-single",
            )
            batch = gr.File(
                file_count="multiple", label="Or several files at once (batch)", elem_id="convert-batch"
            )
            with gr.Row():
                pitch = gr.Slider(-24, 24, value=0, step=1, label="Pitch shift (semitones)")
                f0_method = gr.Dropdown(
                    list(F0_METHOD_CHOICES), value="auto", label="F0 method", elem_id="convert-f0"
                )
            with gr.Accordion("Index, mixing and output", open=False):
                index_choice = gr.Dropdown(
                    index_choices(initial, studio.paths.models_dir),
                    value=INDEX_AUTO,
                    label="Index file",
                    allow_custom_value=True,
                )
                with gr.Row():
                    index_rate = gr.Slider(0, 1, value=0.75, step=0.01, label="Index rate")
                    filter_radius = gr.Slider(0, 7, value=3, step=1, label="Filter radius")
                with gr.Row():
                    rms_mix_rate = gr.Slider(0, 1, value=0.25, step=0.01, label="RMS mix rate")
                    protect = gr.Slider(0, 0.5, value=0.33, step=0.01, label="Protect")
                with gr.Row():
                    output_rate = gr.Dropdown(list(OUTPUT_RATE_CHOICES), value="model", label="Output rate")
                    speaker_id = gr.Number(0, precision=0, minimum=0, label="Speaker id")
                    device = gr.Dropdown(list(DEVICE_CHOICES), value="auto", label="Device")
                    precision = gr.Dropdown(PRECISION_CHOICES, value="auto", label="Arithmetic")
            with gr.Accordion("Diffusion refinement (models with a diffusion head)", open=False):
                sampler = gr.Radio(
                    list(SAMPLER_CHOICES),
                    value="off",
                    label="Sampler (ddpm/ddim: teacher head · lcm: distilled head, 1-4 steps)",
                    elem_id="convert-sampler",
                )
                with gr.Row():
                    steps = gr.Slider(1, 100, value=4, step=1, label="Steps")
                    guidance = gr.Slider(0, 20, value=0.0, step=0.1, label="Guidance weight")
                with gr.Row():
                    refine_start = gr.Radio(
                        list(REFINE_START_CHOICES),
                        value="shallow",
                        label="Start from (shallow: the VITS latent, noise: pure noise)",
                    )
                    refine_strength = gr.Slider(0.05, 1, value=0.5, step=0.05, label="Refine strength")
            with gr.Row():
                convert_btn = gr.Button("Convert", variant="primary", elem_id="convert-button")
                cancel_btn = gr.Button("Cancel")
        with gr.Column(scale=1, min_width=320):
            out_audio = gr.Audio(
                type="filepath",
                label="Result",
                interactive=False,
                buttons=["download"],
                elem_id="convert-result",
            )
            out_files = gr.File(
                label="Download (several files come as one zip)",
                file_count="multiple",
                elem_id="convert-files",
            )
            f0_plot = gr.LinePlot(
                f0_plot_frame(None, None),
                x="time_s",
                y="f0_hz",
                color="series",
                title="F0: input vs output",
                x_title="time (s)",
                y_title="F0 (Hz)",
                height=260,
            )
            status = gr.Markdown(elem_classes="timbre-status", elem_id="convert-status")

    refresh.click(studio.refresh_models, model, [model, index_choice, model_info], api_name="refresh_models")
    model.change(studio.model_info, model, model_info, api_name="model_info")
    gr.on(
        [demo.load, tab.select],
        studio.refresh_models,
        model,
        [model, index_choice, model_info],
        api_visibility="private",
        show_progress="hidden",
    )
    inputs = [
        model, index_choice, single, batch, pitch, f0_method, index_rate, filter_radius, rms_mix_rate,
        protect, output_rate, speaker_id, sampler, steps, guidance, refine_start, refine_strength, device,
        precision,
    ]  # fmt: skip
    event = convert_btn.click(
        studio.convert,
        inputs,
        [out_audio, out_files, f0_plot, status],
        api_name="convert",
        concurrency_limit=CONVERT_CONCURRENCY,
        concurrency_id="convert",
    )
    cancel_btn.click(
        studio.cancel_convert, None, status, cancels=[event], api_name="cancel_convert", queue=False
    )


def _train_tab(demo: gr.Blocks, studio: Studio) -> None:
    with gr.Tab("Train"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                experiment = gr.Textbox(
                    label="Experiment name (becomes the model's name)",
                    placeholder="e.g. alice_v2",
                    max_lines=1,
                    elem_id="train-experiment",
                )
                with gr.Row():
                    rate = gr.Radio(list(TRAIN_SAMPLE_RATES), value="40000", label="Sample rate")
                    version = gr.Radio(list(TRAIN_VERSIONS), value="v2", label="Version")
                with gr.Row():
                    size = gr.Radio(
                        TRAIN_SIZE_CHOICES, value="full", label="Model size", elem_id="train-size"
                    )
                    use_f0 = gr.Checkbox(value=True, label="Pitch (f0)")
                uploads = gr.File(
                    file_count="multiple", label="Dataset: audio files or a .zip", elem_id="train-uploads"
                )
                folder = gr.Textbox(label="...or a folder on the server", max_lines=1)
                with gr.Row():
                    use_diffusion = gr.Checkbox(value=False, label="Train a diffusion head")
                    use_distillation = gr.Checkbox(value=False, label="Distil it for LCM (1-4 steps)")
                    use_report = gr.Checkbox(
                        value=True,
                        label="Report card (hold out clips, score checkpoints)",
                        elem_id="train-report-card",
                    )
                with gr.Accordion("Slicing and F0", open=False, elem_id="train-slicing"):
                    with gr.Row():
                        slice_mode = gr.Dropdown(list(SLICE_MODES), value="auto", label="Slicing")
                        use_norm = gr.Checkbox(value=True, label="Normalise loudness")
                    with gr.Row():
                        threshold_db = gr.Slider(-80, -10, value=-42, step=1, label="Silence threshold (dB)")
                        segment_s = gr.Slider(1.0, 10.0, value=3.7, step=0.1, label="Segment length (s)")
                    f0_method = gr.Dropdown(
                        list(TRAIN_F0_METHOD_CHOICES),
                        value="auto",
                        label="F0 method for extraction (auto: rmvpe if present, else fcpe)",
                        elem_id="train-f0",
                    )
                with gr.Accordion("Schedule and step limits", open=False, elem_id="train-schedule"):
                    with gr.Row():
                        epochs = gr.Slider(1, 1000, value=20, step=1, label="Epochs", elem_id="train-epochs")
                        batch_size = gr.Slider(
                            1, 64, value=8, step=1, label="Batch size", elem_id="train-batch"
                        )
                    with gr.Row():
                        save_every = gr.Slider(1, 100, value=5, step=1, label="Save every N epochs")
                        max_steps = gr.Number(
                            0,
                            precision=0,
                            minimum=0,
                            label="Max steps (0 = no limit)",
                            elem_id="train-max-steps",
                        )
                    use_pretrained = gr.Checkbox(
                        value=True, label="Start from the pretrained base (full size)"
                    )
                    with gr.Row():
                        diffusion_epochs = gr.Slider(1, 500, value=20, step=1, label="Diffusion epochs")
                        diffusion_max_steps = gr.Number(
                            0, precision=0, minimum=0, label="Diffusion max steps", elem_id="train-diff-steps"
                        )
                    with gr.Row():
                        distill_epochs = gr.Slider(1, 500, value=10, step=1, label="Distillation epochs")
                        distill_max_steps = gr.Number(
                            0,
                            precision=0,
                            minimum=0,
                            label="Distillation max steps",
                            elem_id="train-lcm-steps",
                        )
                    workers = gr.Slider(
                        1,
                        MAX_WORKERS,
                        value=min(2, os.cpu_count() or 1),
                        step=1,
                        label="Processes for slicing and F0",
                        elem_id="train-workers",
                    )
                pretrained_md = gr.Markdown(elem_classes="timbre-status", elem_id="train-pretrained")
                with gr.Row(elem_classes="timbre-stage-buttons"):
                    buttons = {
                        stage: gr.Button(label, min_width=88, size="sm")
                        for stage, label in STAGE_BUTTON_LABELS.items()
                    }
                buttons[RUN_ALL] = gr.Button("Run all", variant="primary", elem_id="train-run-all")
            with gr.Column(scale=1, min_width=320):
                with gr.Row():
                    job_pick = gr.Dropdown(
                        [], value=None, label="Job", allow_custom_value=True, scale=4, elem_id="train-job"
                    )
                    refresh_jobs = gr.Button("Refresh", scale=1, min_width=80)
                job_md = gr.Markdown(
                    job_status_markdown(None), elem_classes="timbre-status", elem_id="train-job-status"
                )
                with gr.Row():
                    cancel_btn = gr.Button("Cancel job", elem_classes="timbre-danger", elem_id="train-cancel")
                    resume_btn = gr.Button("Resume", elem_id="train-resume")
                loss_plot = gr.LinePlot(
                    metrics_frame([]), x="step", y="value", color="metric", title="Losses", height=240
                )
                log_box = gr.Textbox(
                    label="Last log lines",
                    lines=8,
                    max_lines=8,
                    elem_classes="timbre-log",
                    elem_id="train-log",
                )
                with gr.Accordion("Dataset report", open=True):
                    report_md = gr.Markdown(elem_id="train-report")
        jobs_df = gr.Dataframe(
            headers=JOB_TABLE_HEADERS,
            label="Jobs (click a row to show it)",
            interactive=False,
            wrap=True,
            max_height=260,
            elem_classes="timbre-table",
        )
        timer = gr.Timer(POLL_INTERVAL_S)  # inside the tab: a bare component in gr.Tabs confuses its tab bar

    inputs = [
        experiment, rate, version, use_f0, size, uploads, folder, use_diffusion, use_distillation,
        slice_mode, use_norm, threshold_db, segment_s, f0_method, epochs, batch_size, save_every, max_steps,
        use_pretrained, diffusion_epochs, diffusion_max_steps, distill_epochs, distill_max_steps, workers,
        use_report,
    ]  # fmt: skip
    view = [job_md, loss_plot, log_box, report_md]
    for stage, button in buttons.items():
        button.click(
            functools.partial(studio.train_stage, stage),
            inputs,
            [job_pick, *view, jobs_df],
            api_name=f"train_{stage}",
            concurrency_limit=1,
            concurrency_id="train_start",
            show_progress="hidden",  # the job's own status shows progress; errors come as a toast
        )
    pretrained_inputs = [rate, version, use_f0, size, use_pretrained, f0_method]
    gr.on(
        [c.change for c in pretrained_inputs],
        studio.pretrained_status,
        pretrained_inputs,
        pretrained_md,
        api_name="pretrained_status",
    )
    refresh_jobs.click(studio.list_jobs, None, [job_pick, jobs_df], api_name="list_jobs")
    job_pick.change(studio.job_status, job_pick, view, api_name="job_status")
    cancel_btn.click(studio.cancel_job, job_pick, job_md, api_name="cancel_job")
    resume_btn.click(studio.resume_job, job_pick, job_md, api_name="resume_job")
    jobs_df.select(studio.select_job, None, job_pick, api_visibility="private")
    timer.tick(studio.poll, job_pick, [*view, jobs_df], api_visibility="private", show_progress="hidden")
    demo.load(studio.page_load, None, [job_pick, jobs_df], api_visibility="private")
    demo.load(studio.pretrained_status, pretrained_inputs, pretrained_md, api_visibility="private")


def _models_tab(demo: gr.Blocks, studio: Studio) -> None:
    initial = studio.entries()
    with gr.Tab("Models") as tab:
        table = gr.Dataframe(
            models_table(initial),
            headers=MODEL_TABLE_HEADERS,
            label="Models",
            interactive=False,
            wrap=True,
            max_height=320,
            elem_classes="timbre-table",
        )
        with gr.Row(equal_height=False):
            with gr.Column(min_width=300):
                pick = gr.Dropdown(
                    [e.name for e in initial],
                    value=None,
                    label="Model",
                    allow_custom_value=True,
                    elem_id="models-pick",
                )
                refresh = gr.Button("Refresh list")
                export_btn = gr.Button("Download as zip", elem_id="models-export")
                export_file = gr.File(label="Model zip", interactive=False, elem_id="models-zip")
            with gr.Column(min_width=300):
                new_name = gr.Textbox(label="New name", max_lines=1)
                rename_btn = gr.Button("Rename")
                confirm = gr.Textbox(label="Type the model's name to confirm deletion", max_lines=1)
                delete_btn = gr.Button("Delete", elem_classes="timbre-danger")
            with gr.Column(min_width=300):
                import_files = gr.File(
                    file_count="multiple",
                    label="Import: a model .zip, or a .pth (+ .index)",
                    elem_id="models-import-files",
                )
                import_name = gr.Textbox(
                    label="Name (optional: default is the zip's model name or the .pth's)", max_lines=1
                )
                overwrite = gr.Checkbox(value=False, label="Replace a model of the same name")
                import_btn = gr.Button("Import", elem_id="models-import")
        status = gr.Markdown(elem_classes="timbre-status", elem_id="models-status")

    changed = [table, pick, status]
    refresh.click(studio.list_models, None, table, api_name="list_models").then(
        studio.model_choices, pick, pick, api_visibility="private"
    )
    gr.on(
        [demo.load, tab.select],
        studio.list_models,
        None,
        table,
        api_visibility="private",
        show_progress="hidden",
    ).then(studio.model_choices, pick, pick, api_visibility="private", show_progress="hidden")
    rename_btn.click(studio.rename_model, [pick, new_name], changed, api_name="rename_model")
    delete_btn.click(studio.delete_model, [pick, confirm], changed, api_name="delete_model")
    export_btn.click(studio.export_model, pick, [export_file, status], api_name="export_model")
    import_btn.click(
        studio.import_model, [import_files, import_name, overwrite], changed, api_name="import_model"
    )


def _assets_tab(demo: gr.Blocks, studio: Studio) -> None:
    from infer.assets import DEFAULT_REGISTRY

    paths = studio.paths
    with gr.Tab("Assets & settings"):
        table = gr.Dataframe(
            headers=ASSET_TABLE_HEADERS,
            label=f"Pretrained files in {paths.pretrained_dir}",
            interactive=False,
            wrap=True,
            max_height=360,
            elem_classes="timbre-table",
        )
        with gr.Row():
            pick = gr.Dropdown(list(DEFAULT_REGISTRY), label="File", scale=3)
            download_btn = gr.Button("Download", variant="primary", scale=1, min_width=100)
            cancel_btn = gr.Button("Cancel", scale=1, min_width=80)
            refresh = gr.Button("Refresh", scale=1, min_width=80)
        status = gr.Markdown(elem_classes="timbre-status")
        with gr.Accordion("Device and threads", open=True):
            device_md = gr.Markdown()
            device_btn = gr.Button("Show device information")
        with gr.Accordion("Background jobs self-test", open=False):
            gr.Markdown("Runs a harmless job in a worker process, to check that training jobs can start.")
            with gr.Row():
                steps = gr.Number(20, precision=0, minimum=1, maximum=1000, label="Steps")
                selftest_btn = gr.Button("Run self-test")
            selftest_id = gr.Number(label="Job id", precision=0, interactive=False)
            selftest_md = gr.Markdown()
        gr.Markdown(
            f"Models: `{paths.models_dir}` · data: `{paths.data_dir}` · pretrained: `{paths.pretrained_dir}`"
        )

    refresh.click(studio.asset_status, None, table, api_name="asset_status")
    event = download_btn.click(
        studio.download_asset,
        pick,
        [table, status],
        api_name="download_asset",
        concurrency_limit=1,
        concurrency_id="download",
    )
    cancel_btn.click(
        studio.cancel_download, None, status, cancels=[event], api_name="cancel_download", queue=False
    )
    device_btn.click(studio.device_info, None, device_md, api_name="device_info")
    selftest_btn.click(studio.selftest, steps, [selftest_id, selftest_md], api_name="jobs_selftest")
    demo.load(studio.asset_status, None, table, api_visibility="private")


def build_app(models_dir: Path, data_dir: Path, pretrained_dir: Path | None = None) -> gr.Blocks:
    """Build the studio. Nothing heavy happens here: no model is loaded, nothing downloaded."""
    if pretrained_dir is None:
        from infer.assets import default_pretrained_dir

        pretrained_dir = default_pretrained_dir()
    studio = Studio(StudioPaths(Path(models_dir), Path(data_dir), Path(pretrained_dir)))
    studio.store.recover_interrupted()
    with gr.Blocks(title="Timbre studio", analytics_enabled=False) as demo:
        gr.Markdown("# Timbre studio", elem_classes="timbre-header")
        with gr.Tabs():
            _convert_tab(demo, studio)
            _train_tab(demo, studio)
            _models_tab(demo, studio)
            _assets_tab(demo, studio)
    return demo


# --------------------------------------------------------------------------------------------
# Command line


def parse_auth(value: str) -> tuple[str, str]:
    """``user:password`` -> (user, password); the password may contain ':'."""
    user, sep, password = value.partition(":")
    if not sep or not user.strip() or not password:
        raise ValueError("credentials must look like user:password, with a non-empty user and password")
    return user.strip(), password


def read_auth_file(path: str | Path) -> list[tuple[str, str]]:
    """One ``user:password`` per line; blank lines and lines starting with '#' are ignored."""
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            pairs.append(parse_auth(text))
        except ValueError as exc:
            raise ValueError(f"{path}, line {number}: {exc}") from None
    if not pairs:
        raise ValueError(f"{path} holds no user:password line")
    return pairs


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str, auth: Sequence[tuple[str, str]] | None) -> bool:
    """Log a warning (and return True) when serving beyond this machine without a login."""
    if is_loopback(host) or auth:
        return False
    logging.warning(
        "serving on %s without --auth: anyone who can reach this address can use the studio, "
        "read its models and start jobs; add --auth user:password or --auth-file FILE",
        host,
    )
    return True


def launch(
    demo: gr.Blocks,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    auth: list[tuple[str, str]] | None = None,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
    data_dir: Path | None = None,
) -> Any:
    """Queue settings and launch options shared by ``main`` and the tests.

    ``data_dir``'s outputs and exports folders are the only extra folders the page may download
    from (besides Gradio's defaults: its cache, the working directory and the temp folder).
    """
    warn_if_exposed(host, auth)
    allowed = [] if data_dir is None else [str(Path(data_dir) / "outputs"), str(Path(data_dir) / "exports")]
    demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY, max_size=QUEUE_MAX_SIZE)
    return demo.launch(
        server_name=host,
        server_port=port,
        auth=auth or None,
        auth_message="Timbre studio: sign in" if auth else None,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        show_error=False,
        max_file_size=MAX_UPLOAD_SIZE,
        ssr_mode=False,
        theme=gr.themes.Soft(),
        css_paths=[CSS_PATH],
        footer_links=["api", "settings"],
        allowed_paths=allowed,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python app.py", description="Timbre studio (web UI)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 7860)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--auth", default=None, help="require this login, as user:password")
    group.add_argument("--auth-file", type=Path, default=None, help="file of user:password lines")
    parser.add_argument(
        "--models-dir", default=None, help="voice models folder (default $TIMBRE_MODELS_DIR or ./models)"
    )
    parser.add_argument("--data-dir", default=None, help="jobs, outputs and experiments (default ./data)")
    parser.add_argument("--pretrained-dir", default=None, help="pretrained base files (default ./pretrained)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    auth: list[tuple[str, str]] | None = None
    try:
        if args.auth is not None:
            auth = [parse_auth(args.auth)]
        elif args.auth_file is not None:
            auth = read_auth_file(args.auth_file)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    data_dir = resolve_data_dir(args.data_dir)
    demo = build_app(
        resolve_models_dir(args.models_dir),
        data_dir,
        Path(args.pretrained_dir).expanduser() if args.pretrained_dir else None,
    )
    launch(demo, host=args.host, port=args.port, auth=auth, data_dir=data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
