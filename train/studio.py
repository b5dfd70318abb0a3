"""Gradio-free glue behind the web studio (``app.py``): widget values -> typed params, tables, texts.

Everything here is a pure function or a small typed value, so it is tested without a browser and
without Gradio. Heavy modules (torch, the pipelines) are never imported here; the few library
modules needed for a status text are imported on first use.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infer.catalog import ModelEntry, validate_model_name
from infer.errors import AudioDecodeError, TimbreError
from train.jobs import Job

log = logging.getLogger(__name__)

BYTES_PER_MB = 1_000_000
# Mirrors infer.pipeline.F0_METHODS (kept here so the page builds without importing torch);
# "auto" means None: the library picks rmvpe when its weights are present, else fcpe.
F0_METHOD_CHOICES = ("auto", "rmvpe", "fcpe", "harvest", "pm", "crepe", "crepe-tiny")
TRAIN_F0_METHOD_CHOICES = ("auto", "rmvpe", "fcpe", "harvest", "pm", "crepe")
SAMPLER_CHOICES = ("off", "ddpm", "ddim", "lcm")
REFINE_START_CHOICES = ("shallow", "noise")
LCM_MAX_STEPS = 4
OUTPUT_RATE_CHOICES = ("model", "16000", "22050", "32000", "40000", "44100", "48000")
TRAIN_SAMPLE_RATES = ("32000", "40000", "48000")
TRAIN_VERSIONS = ("v1", "v2")
TRAIN_SIZES = ("full", "tiny")
SLICE_MODES = ("auto", "fixed", "off")
# Mirrors train.pipeline.STAGES (kept here so the page builds without importing torch).
TRAIN_STAGES = ("prepare", "extract", "fit", "index", "diffusion", "distill", "report", "export")
RUN_ALL = "run_all"
STAGES_NEEDING_DATA = ("prepare", RUN_ALL)
CONTENT_ENCODER_FILE = "hubert_base.pt"
RMVPE_FILE = "rmvpe.pt"
MAX_WORKERS = 16
DATASET_ZIP_MAX_BYTES = 4 << 30
DATASET_ZIP_MAX_FILES = 10_000
DATASET_ZIP_MAX_MEMBER_BYTES = 1 << 30
PROGRESS_BAR_CELLS = 20
MODEL_TABLE_HEADERS = ["name", "sample rate", "version", "f0", "epochs", "size", "index", "diffusion"]
JOB_TABLE_HEADERS = ["id", "experiment", "kind", "state", "progress", "ETA", "updated"]
ASSET_TABLE_HEADERS = ["name", "state", "size", "expected", "download command"]
_UNSAFE_FILE_CHARS_RE = re.compile(r"[^\w.\-]+")


class StudioError(TimbreError):
    """A request from the page cannot be carried out as given (the message says why)."""


# --------------------------------------------------------------------------------------------
# Formatting


def format_bytes(n_bytes: int | None) -> str:
    """1234567 -> '1.2 MB'; None -> '-'."""
    if n_bytes is None:
        return "-"
    if n_bytes < 1000:
        return f"{n_bytes} B"
    if n_bytes < BYTES_PER_MB:
        return f"{n_bytes / 1000:.1f} kB"
    if n_bytes < 1000 * BYTES_PER_MB:
        return f"{n_bytes / BYTES_PER_MB:.1f} MB"
    return f"{n_bytes / (1000 * BYTES_PER_MB):.2f} GB"


def format_eta(eta_s: float | None) -> str:
    """Seconds -> '42 s', '2 min 05 s', '2 h 01 min'; None -> 'estimating...'."""
    if eta_s is None:
        return "estimating..."
    seconds = round(eta_s)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_bar(fraction: float, cells: int = PROGRESS_BAR_CELLS) -> str:
    """A text progress bar, e.g. ``'█████░░░░░ 50%'``."""
    fraction = min(1.0, max(0.0, float(fraction)))
    full = int(fraction * cells + 1e-9)
    return f"{'█' * full}{'░' * (cells - full)} {fraction * 100:.0f}%"


def safe_stem(name: str) -> str:
    """A file-name stem made of word characters, '.', '-' (at most 60 characters)."""
    return _UNSAFE_FILE_CHARS_RE.sub("_", Path(name).stem).strip("._")[:60] or "audio"


def _yes_no(value: Any) -> str:
    if value is None:
        return "?"
    return "yes" if value else "no"


# --------------------------------------------------------------------------------------------
# Models


def models_table(entries: Sequence[ModelEntry]) -> list[list[str]]:
    """Rows for the models table (metadata from timbre.json; '?' where a model has none)."""
    rows = []
    for e in entries:
        meta = e.metadata
        rate = meta.get("sample_rate")
        rows.append(
            [
                e.name,
                f"{int(rate) // 1000} kHz" if isinstance(rate, (int, float)) else "?",
                str(meta.get("version", "?")),
                _yes_no(meta.get("use_f0")),
                str(meta.get("epochs", "?")),
                format_bytes(e.size_bytes),
                "yes" if e.index_path is not None else "no",
                "yes" if e.has_diffusion else "no",
            ]
        )
    return rows


def model_info_markdown(entry: ModelEntry | None) -> str:
    """One line about a model: rate, version, pitch, epochs, size, index, diffusion head."""
    if entry is None:
        return "No model selected. Put models in the models folder or import one in the **Models** tab."
    meta = entry.metadata
    rate = meta.get("sample_rate")
    parts = [
        f"**{entry.name}**",
        f"{int(rate) // 1000} kHz" if isinstance(rate, (int, float)) else "rate unknown",
        str(meta.get("version", "version unknown")),
        "with pitch" if meta.get("use_f0", True) else "no pitch",
        f"{meta['epochs']} epochs" if "epochs" in meta else "",
        format_bytes(entry.size_bytes),
        f"index `{entry.index_path.name}`" if entry.index_path else "no index",
        "diffusion head" if entry.has_diffusion else "no diffusion head (sampler must be off)",
    ]
    return " · ".join(p for p in parts if p)


# --------------------------------------------------------------------------------------------
# Conversion


def convert_params_from_ui(
    pitch_shift_semitones: float,
    f0_method: str,
    index_rate: float,
    filter_radius: int,
    rms_mix_rate: float,
    protect: float,
    output_rate: str,
    speaker_id: float,
    sampler: str,
    diffusion_steps: int,
    guidance_weight: float,
    refine_start: str,
    refine_strength: float,
) -> dict[str, Any]:
    """Widget values -> the keyword dict of ``infer.pipeline.ConvertParams.from_dict``.

    The diffusion keys are sent only when a sampler is chosen; the library checks the ranges and
    whether the model has the head the sampler needs.
    """
    if f0_method not in F0_METHOD_CHOICES:
        raise StudioError(f"unknown F0 method {f0_method!r}; choose one of {', '.join(F0_METHOD_CHOICES)}")
    if output_rate not in OUTPUT_RATE_CHOICES:
        raise StudioError(f"unknown output sample rate {output_rate!r}")
    params: dict[str, Any] = {
        "pitch_shift_semitones": float(pitch_shift_semitones),
        "f0_method": None if f0_method == "auto" else f0_method,
        "index_rate": float(index_rate),
        "filter_radius": int(filter_radius),
        "rms_mix_rate": float(rms_mix_rate),
        "protect": float(protect),
        "output_sample_rate": 0 if output_rate == "model" else int(output_rate),
        "speaker_id": int(speaker_id or 0),
    }
    sampler = (sampler or "off").lower()
    if sampler not in SAMPLER_CHOICES:
        raise StudioError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLER_CHOICES)}")
    if sampler == "off":
        return params
    if sampler == "lcm" and not 1 <= int(diffusion_steps) <= LCM_MAX_STEPS:
        raise StudioError(f"the LCM sampler takes 1 to {LCM_MAX_STEPS} steps, not {int(diffusion_steps)}")
    if refine_start not in REFINE_START_CHOICES:
        raise StudioError(f"refine start must be one of {', '.join(REFINE_START_CHOICES)}")
    params.update(
        sampler=sampler,
        diffusion_steps=int(diffusion_steps),
        guidance_weight=float(guidance_weight),
        refine_start=refine_start,
        refine_strength=float(refine_strength),
    )
    return params


def check_audio_inputs(paths: Sequence[str | Path | None]) -> list[Path]:
    """The uploaded files, or AudioDecodeError for none, a missing or a 0-byte one."""
    files = [Path(p) for p in paths if p]
    if not files:
        raise AudioDecodeError("no audio given: upload a file (or several) or record one, then press Convert")
    for path in files:
        if not path.is_file():
            raise AudioDecodeError(f"{path.name}: the upload did not arrive; upload the file again")
        if path.stat().st_size == 0:
            raise AudioDecodeError(f"{path.name} is empty (0 bytes); upload a real audio file")
    return files


# --------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class TrainForm:
    """The Train tab's settings (everything but the dataset), as typed values.

    Attributes:
        size: ``'full'`` (RVC's networks) or ``'tiny'`` (a quick trial in minutes on a CPU).
        f0_method: a method name, or ``'auto'`` (rmvpe when its weights are present, else fcpe).
        max_steps, diffusion_max_steps, distill_max_steps: step caps (0 = no cap).
        workers: processes for slicing and F0 extraction.
        use_report: hold out a few clips and make the report card (every checkpoint measured).
    """

    experiment: str
    sample_rate: int
    version: str
    use_f0: bool
    size: str
    slice_mode: str
    use_normalization: bool
    threshold_db: float
    segment_s: float
    f0_method: str
    epochs: int
    batch_size: int
    save_every_epochs: int
    max_steps: int
    use_pretrained: bool
    use_diffusion: bool
    use_distillation: bool
    diffusion_epochs: int
    diffusion_max_steps: int
    distill_epochs: int
    distill_max_steps: int
    workers: int
    use_report: bool = True

    def __post_init__(self) -> None:
        validate_model_name(self.experiment)
        if str(self.sample_rate) not in TRAIN_SAMPLE_RATES or self.version not in TRAIN_VERSIONS:
            raise StudioError("choose a sample rate of 32000, 40000 or 48000 and version v1 or v2")
        if self.size not in TRAIN_SIZES:
            raise StudioError(f"model size must be one of {', '.join(TRAIN_SIZES)}")
        if self.slice_mode not in SLICE_MODES:
            raise StudioError(f"slicing must be one of {', '.join(SLICE_MODES)}")
        if self.f0_method not in TRAIN_F0_METHOD_CHOICES:
            raise StudioError(f"F0 method must be one of {', '.join(TRAIN_F0_METHOD_CHOICES)}")
        counts = (self.epochs, self.batch_size, self.save_every_epochs, self.diffusion_epochs)
        if min(counts) < 1 or self.distill_epochs < 1:
            raise StudioError("epochs, batch size and 'save every' must be at least 1")
        if min(self.max_steps, self.diffusion_max_steps, self.distill_max_steps) < 0:
            raise StudioError("step limits must be 0 (no limit) or more")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise StudioError(f"processes must be 1 to {MAX_WORKERS}")
        if self.use_distillation and not self.use_diffusion:
            raise StudioError("distillation needs the diffusion head: tick 'Train a diffusion head' too")


def train_params_from_ui(
    stage: str,
    form: TrainForm,
    dataset: Sequence[Path],
    *,
    work_dir: Path,
    models_dir: Path,
    pretrained_dir: Path,
) -> dict[str, Any]:
    """The params of a training job: ``train.pipeline.TrainSettings`` fields plus ``stage``/``experiment``.

    Plain JSON (see :mod:`train.jobs`): paths are absolute strings, ``slice`` holds
    ``train.slicing.SliceConfig`` keys, ``f0_method`` None means the library's default.
    """
    if stage not in (*TRAIN_STAGES, RUN_ALL):
        raise StudioError(f"unknown training stage {stage!r}")
    return {
        "stage": stage,
        "experiment": form.experiment,
        "work_dir": str(Path(work_dir).absolute()),
        "models_dir": str(Path(models_dir).absolute()),
        "pretrained_dir": str(Path(pretrained_dir).absolute()),
        "dataset": [str(Path(p).absolute()) for p in dataset],
        "sample_rate": form.sample_rate,
        "version": form.version,
        "use_f0": form.use_f0,
        "f0_method": None if form.f0_method == "auto" else form.f0_method,
        "slice": {
            "mode": form.slice_mode,
            "use_normalization": form.use_normalization,
            "threshold_db": form.threshold_db,
            "segment_s": form.segment_s,
        },
        "epochs": form.epochs,
        "batch_size": form.batch_size,
        "save_every_epochs": form.save_every_epochs,
        "max_steps": form.max_steps,
        "use_pretrained": form.use_pretrained and form.size == "full",  # a tiny model has no base
        "size": form.size,
        "use_diffusion": form.use_diffusion,
        "use_distillation": form.use_distillation,
        "diffusion_epochs": form.diffusion_epochs,
        "diffusion_max_steps": form.diffusion_max_steps,
        "distill_epochs": form.distill_epochs,
        "distill_max_steps": form.distill_max_steps,
        "workers": form.workers,
        "use_report": form.use_report,
    }


def stage_dataset_uploads(uploads: Sequence[str | Path], dest_root: Path) -> list[Path]:
    """Copy uploaded clips (and safely unpack uploaded zips) into a new folder under ``dest_root``.

    Returns the copied files and unpacked folders. A 0-byte file, a zip without audio or an unsafe
    zip (``../`` names, links, sizes over the limits) is an error and leaves nothing behind.
    """
    from infer.ziputil import safe_extract_zip
    from infer.options import AUDIO_SUFFIXES

    files = [Path(u) for u in uploads if u]
    for path in files:
        if not path.is_file() or path.stat().st_size == 0:
            raise StudioError(f"{path.name} is empty (0 bytes) or did not arrive; upload it again")
    if not files:
        return []
    dest = dest_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    dest.mkdir(parents=True)
    staged: list[Path] = []
    try:
        for number, path in enumerate(files):
            if path.suffix.lower() == ".zip":
                result = safe_extract_zip(
                    path,
                    dest / f"{number:03d}_{safe_stem(path.name)}",
                    max_total_bytes=DATASET_ZIP_MAX_BYTES,
                    max_files=DATASET_ZIP_MAX_FILES,
                    max_member_bytes=DATASET_ZIP_MAX_MEMBER_BYTES,
                    allowed_suffixes=AUDIO_SUFFIXES,
                )
                if not result.extracted:
                    raise StudioError(f"{path.name} holds no audio files; zip the clips themselves")
                staged.append(result.dest_dir)
            else:
                target = dest / f"{number:03d}_{safe_stem(path.name)}{path.suffix.lower()}"
                shutil.copyfile(path, target)
                staged.append(target)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return staged


def dataset_report_markdown(work_dir: Path) -> str:
    """The dataset report written by train.dataset (``dataset.json``), as Markdown."""
    if not (work_dir / "dataset.json").is_file():
        return "No dataset report yet: it appears once the dataset has been collected (Prepare)."
    from train.dataset import load_manifest

    try:
        found = load_manifest(work_dir).report
    except TimbreError as exc:
        return f"The dataset report cannot be read: {exc}"
    lines = [
        f"**{found.clip_count} clips**, {found.duration_s / 60:.1f} min "
        f"({found.usable_duration_s / 60:.1f} min not silent), "
        f"silence {found.silent_share * 100:.0f}%, clipped samples {found.clipped_share * 100:.2f}%",
    ]
    if found.sample_rates:
        lines.append("native sample rates: " + ", ".join(f"{r} Hz" for r in found.sample_rates))
    lines += [f"- ⚠ {w}" for w in found.warnings]
    if found.skipped:
        lines.append(f"**{len(found.skipped)} files skipped:**")
        lines += [f"- `{Path(s.path).name}`: {s.reason}" for s in found.skipped[:20]]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Jobs


def jobs_table(jobs: Sequence[Job], now: float | None = None) -> list[list[Any]]:
    """Rows for the jobs table, newest first as given."""
    now = time.time() if now is None else now
    rows = []
    for job in jobs:
        age_s = max(0.0, now - job.updated_at)
        rows.append(
            [
                job.id,
                job.experiment,
                job.kind,
                job.state,
                f"{job.fraction * 100:.0f}%",
                format_eta(job.eta_s) if job.state == "running" else "",
                f"{format_eta(age_s)} ago",
            ]
        )
    return rows


def job_choices(jobs: Sequence[Job]) -> list[tuple[str, int]]:
    """(label, id) pairs for the job dropdown."""
    return [(f"#{j.id} {j.experiment} · {j.kind} · {j.state}", j.id) for j in jobs]


def job_status_markdown(job: Job | None) -> str:
    """The job's state, stage, progress bar and ETA (or its error and what to do)."""
    if job is None:
        return "No job selected. Start a stage above, or pick a job from the list."
    head = f"**#{job.id} {job.experiment}** · {job.kind} · **{job.state}**"
    if job.state == "running":
        stage = job.stage or "starting"
        line = f"`{progress_bar(job.fraction)}` · ETA {format_eta(job.eta_s)}"
        if job.is_cancel_requested:
            line += " · stopping..."
        return f"{head}\n\n{stage} · {job.fraction * 100:.1f}%\n\n{line}"
    if job.state == "queued":
        return f"{head}\n\nwaiting for the worker to start"
    detail = f"{job.stage or '-'} · {job.fraction * 100:.1f}%\n\n`{progress_bar(job.fraction)}`"
    if job.error:
        detail += f"\n\n{job.error}"
    if job.is_resumable:
        detail += "\n\nPress **Resume** to continue this job."
    return f"{head}\n\n{detail}"


# --------------------------------------------------------------------------------------------
# Pretrained files


def _file_line(status: Any, what: str) -> str:
    from infer.assets import download_command

    if status is None:
        return f"- `{what}`: not in the registry"
    if status.is_usable:
        return f"- `{status.name}`: present ({format_bytes(status.size_bytes)})"
    if status.state == "missing":
        return f"- `{status.name}`: **missing** · download with `{download_command(status.name)}`"
    return (
        f"- `{status.name}`: **{status.state}** ({format_bytes(status.size_bytes)} on disk, "
        f"{format_bytes(status.expected_size_bytes)} expected) · `{download_command(status.name)}`"
    )


def _whisper_note() -> str:
    """A pointer to the offline content encoder when its package is installed, else ''."""
    try:
        from infer.content.whisper import ENCODER_NAME, ENGLISH_NOTE, has_whisper_package

        if not has_whisper_package():
            return ""
    except ImportError:
        return ""
    return (
        f"\n\nWithout a download: the offline encoder `{ENCODER_NAME}` is installed "
        f"(`python -m train run --content-encoder {ENCODER_NAME} ...`); {ENGLISH_NOTE}."
    )


def pretrained_status_markdown(
    pretrained_dir: Path,
    sample_rate: str | int,
    version: str,
    use_f0: bool,
    size: str = "full",
    use_pretrained: bool = True,
    f0_method: str = "auto",
) -> str:
    """What training with these settings needs from the pretrained folder, and what is missing."""
    from infer.assets import asset_status, pretrained_pair

    status = {s.name: s for s in asset_status(pretrained_dir)}
    encoder = status.get(CONTENT_ENCODER_FILE)
    lines = ["**Files this training needs**", _file_line(encoder, CONTENT_ENCODER_FILE)]
    if encoder is None or encoder.state == "missing":
        lines[-1] += " (the content encoder: feature extraction cannot run without it)"
    if use_f0 and f0_method == "rmvpe":
        lines.append(_file_line(status.get(RMVPE_FILE), RMVPE_FILE))
    elif use_f0 and f0_method == "auto":
        rmvpe = status.get(RMVPE_FILE)
        has_rmvpe = rmvpe is not None and rmvpe.is_usable
        lines.append(f"- F0 'auto' uses {'rmvpe (`rmvpe.pt` present)' if has_rmvpe else 'fcpe'}")
    if size == "tiny":
        lines.append("- tiny model: trains from scratch, no pretrained base needed")
    elif not use_pretrained:
        lines.append("- pretrained base turned off: training from scratch (slower, weaker)")
    else:
        try:
            names = pretrained_pair(version, int(sample_rate), use_f0=bool(use_f0))
        except TimbreError as exc:
            lines.append(f"- pretrained base: {exc}")
        else:
            lines += [_file_line(status.get(n), n) for n in names]
    text = "\n".join(lines)
    if encoder is None or encoder.state == "missing":
        text += _whisper_note()
    return text


def assets_table(pretrained_dir: Path) -> list[list[str]]:
    """Rows for the Assets tab: every registry file, its state and the command that fetches it."""
    from infer.assets import asset_status, download_command

    return [
        [
            s.name,
            s.state,
            format_bytes(s.size_bytes),
            format_bytes(s.expected_size_bytes),
            "" if s.is_usable else download_command(s.name),
        ]
        for s in asset_status(pretrained_dir)
    ]
