"""The studio's handlers: each turns a form's values (by name) into typed calls into the library.

Gradio appears here only at the edges (``gr.update``, ``gr.Request``, ``gr.Progress``, errors as
``gr.Error``); layouts live in :mod:`ui.tabs`, texts and tables in :mod:`ui.views`, form
values -> typed params in :mod:`ui.forms`. Model code is imported on first use, never at import.
Training runs in background worker processes (:mod:`ui.jobs`) whose state lives in an SQLite
file in the data folder, so a closed browser or a restarted app finds every job again.
"""

from __future__ import annotations

import functools
import logging
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from infer.catalog import (
    ModelEntry,
    delete_model,
    find_model,
    list_models,
    rename_model,
    validate_model_name,
)
from infer.errors import TimbreError
from infer.options import DEFAULT_CONTENT_ENCODER, OFFLINE_CONTENT_ENCODER, RUN_ALL, TRAIN_STAGES
from infer.progress import ProgressFn, report
from ui.batch import (
    INDEX_AUTO,
    check_decodable,
    convert_to_folder,
    index_choices,
    load_converter,
    resolve_index_choice,
)
from ui.folders import audio_files_in, dataset_roots, resolve_server_folder
from ui.forms import (
    AUTO,
    STAGES_NEEDING_DATA,
    StudioError,
    check_audio_inputs,
    convert_params_from_page,
    stage_dataset_uploads,
    train_job_params,
    train_settings_from_page,
    with_dataset,
)
from ui.jobs import Job, JobStore, resume_job, start_job
from ui.views import (
    assets_table,
    dataset_report_markdown,
    device_info_markdown,
    f0_plot_frame,
    format_bytes,
    job_choices,
    job_status_markdown,
    jobs_table,
    metrics_frame,
    model_info_markdown,
    models_table,
    pretrained_status_markdown,
)

log = logging.getLogger("timbre.app")

JOBS_DB_NAME = "jobs.sqlite3"
MAX_METRIC_ROWS = 5000
LOG_TAIL_LINES = 30
# The one place that says which function runs each training button (see ui.jobs).
TRAIN_TARGETS = {stage: "train.pipeline:run_stage" for stage in (*TRAIN_STAGES, RUN_ALL)}
SELFTEST_TARGET = "ui.jobs:selftest_job"
SELFTEST_EXPERIMENT = "selftest"
GENERIC_ERROR = "Something went wrong on the server ({kind}); the details are in its log."


@dataclass(frozen=True)
class StudioPaths:
    """Where the studio reads and writes."""

    models_dir: Path
    data_dir: Path
    pretrained_dir: Path
    dataset_roots: tuple[str, ...] = ()
    """Folders the operator allows besides the data folder's datasets area (see :mod:`ui.folders`)."""

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
    def downloads_dir(self) -> Path:
        """Where URL imports download to (a broken transfer resumes from its ``.part`` here)."""
        return self.data_dir / "downloads"

    @property
    def jobs_db(self) -> Path:
        return self.data_dir / JOBS_DB_NAME

    def work_dir(self, experiment: str) -> Path:
        return self.experiments_dir / validate_model_name(experiment)


def shown_folder(folder: Path, paths: StudioPaths | None) -> str:
    """How the page names a server folder: relative to the data or models folder, never absolute."""
    if paths is not None:
        for base, label in ((paths.data_dir, "the data folder"), (paths.models_dir, "the models folder")):
            try:
                relative = Path(folder).absolute().relative_to(Path(base).absolute())
            except ValueError:
                continue
            return f"{relative.as_posix()}/ in {label}" if relative.parts else label
    return "the studio's folder"


def readable_os_error(exc: OSError, paths: StudioPaths | None, folder: Path | None = None) -> TimbreError:
    """An OSError as the page says it: the folder (by its studio name); for a full disk, the free space."""
    from infer.errors import DiskSpaceError
    from infer.fsutil import describe_os_error, disk_full_error, is_disk_full

    filename = getattr(exc, "filename", None)
    if isinstance(exc, DiskSpaceError):
        folder = Path(exc.folder)
    elif filename:
        folder = Path(filename).parent
    elif folder is None:
        folder = paths.data_dir if paths is not None else Path.cwd()
    shown = shown_folder(folder, paths)
    if is_disk_full(exc):
        return disk_full_error(folder, shown=shown)
    reason = exc.strerror or type(exc).__name__
    return describe_os_error(OSError(exc.errno, reason), folder, shown=shown)


def ui_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """TimbreError -> gr.Error with its message; OSError -> the folder (and free space); else generic."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except OSError as exc:  # DiskSpaceError too: the page names folders its own way
            log.warning("%s failed: %s", fn.__name__, exc)
            paths = getattr(args[0], "paths", None) if args else None
            raise gr.Error(str(readable_os_error(exc, paths))) from None
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


def session_of(request: gr.Request | None) -> str:
    return (getattr(request, "session_hash", None) or "default") if request is not None else "default"


def gradio_progress(progress: gr.Progress) -> ProgressFn:
    def update(fraction: float, stage: str) -> None:
        progress(min(1.0, max(0.0, fraction)), desc=stage)

    return update


def fresh_output_dir(outputs_dir: Path) -> Path:
    folder = outputs_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    folder.mkdir(parents=True)
    return folder


class Studio:
    """The page's handlers: each maps widget values to typed calls into the library."""

    max_import_bytes: int | None = None
    """The size limit of a URL import; None: the library's (:class:`infer.library.ImportLimits`)."""

    def __init__(self, paths: StudioPaths) -> None:
        self.paths = paths
        self.roots = dataset_roots(paths.data_dir, paths.dataset_roots)
        self.roots[0].path.mkdir(parents=True, exist_ok=True)
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
        """Pack a model as ``<name>.zip`` (infer.library) in a fresh folder under data/exports."""
        from infer.library import export_model_zip

        if not name:
            raise StudioError("choose the model to download first")
        find_model(self.paths.models_dir, name)
        folder = fresh_output_dir(self.paths.exports_dir)
        try:
            archive = export_model_zip(self.paths.models_dir, name, dest=folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return str(
            archive
        ), f"**{name}** packed as `{archive.name}` ({format_bytes(archive.stat().st_size)})."

    @ui_errors
    def export_onnx(
        self,
        name: str | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects the tracker)
    ) -> tuple[str, str]:
        """Write the model's synthesizer as ``<name>.onnx`` (RVC's signature) in a fresh exports folder."""
        from infer.models import build_synthesizer, load_voice_model
        from infer.onnx_synth import export_onnx

        if not name:
            raise StudioError("choose the model to export first")
        entry = find_model(self.paths.models_dir, name)
        update = gradio_progress(progress)
        report(update, 0.05, f"loading {name}")
        synthesizer = build_synthesizer(load_voice_model(entry.pth_path))
        report(update, 0.2, "exporting the synthesizer to ONNX")
        folder = fresh_output_dir(self.paths.exports_dir)
        try:
            graph = export_onnx(synthesizer, folder / f"{name}.onnx")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        size = format_bytes(graph.stat().st_size)
        return str(graph), (
            f"**{name}** exported as `{graph.name}` ({size}): RVC's ONNX synthesizer "
            "(phone, phone_lengths, pitch, pitchf, ds, rnd -> audio)."
        )

    @ui_errors
    def import_url(
        self,
        url: str | None,
        name: str | None,
        overwrite: bool,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects the tracker)
    ) -> tuple[list[list[str]], dict[str, Any], str]:
        """Fetch a model zip or .pth from an http(s) URL (resumable, size-limited) and install it."""
        from infer.library import ImportLimits
        from infer.remote import import_model_source, is_url

        address = (url or "").strip()
        if not is_url(address):
            raise StudioError("enter the http:// or https:// address of a model .zip or .pth")
        session = session_of(request)
        flag = self.stops.begin("import", session)
        try:
            imported = import_model_source(
                address,
                self.paths.models_dir,
                name=(name or "").strip() or None,
                overwrite=bool(overwrite),
                max_bytes=self.max_import_bytes or ImportLimits().max_total_bytes,
                download_dir=self.paths.downloads_dir,
                progress=gradio_progress(progress),
                should_stop=flag.is_set,
            )
        except OSError as exc:  # DiskSpaceError too: name the folder it was writing
            raise readable_os_error(exc, self.paths, self.paths.models_dir) from exc
        finally:
            self.stops.end("import", session, flag)
        entry = find_model(self.paths.models_dir, imported)
        message = f"Imported **{imported}** from the URL: {model_info_markdown(entry)}"
        return models_table(self.entries()), self.model_choices(imported), message

    @ui_errors
    def cancel_import(self, request: gr.Request) -> str:
        if self.stops.stop("import", session_of(request)):
            return "Stopping the import (the partial download is kept; importing the URL again resumes it)..."
        return "No import is running."

    @ui_errors
    def import_model(
        self, uploads: list[str] | None, name: str | None, overwrite: bool = False
    ) -> tuple[list[list[str]], dict[str, Any], str]:
        """Install an uploaded zip, or a .pth (+ .index), through infer.library's checks."""

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
        try:
            imported = self._import(zips, pths, indexes, len(files), target, bool(overwrite))
        except OSError as exc:  # a write into a hidden staging folder: name the models folder
            raise readable_os_error(exc, self.paths, self.paths.models_dir) from exc
        entry = find_model(self.paths.models_dir, imported)
        message = f"Imported **{imported}**: {model_info_markdown(entry)}"
        return models_table(self.entries()), self.model_choices(imported), message

    def _import(
        self,
        zips: list[Path],
        pths: list[Path],
        indexes: list[Path],
        count: int,
        target: str | None,
        overwrite: bool,
    ) -> str:
        from infer.library import import_model_files, import_model_zip

        if len(zips) == 1 and count == 1:
            return import_model_zip(zips[0], self.paths.models_dir, name=target, overwrite=overwrite)
        if len(pths) == 1 and len(indexes) <= 1 and count == 1 + len(indexes):
            return import_model_files(
                pths[0],
                indexes[0] if indexes else None,
                self.paths.models_dir,
                name=target,
                overwrite=overwrite,
            )
        raise StudioError("upload one .zip on its own, or one .pth with at most one .index")

    # ---- convert ------------------------------------------------------------------------

    @ui_errors
    def convert(
        self,
        values: Mapping[str, Any],
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects the tracker)
    ) -> tuple[str | None, list[str], pd.DataFrame, str]:
        """Convert the uploaded file(s) with the Convert form's settings (by field name)."""
        inputs = check_audio_inputs([values.get("audio"), *(values.get("batch") or [])])
        if not values.get("model"):
            raise StudioError("choose a voice model first (refresh the list if you just added one)")
        entry = find_model(self.paths.models_dir, values["model"])
        params = convert_params_from_page(values)
        if len(inputs) == 1:
            check_decodable(inputs[0])  # a broken file is reported before the model loads
        session = session_of(request)
        flag = self.stops.begin("convert", session)
        out_dir: Path | None = None
        try:
            report_to = gradio_progress(progress)
            report(report_to, 0.0, "loading the voice model")
            converter = load_converter(
                entry,
                resolve_index_choice(self.paths.models_dir, entry, values.get("index")),
                pretrained_dir=self.paths.pretrained_dir,
                device=values.get("device") or "auto",
                precision=values.get("precision") or "auto",
            )
            out_dir = fresh_output_dir(self.paths.outputs_dir)
            outcome = convert_to_folder(
                converter,
                entry.name,
                inputs,
                params,
                out_dir,
                progress=report_to,
                should_stop=flag.is_set,
            )
        except BaseException:
            if out_dir is not None:  # nothing half-written stays: a failed run leaves no folder
                shutil.rmtree(out_dir, ignore_errors=True)
            raise
        finally:
            self.stops.end("convert", session, flag)
        downloads = [str(outcome.archive)] if outcome.archive else [str(p) for p in outcome.outputs]
        plot = f0_plot_frame(outcome.f0_source_hz, outcome.f0_target_hz)
        return str(outcome.outputs[0]), downloads, plot, outcome.summary

    @ui_errors
    def cancel_convert(self, request: gr.Request) -> str:
        was_running = self.stops.stop("convert", session_of(request))
        return "Stopping the conversion..." if was_running else "No conversion is running."

    # ---- training and jobs ----------------------------------------------------------------

    def _job(self, job_id: float | None) -> Job | None:
        if not job_id:
            return None
        try:
            return self.store.get_job(int(job_id))
        except TimbreError:
            return None

    def _job_view(self, job_id: float | None) -> tuple[str, pd.DataFrame | None, str, str]:
        """Status, loss curves, log tail and dataset report of a job.

        The curves are None until there is a point to draw: Gradio 6's LinePlot draws no lines
        for later data once it has been given an empty frame with a colour field.
        """
        job = self._job(job_id)
        if job is None:
            return job_status_markdown(None), None, "", ""
        frame = metrics_frame(self.store.latest_metrics(job.id, limit=MAX_METRIC_ROWS))
        log_text = "\n".join(self.store.tail_log(job.id, LOG_TAIL_LINES))
        curves = frame if len(frame) else None
        return job_status_markdown(job), curves, log_text, self._dataset_report(job.experiment)

    def _dataset_report(self, experiment: str) -> str:
        try:
            return dataset_report_markdown(self.paths.work_dir(experiment))
        except TimbreError as exc:
            return str(exc)

    def _dataset_sources(self, experiment: str, uploads: list[str] | None, folder: str | None) -> list[Path]:
        sources: list[Path] = []
        if folder and folder.strip():
            server_folder, root = resolve_server_folder(folder, self.roots)
            files, ignored = audio_files_in(server_folder, root)
            if ignored:
                log.info("dataset folder: %d audio files, %d other files ignored", len(files), ignored)
            sources += files
        sources += stage_dataset_uploads(uploads or [], self.paths.work_dir(experiment) / "uploads")
        if not sources:
            raise StudioError("no dataset: upload audio files or a .zip, or give a folder on the server")
        return sources

    @ui_errors
    def train_stage(self, stage: str, values: Mapping[str, Any]) -> tuple[Any, ...]:
        """Create and start a training job for one stage (or all of them) from the Train form."""
        experiment = (values.get("experiment") or "").strip()
        settings = train_settings_from_page(
            values,
            work_dir=self.paths.work_dir(experiment),
            models_dir=self.paths.models_dir,
            pretrained_dir=self.paths.pretrained_dir,
        )
        active = self.store.active_job(settings.name)
        if active is not None:
            raise StudioError(
                f"experiment {settings.name!r} already has job #{active.id} "
                f"({active.kind}, {active.state}); wait for it or cancel it first"
            )
        if stage in STAGES_NEEDING_DATA:
            sources = self._dataset_sources(settings.name, values.get("uploads"), values.get("folder"))
            settings = with_dataset(settings, sources)
        job_id = self.store.create_job(settings.name, stage, train_job_params(stage, settings))
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

    def has_active_job(self) -> bool:
        """Whether any job is queued or running (the Train tab then refreshes often)."""
        return any(job.is_active for job in self.store.list_jobs())

    def page_load(self) -> tuple[dict[str, Any], list[list[Any]]]:
        jobs = self.store.list_jobs()
        shown = next((j.id for j in jobs if j.is_active), jobs[0].id if jobs else None)
        return gr.update(choices=job_choices(jobs), value=shown), jobs_table(jobs)

    @ui_errors
    def pretrained_status(self, values: Mapping[str, Any]) -> str:
        """What the Train form's settings need from the pretrained folder."""
        return pretrained_status_markdown(
            self.paths.pretrained_dir,
            values["sample_rate"],
            values["version"],
            values["use_f0"],
            values.get("size", "full"),
            values.get("use_pretrained", True),
            values.get("f0_method", AUTO),
            values.get("content_encoder", DEFAULT_CONTENT_ENCODER),
        )

    def content_encoder_choice(self, current: str | None) -> Any:
        """The Train tab's encoder on page load: the offline one when ``hubert_base.pt`` is missing."""
        from infer.assets import asset_status
        from ui.views import CONTENT_ENCODER_FILE, has_whisper

        if current not in (None, DEFAULT_CONTENT_ENCODER) or not has_whisper():
            return gr.update()
        found = {s.name: s for s in asset_status(self.paths.pretrained_dir)}.get(CONTENT_ENCODER_FILE)
        if found is not None and found.state != "missing":
            return gr.update()
        return gr.update(value=OFFLINE_CONTENT_ENCODER)

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
        session = session_of(request)
        flag = self.stops.begin("download", session)
        try:
            path = download_asset(
                name, self.paths.pretrained_dir, progress=gradio_progress(progress), should_stop=flag.is_set
            )
        finally:
            self.stops.end("download", session, flag)
        return assets_table(self.paths.pretrained_dir), f"`{name}` is ready at `{path}`."

    @ui_errors
    def cancel_download(self, request: gr.Request) -> str:
        if self.stops.stop("download", session_of(request)):
            return "Stopping the download (the partial file is kept for a resume)..."
        return "No download is running."

    @ui_errors
    def device_info(self) -> str:
        return device_info_markdown()
