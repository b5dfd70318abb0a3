"""The Convert tab: a voice model, one upload or several, the conversion knobs, the result."""

from __future__ import annotations

import gradio as gr

from infer.options import CONVERT_PRECISIONS, DEVICES, REFINE_STARTS, SAMPLERS, help_text, names
from ui.batch import INDEX_AUTO, index_choices
from ui.forms import Form, convert_defaults, f0_choices, output_rate_choices
from ui.studio import Studio
from ui.views import model_info_markdown

CONVERT_CONCURRENCY = 1  # conversions run one at a time; the rest wait in Gradio's queue


def _step_limits() -> str:
    return ", ".join(f"{s.name}: 1-{s.max_steps}" for s in SAMPLERS.values() if s.head_kind)


def build(demo: gr.Blocks, studio: Studio) -> None:
    """Lay out the Convert tab and wire its events."""
    initial = studio.entries()
    model_names = [e.name for e in initial]
    start = convert_defaults()
    with gr.Tab("Convert") as tab, gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320):
            with gr.Row():
                model = gr.Dropdown(
                    model_names,
                    value=model_names[0] if model_names else None,
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
                pitch = gr.Slider(
                    -24, 24, value=start["pitch_shift_semitones"], step=1, label="Pitch shift (semitones)"
                )
                f0_method = gr.Dropdown(
                    f0_choices(), value=start["f0_method"], label="F0 method", elem_id="convert-f0"
                )
            with gr.Accordion("Index, mixing and output", open=False):
                index_choice = gr.Dropdown(
                    index_choices(initial, studio.paths.models_dir),
                    value=INDEX_AUTO,
                    label="Index file",
                    allow_custom_value=True,
                )
                with gr.Row():
                    index_rate = gr.Slider(0, 1, value=start["index_rate"], step=0.01, label="Index rate")
                    filter_radius = gr.Slider(
                        0, 7, value=start["filter_radius"], step=1, label="Filter radius"
                    )
                with gr.Row():
                    rms_mix_rate = gr.Slider(
                        0, 1, value=start["rms_mix_rate"], step=0.01, label="RMS mix rate"
                    )
                    protect = gr.Slider(0, 0.5, value=start["protect"], step=0.01, label="Protect")
                with gr.Row():
                    output_rate = gr.Dropdown(
                        output_rate_choices(), value=start["output_sample_rate"], label="Output rate"
                    )
                    speaker_id = gr.Number(start["speaker_id"], precision=0, minimum=0, label="Speaker id")
                    device = gr.Dropdown(
                        names(DEVICES), value="auto", label="Device", info=help_text(DEVICES)
                    )
                    precision = gr.Dropdown(
                        [(f"{c.name}: {c.help}", c.name) for c in CONVERT_PRECISIONS.values()],
                        value="auto",
                        label="Arithmetic",
                    )
                    seed = gr.Number(
                        start["seed"],
                        precision=0,
                        minimum=-1,
                        label="Seed (-1: fresh noise each time)",
                        elem_id="convert-seed",
                    )
            with gr.Accordion("Diffusion refinement (models with a diffusion head)", open=False):
                sampler = gr.Radio(
                    names(SAMPLERS),
                    value=start["sampler"],
                    label=f"Sampler (steps: {_step_limits()})",
                    elem_id="convert-sampler",
                )
                with gr.Row():
                    most_steps = max(s.max_steps for s in SAMPLERS.values())
                    steps = gr.Slider(1, min(100, most_steps), value=start["steps"], step=1, label="Steps")
                    guidance = gr.Slider(
                        0, 20, value=start["guidance_weight"], step=0.1, label="Guidance weight"
                    )
                with gr.Row():
                    refine_start = gr.Radio(
                        names(REFINE_STARTS),
                        value=start["refine_start"],
                        label=f"Start from ({help_text(REFINE_STARTS)})",
                    )
                    refine_strength = gr.Slider(
                        0.05, 1, value=start["refine_strength"], step=0.05, label="Refine strength"
                    )
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
                None,  # Gradio 6 draws no lines after an empty initial frame with a colour field
                x="time_s",
                y="f0_hz",
                color="series",
                title="F0: input vs output",
                x_title="time (s)",
                y_title="F0 (Hz)",
                height=260,
            )
            status = gr.Markdown(elem_classes="timbre-status", elem_id="convert-status")

    # The /convert API takes these fields in this order (see README, "Python call"); new fields
    # go at the end so positional callers keep working.
    form = Form(
        {
            "model": model,
            "index": index_choice,
            "audio": single,
            "batch": batch,
            "pitch_shift_semitones": pitch,
            "f0_method": f0_method,
            "index_rate": index_rate,
            "filter_radius": filter_radius,
            "rms_mix_rate": rms_mix_rate,
            "protect": protect,
            "output_sample_rate": output_rate,
            "speaker_id": speaker_id,
            "sampler": sampler,
            "steps": steps,
            "guidance_weight": guidance,
            "refine_start": refine_start,
            "refine_strength": refine_strength,
            "device": device,
            "precision": precision,
            "seed": seed,
        }
    )
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
    event = convert_btn.click(
        form.handler(studio.convert),
        form.inputs,
        [out_audio, out_files, f0_plot, status],
        api_name="convert",
        concurrency_limit=CONVERT_CONCURRENCY,
        concurrency_id="convert",
    )
    cancel_btn.click(
        studio.cancel_convert, None, status, cancels=[event], api_name="cancel_convert", queue=False
    )
