"""The Train tab: the training form (one :class:`train.settings.TrainSettings`), stage buttons, jobs."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import gradio as gr

from infer.options import (
    CONTENT_ENCODERS,
    DEVICES,
    MODEL_SAMPLE_RATES_HZ,
    MODEL_SIZES,
    MODEL_VERSIONS,
    PARAMETERISATIONS,
    RUN_ALL,
    SLICE_MODES,
    TRAIN_STAGES,
    help_text,
    names,
)
from train.settings import MAX_WORKERS
from ui.forms import Form, f0_choices, train_defaults
from ui.studio import Studio
from ui.views import JOB_TABLE_HEADERS, job_status_markdown

POLL_INTERVAL_S = 2.0
"""The Train tab's refresh while a job runs."""
IDLE_POLL_INTERVAL_S = 30.0
"""...and while none does (a job started elsewhere shows within this; see bench/idle.py)."""
SIZE_LABELS = {"full": "full (RVC networks)", "tiny": "tiny (quick trial)"}
STAGE_BUTTON_LABELS = {
    "fit": "Train", "distill": "Distil", "cm": "CM", "acdd": "ACDD", "live-student": "Live",
}  # fmt: skip
"""Button words where the stage's name is not the word the page uses (else the capitalised name)."""
PRETRAINED_FIELDS = (
    "sample_rate",
    "version",
    "use_f0",
    "size",
    "use_pretrained",
    "f0_method",
    "content_encoder",
)


def _stage_handler(studio: Studio, stage: str) -> Callable[[Any], tuple[Any, ...]]:
    def start(values: Any) -> tuple[Any, ...]:
        return studio.train_stage(stage, values)

    start.__name__ = f"train_{stage.replace('-', '_')}"
    return start


def _head_schedule(
    start: dict, stage: str, label: str, steps_elem_id: str | None = None
) -> tuple[gr.Slider, gr.Number]:
    """One row of a head-training stage's schedule: ``<stage>_epochs`` and ``<stage>_max_steps``."""
    with gr.Row():
        epochs = gr.Slider(1, 500, value=start[f"{stage}_epochs"], step=1, label=f"{label} epochs")
        max_steps = gr.Number(
            start[f"{stage}_max_steps"],
            precision=0,
            minimum=0,
            label=f"{label} max steps",
            elem_id=steps_elem_id,
        )
    return epochs, max_steps


def _settings_form(start: dict[str, Any]) -> Form:
    """The training settings widgets, laid out in the current column, as one form."""
    experiment = gr.Textbox(
        label="Experiment name (becomes the model's name)",
        placeholder="e.g. alice_v2",
        max_lines=1,
        elem_id="train-experiment",
    )
    with gr.Row():
        rate = gr.Radio(
            [str(r) for r in MODEL_SAMPLE_RATES_HZ], value=str(start["sample_rate"]), label="Sample rate"
        )
        version = gr.Radio(names(MODEL_VERSIONS), value=start["version"], label="Version")
    with gr.Row():
        size = gr.Radio(
            [(SIZE_LABELS.get(n, n), n) for n in names(MODEL_SIZES)],
            value=start["size"],
            label="Model size",
            elem_id="train-size",
        )
        use_f0 = gr.Checkbox(value=start["use_f0"], label="Pitch (f0)")
    content_encoder = gr.Dropdown(
        [(f"{c.name}: {c.help}", c.name) for c in CONTENT_ENCODERS.values()],
        value=start["content_encoder"],
        label="Content encoder",
        elem_id="train-content-encoder",
    )
    uploads = gr.File(file_count="multiple", label="Dataset: audio files or a .zip", elem_id="train-uploads")
    folder = gr.Textbox(
        label="...or a folder on the server (under datasets/ in the data folder, or a --dataset-root)",
        max_lines=1,
        elem_id="train-folder",
    )
    with gr.Row():
        use_diffusion = gr.Checkbox(value=start["use_diffusion"], label="Train a diffusion head")
        use_distillation = gr.Checkbox(value=start["use_distillation"], label="Distil it for LCM (1-4 steps)")
        use_report = gr.Checkbox(
            value=start["use_report"],
            label="Report card (hold out clips, score checkpoints)",
            elem_id="train-report-card",
        )
    with gr.Row():
        parameterisation = gr.Radio(
            names(PARAMETERISATIONS),
            value=start["diffusion_parameterisation"],
            label=f"Diffusion teacher ({help_text(PARAMETERISATIONS)})",
            elem_id="train-parameterisation",
        )
        use_cm = gr.Checkbox(value=start["use_cm"], label="Consistency student (edm teacher, 1 step)")
        use_acdd = gr.Checkbox(value=start["use_acdd"], label="ACDD student (edm teacher, 1 step)")
    with gr.Row():
        use_live_student = gr.Checkbox(
            value=start["use_live_student"],
            label="Live student (LLVC: ~17 ms latency on one CPU thread)",
            elem_id="train-live-student",
        )
        live_student_pool = gr.Textbox(
            value=start["live_student_pool"],
            label="...extra source speech for it: a folder on the server (empty: the dataset, shifted)",
            max_lines=1,
        )
    with gr.Accordion("Slicing and F0", open=False, elem_id="train-slicing"):
        with gr.Row():
            slice_mode = gr.Dropdown(names(SLICE_MODES), value=start["slice_mode"], label="Slicing")
            use_norm = gr.Checkbox(value=start["use_normalization"], label="Normalise loudness")
        with gr.Row():
            threshold_db = gr.Slider(
                -80, -10, value=start["threshold_db"], step=1, label="Silence threshold (dB)"
            )
            segment_s = gr.Slider(1.0, 10.0, value=start["segment_s"], step=0.1, label="Segment length (s)")
        f0_method = gr.Dropdown(
            f0_choices(),
            value=start["f0_method"],
            label="F0 method for extraction (auto: rmvpe if present, else fcpe)",
            elem_id="train-f0",
        )
        with gr.Row():
            use_highpass = gr.Checkbox(value=start["use_highpass"], label="High-pass filter (48 Hz)")
            overlap_s = gr.Slider(0.0, 2.0, value=start["overlap_s"], step=0.05, label="Segment overlap (s)")
        with gr.Row():
            min_length_ms = gr.Number(
                start["min_length_ms"], precision=0, minimum=1, label="Slicer: shortest slice (ms)"
            )
            min_interval_ms = gr.Number(
                start["min_interval_ms"], precision=0, minimum=1, label="Slicer: shortest silence (ms)"
            )
        with gr.Row():
            hop_size_ms = gr.Number(start["hop_size_ms"], precision=0, minimum=1, label="Slicer: hop (ms)")
            max_sil_kept_ms = gr.Number(
                start["max_sil_kept_ms"], precision=0, minimum=0, label="Slicer: silence kept (ms)"
            )
    with gr.Accordion("Schedule and step limits", open=False, elem_id="train-schedule"):
        with gr.Row():
            epochs = gr.Slider(1, 1000, value=start["epochs"], step=1, label="Epochs", elem_id="train-epochs")
            batch_size = gr.Slider(
                1,
                64,
                value=start["batch_size"],
                step=1,
                label="Batch size",
                elem_id="train-batch",
            )
        with gr.Row():
            save_every = gr.Slider(
                1, 100, value=start["save_every_epochs"], step=1, label="Save every N epochs"
            )
            max_steps = gr.Number(
                start["max_steps"],
                precision=0,
                minimum=0,
                label="Max steps (0 = no limit)",
                elem_id="train-max-steps",
            )
        use_pretrained = gr.Checkbox(
            value=start["use_pretrained"], label="Start from the pretrained base (full size)"
        )
        diffusion_epochs, diffusion_max_steps = _head_schedule(
            start, "diffusion", "Diffusion", "train-diff-steps"
        )
        distill_epochs, distill_max_steps = _head_schedule(
            start, "distill", "Distillation", "train-lcm-steps"
        )
        cm_epochs, cm_max_steps = _head_schedule(start, "cm", "Consistency")
        acdd_epochs, acdd_max_steps = _head_schedule(start, "acdd", "ACDD")
        live_student_steps = gr.Number(
            start["live_student_steps"], precision=0, minimum=1, label="Live student steps"
        )
        workers = gr.Slider(
            1,
            MAX_WORKERS,
            value=min(start["workers"], os.cpu_count() or 1),
            step=1,
            label="Processes for slicing and F0",
            elem_id="train-workers",
        )
        device = gr.Dropdown(
            names(DEVICES), value=start["device"], label="Training device", info=help_text(DEVICES)
        )
    # The /train_* APIs take these fields in this order; new fields go at the end.
    return Form(
        {
            "experiment": experiment,
            "sample_rate": rate,
            "version": version,
            "use_f0": use_f0,
            "size": size,
            "uploads": uploads,
            "folder": folder,
            "use_diffusion": use_diffusion,
            "use_distillation": use_distillation,
            "slice_mode": slice_mode,
            "use_normalization": use_norm,
            "threshold_db": threshold_db,
            "segment_s": segment_s,
            "f0_method": f0_method,
            "epochs": epochs,
            "batch_size": batch_size,
            "save_every_epochs": save_every,
            "max_steps": max_steps,
            "use_pretrained": use_pretrained,
            "diffusion_epochs": diffusion_epochs,
            "diffusion_max_steps": diffusion_max_steps,
            "distill_epochs": distill_epochs,
            "distill_max_steps": distill_max_steps,
            "workers": workers,
            "use_report": use_report,
            "diffusion_parameterisation": parameterisation,
            "use_cm": use_cm,
            "use_acdd": use_acdd,
            "cm_epochs": cm_epochs,
            "cm_max_steps": cm_max_steps,
            "acdd_epochs": acdd_epochs,
            "acdd_max_steps": acdd_max_steps,
            "content_encoder": content_encoder,
            "device": device,
            "use_highpass": use_highpass,
            "min_length_ms": min_length_ms,
            "min_interval_ms": min_interval_ms,
            "hop_size_ms": hop_size_ms,
            "max_sil_kept_ms": max_sil_kept_ms,
            "overlap_s": overlap_s,
            "use_live_student": use_live_student,
            "live_student_steps": live_student_steps,
            "live_student_pool": live_student_pool,
        }
    )


def build(demo: gr.Blocks, studio: Studio) -> None:
    """Lay out the Train tab and wire its events."""
    start = train_defaults()
    with gr.Tab("Train"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                form = _settings_form(start)
                pretrained_md = gr.Markdown(elem_classes="timbre-status", elem_id="train-pretrained")
                with gr.Row(elem_classes="timbre-stage-buttons"):
                    buttons = {
                        stage: gr.Button(
                            f"{number} {STAGE_BUTTON_LABELS.get(stage, stage.capitalize())}",
                            min_width=88,
                            size="sm",
                        )
                        for number, stage in enumerate(names(TRAIN_STAGES), start=1)
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
                    None,  # not an empty frame: Gradio 6 then draws no lines for later data
                    x="step",
                    y="value",
                    color="metric",
                    title="Losses",
                    height=240,
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
        timer = gr.Timer(
            IDLE_POLL_INTERVAL_S
        )  # inside the tab: a bare component in gr.Tabs confuses its tab bar

    view = [job_md, loss_plot, log_box, report_md]

    def pace() -> gr.Timer:
        """Tick fast while a job runs, slowly otherwise."""
        return gr.Timer(POLL_INTERVAL_S if studio.has_active_job() else IDLE_POLL_INTERVAL_S)

    for stage, button in buttons.items():
        button.click(
            form.handler(_stage_handler(studio, stage)),
            form.inputs,
            [job_pick, *view, jobs_df],
            api_name=f"train_{stage.replace('-', '_')}",
            concurrency_limit=1,
            concurrency_id="train_start",
            show_progress="hidden",  # the job's own status shows progress; errors come as a toast
        ).then(pace, None, timer, api_visibility="private", show_progress="hidden")
    pretrained = form.subset(*PRETRAINED_FIELDS)
    status_handler = pretrained.handler(studio.pretrained_status)
    gr.on(
        [c.change for c in pretrained.inputs],
        status_handler,
        pretrained.inputs,
        pretrained_md,
        api_name="pretrained_status",
    )
    refresh_jobs.click(studio.list_jobs, None, [job_pick, jobs_df], api_name="list_jobs")
    job_pick.change(studio.job_status, job_pick, view, api_name="job_status")
    cancel_btn.click(studio.cancel_job, job_pick, job_md, api_name="cancel_job")
    resume_btn.click(studio.resume_job, job_pick, job_md, api_name="resume_job").then(
        pace, None, timer, api_visibility="private", show_progress="hidden"
    )
    jobs_df.select(studio.select_job, None, job_pick, api_visibility="private")
    timer.tick(
        studio.poll, job_pick, [*view, jobs_df], api_visibility="private", show_progress="hidden"
    ).then(pace, None, timer, api_visibility="private", show_progress="hidden")
    demo.load(studio.page_load, None, [job_pick, jobs_df], api_visibility="private").then(
        pace, None, timer, api_visibility="private", show_progress="hidden"
    )
    demo.load(
        studio.content_encoder_choice,
        form["content_encoder"],
        form["content_encoder"],
        api_visibility="private",
    )
    demo.load(
        pretrained.handler(studio.pretrained_status),
        pretrained.inputs,
        pretrained_md,
        api_visibility="private",
    )
