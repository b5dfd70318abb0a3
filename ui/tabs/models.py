"""The Models tab: the models folder as a table; rename, delete, download as zip or ONNX, import."""

from __future__ import annotations

import gradio as gr

from ui.studio import Studio
from ui.views import MODEL_TABLE_HEADERS, models_table


def build(demo: gr.Blocks, studio: Studio) -> None:
    """Lay out the Models tab and wire its events."""
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
                onnx_btn = gr.Button("Export ONNX", elem_id="models-export-onnx")
                onnx_file = gr.File(
                    label="ONNX synthesizer (RVC's inputs)", interactive=False, elem_id="models-onnx"
                )
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
                import_url = gr.Textbox(
                    label="Import from URL: an http(s) address of a model .zip or .pth",
                    placeholder="https://...",
                    max_lines=1,
                    elem_id="models-import-url",
                )
                with gr.Row():
                    url_btn = gr.Button("Import from URL", elem_id="models-import-url-button")
                    url_cancel = gr.Button("Cancel", elem_id="models-import-url-cancel")
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
    onnx_btn.click(studio.export_onnx, pick, [onnx_file, status], api_name="export_onnx")
    url_event = url_btn.click(
        studio.import_url,
        [import_url, import_name, overwrite],
        changed,
        api_name="import_url",
        concurrency_limit=1,
        concurrency_id="import_url",
    )
    url_cancel.click(
        studio.cancel_import, None, status, cancels=[url_event], api_name="cancel_import", queue=False
    )
