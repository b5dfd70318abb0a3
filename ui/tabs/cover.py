"""The Song cover tab: a song in, its vocals converted into a voice and remixed over its backing."""

from __future__ import annotations

import gradio as gr

from infer.options import DEVICES, SAMPLERS, SEPARATORS, names
from ui.batch import INDEX_AUTO, index_choices
from ui.forms import Form, convert_defaults, f0_choices
from ui.songs import CACHE_TABLE_HEADERS, SongPage
from ui.studio import Studio
from ui.tabs.convert import CONVERT_CONCURRENCY


def build(demo: gr.Blocks, studio: Studio) -> None:
    """Lay out the Song cover tab and wire its events."""
    page = SongPage(studio)
    model_names = [e.name for e in studio.entries()]
    start = convert_defaults()
    with gr.Tab("Song cover") as tab, gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320):
            model = gr.Dropdown(
                model_names,
                value=model_names[0] if model_names else None,
                label="Voice model",
                allow_custom_value=True,
                elem_id="cover-model",
            )
            model_info = gr.Markdown(elem_id="cover-model-info")
            song = gr.Audio(sources=["upload"], type="filepath", label="Song", elem_id="cover-song")
            separator = gr.Dropdown(
                [(f"{c.name}: {c.help}", c.name) for c in SEPARATORS.values()],
                value=next(iter(SEPARATORS)),
                label="Separator",
                elem_id="cover-separator",
            )
            with gr.Row():
                pitch = gr.Slider(
                    -24, 24, value=start["pitch_shift_semitones"], step=1, label="Pitch shift (semitones)"
                )
                f0_method = gr.Dropdown(f0_choices(), value=start["f0_method"], label="F0 method")
            shift_instrumental = gr.Checkbox(False, label="Shift the instrumental by the same semitones")
            with gr.Row():
                vocal_gain = gr.Slider(-24, 24, value=0, step=0.5, label="Vocals gain (dB)")
                instrumental_gain = gr.Slider(-24, 24, value=0, step=0.5, label="Instrumental gain (dB)")
            with gr.Accordion("Index, protect, sampler, device", open=False):
                index_choice = gr.Dropdown(
                    index_choices(studio.entries(), studio.paths.models_dir),
                    value=INDEX_AUTO,
                    label="Index file",
                    allow_custom_value=True,
                )
                with gr.Row():
                    index_rate = gr.Slider(0, 1, value=start["index_rate"], step=0.01, label="Index rate")
                    protect = gr.Slider(0, 0.5, value=start["protect"], step=0.01, label="Protect")
                with gr.Row():
                    sampler = gr.Radio(names(SAMPLERS), value=start["sampler"], label="Sampler")
                    steps = gr.Slider(1, 50, value=start["steps"], step=1, label="Steps")
                device = gr.Dropdown(names(DEVICES), value="auto", label="Device")
            with gr.Row():
                cover_btn = gr.Button("Make the cover", variant="primary", elem_id="cover-button")
                separate_btn = gr.Button("Separate only", elem_id="cover-separate")
                cancel_btn = gr.Button("Cancel")
        with gr.Column(scale=1, min_width=320):
            cover_audio = gr.Audio(type="filepath", label="Cover", interactive=False, elem_id="cover-result")
            vocals_audio = gr.Audio(
                type="filepath", label="Vocals", interactive=False, elem_id="cover-vocals"
            )
            backing_audio = gr.Audio(
                type="filepath", label="Instrumental", interactive=False, elem_id="cover-instrumental"
            )
            files = gr.File(label="Downloads", file_count="multiple", elem_id="cover-files")
            status = gr.Markdown(elem_classes="timbre-status", elem_id="cover-status")
            with gr.Accordion("Stem cache (separated songs are reused)", open=False):
                cache = gr.Dataframe(headers=CACHE_TABLE_HEADERS, interactive=False, elem_id="cover-cache")
                with gr.Row():
                    refresh_cache = gr.Button("Refresh")
                    clear_cache = gr.Button("Clear the cache", variant="stop")
                cache_status = gr.Markdown()

    # The /cover API takes these fields in this order.
    form = Form(
        {
            "model": model,
            "index": index_choice,
            "song": song,
            "separator": separator,
            "pitch_shift_semitones": pitch,
            "f0_method": f0_method,
            "index_rate": index_rate,
            "protect": protect,
            "sampler": sampler,
            "steps": steps,
            "vocal_gain_db": vocal_gain,
            "instrumental_gain_db": instrumental_gain,
            "shift_instrumental": shift_instrumental,
            "device": device,
        }
    )
    gr.on(
        [demo.load, tab.select],
        studio.refresh_models,
        model,
        [model, index_choice, model_info],
        api_visibility="private",
        show_progress="hidden",
    )
    event = cover_btn.click(
        form.handler(page.cover),
        form.inputs,
        [cover_audio, vocals_audio, backing_audio, files, status],
        api_name="cover",
        concurrency_limit=CONVERT_CONCURRENCY,
        concurrency_id="convert",
    )
    separate_form = form.subset("song", "separator")
    sep_event = separate_btn.click(
        separate_form.handler(page.separate),
        separate_form.inputs,
        [vocals_audio, backing_audio, status],
        api_name="separate",
        concurrency_limit=CONVERT_CONCURRENCY,
        concurrency_id="convert",
    )
    cancel_btn.click(
        studio.cancel_convert, None, status, cancels=[event, sep_event], api_name="cancel_cover", queue=False
    )
    refresh_cache.click(page.cache_table, None, cache, api_name="stem_cache")
    clear_cache.click(page.clear_cache, None, [cache, cache_status], api_name="clear_stem_cache")
