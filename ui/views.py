"""What the page shows: tables, Markdown status texts and chart data (no Gradio widgets, no model code).

Pure functions of their inputs, tested without a browser; the few library modules a status
text needs are imported on first use.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from infer.catalog import ModelEntry
from infer.errors import TimbreError
from infer.options import DEFAULT_CONTENT_ENCODER, OFFLINE_CONTENT_ENCODER
from ui.jobs import Job

BYTES_PER_MB = 1_000_000
PROGRESS_BAR_CELLS = 20
CONTENT_ENCODER_FILE = "hubert_base.pt"
RMVPE_FILE = "rmvpe.pt"
F0_FRAME_RATE_HZ = 100
MAX_PLOT_POINTS = 1500
MAX_CHART_POINTS = 500
MODEL_TABLE_HEADERS = ["name", "sample rate", "version", "f0", "epochs", "size", "index", "diffusion"]
JOB_TABLE_HEADERS = ["id", "experiment", "kind", "state", "progress", "ETA", "updated"]
ASSET_TABLE_HEADERS = ["name", "state", "size", "expected", "download command"]
_UNSAFE_FILE_CHARS_RE = re.compile(r"[^\w.\-]+")


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


def has_whisper() -> bool:
    try:
        from infer.content.whisper import has_whisper_package
    except ImportError:
        return False
    return has_whisper_package()


def _whisper_missing() -> str:
    from infer.content.whisper import INSTALL_HINT

    return f"**not installed** ({INSTALL_HINT})"


def _whisper_note() -> str:
    """A pointer to the offline content encoder when its package is installed, else ''."""
    if not has_whisper():
        return ""
    from infer.content.whisper import ENCODER_NAME, ENGLISH_NOTE

    return (
        f"\n\nWithout a download: choose the offline encoder `{ENCODER_NAME}` under *Content encoder* "
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
    content_encoder: str = DEFAULT_CONTENT_ENCODER,
) -> str:
    """What training with these settings needs from the pretrained folder, and what is missing."""
    from infer.assets import asset_status, pretrained_pair

    status = {s.name: s for s in asset_status(pretrained_dir)}
    encoder = status.get(CONTENT_ENCODER_FILE)
    offline = content_encoder == OFFLINE_CONTENT_ENCODER
    lines = ["**Files this training needs**"]
    if offline:
        state = "installed, no download needed" if has_whisper() else _whisper_missing()
        lines.append(f"- content encoder `{OFFLINE_CONTENT_ENCODER}`: {state}")
    else:
        lines.append(_file_line(encoder, CONTENT_ENCODER_FILE))
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
    if not offline and (encoder is None or encoder.state == "missing"):
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
    if not frames:  # typed columns: an empty float "series" would make the plot's colour scale numeric
        return pd.DataFrame(
            {
                "time_s": pd.Series([], dtype="float64"),
                "f0_hz": pd.Series([], dtype="float64"),
                "series": pd.Series([], dtype="str"),
            }
        )
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
        return pd.DataFrame(  # typed, so the plot's colour scale stays nominal (see f0_plot_frame)
            {
                "step": pd.Series([], dtype="int64"),
                "value": pd.Series([], dtype="float64"),
                "metric": pd.Series([], dtype="str"),
            }
        )
    return pd.DataFrame.from_records(records)


def device_info_markdown() -> str:
    import platform

    import gradio
    import torch

    lines = [
        f"- Python {platform.python_version()} · torch {torch.__version__} · gradio {gradio.__version__}",
        f"- CPU cores: {os.cpu_count()} · torch threads: {torch.get_num_threads()} "
        f"(inter-op {torch.get_num_interop_threads()})",
    ]
    from infer.devices import device_count, pick_auto

    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(f"- cuda:{i} {props.name} · {format_bytes(props.total_memory)}")
    else:
        lines.append("- CUDA: not available")
    lines.append(
        f"- Intel XPU: {device_count('xpu') or 'not available'} · Apple MPS: "
        f"{'available' if device_count('mps') else 'not available'}"
    )
    lines.append(f"- `auto` runs on: **{pick_auto()}**")
    return "\n".join(lines)
