"""The Live tab: the microphone in, the converted voice out, through the studio's own server.

The panel itself is built in the browser by ``assets/live/live.js`` (an AudioWorklet and a
WebSocket, see :mod:`ui.live`); this module only reserves its place and explains it.
"""

from __future__ import annotations

import gradio as gr

from ui.studio import Studio

PANEL_HTML = '<div id="timbre-live-panel" class="timbre-live">Loading the live panel...</div>'


def build(demo: gr.Blocks, studio: Studio) -> None:
    """Lay out the Live tab."""
    with gr.Tab("Live"):
        gr.Markdown(
            "Talk or sing into the microphone and hear it in the chosen voice. The conversion runs "
            "on this studio's server; the delay is the block size plus the crossfade, the search "
            "window and the round trip. **Measure latency** plays noise bursts through the whole "
            "loop and times them. Use headphones (the speakers would feed back into the microphone)."
        )
        gr.HTML(PANEL_HTML, elem_id="timbre-live-container")
