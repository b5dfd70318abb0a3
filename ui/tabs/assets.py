"""The Assets & settings tab: pretrained files and their downloads, the device, the jobs self-test."""

from __future__ import annotations

import gradio as gr

from ui.studio import Studio
from ui.views import ASSET_TABLE_HEADERS


def build(demo: gr.Blocks, studio: Studio) -> None:
    """Lay out the Assets & settings tab and wire its events."""
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
