"""The Song cover tab's handlers: separate a song, convert its vocals, remix; the stem cache."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gradio as gr

from infer.catalog import find_model
from ui.batch import load_converter, resolve_index_choice
from ui.forms import StudioError, check_audio_inputs, convert_params_from_page
from ui.studio import Studio, fresh_output_dir, gradio_progress, session_of, ui_errors

COVER_PAGE_FIELDS = frozenset(
    {"separator", "vocal_gain_db", "instrumental_gain_db", "shift_instrumental", "song"}
)
"""Fields of the cover form that are not conversion knobs."""
CACHE_TABLE_HEADERS = ["song", "separator", "size", "made"]
STEM_CACHE_DIRNAME = "stem_cache"


class SongPage:
    """Handlers of the Song cover tab; conversions share the Convert tab's one-at-a-time queue."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    @property
    def cache_dir(self) -> Path:
        """The studio's stem cache (under its data folder)."""
        return self.studio.paths.data_dir / STEM_CACHE_DIRNAME

    def _song(self, values: Mapping[str, Any]) -> Path:
        return check_audio_inputs([values.get("song")])[0]

    @ui_errors
    def cover(
        self,
        values: Mapping[str, Any],
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects the tracker)
    ) -> tuple[str, str, str, list[str], str]:
        """Separate -> convert -> remix the uploaded song with the form's voice and knobs."""
        from infer.cover import CoverParams, make_cover

        song = self._song(values)
        if not values.get("model"):
            raise StudioError("choose a voice model first (refresh the list if you just added one)")
        entry = find_model(self.studio.paths.models_dir, values["model"])
        knobs = {k: v for k, v in values.items() if k not in COVER_PAGE_FIELDS}
        params = convert_params_from_page(knobs)
        try:
            cover = CoverParams(
                separator=values.get("separator") or None,
                vocal_gain_db=float(values.get("vocal_gain_db") or 0.0),
                instrumental_gain_db=float(values.get("instrumental_gain_db") or 0.0),
                shift_instrumental=bool(values.get("shift_instrumental")),
            )
        except ValueError as exc:
            raise StudioError(f"invalid cover settings: {exc}") from exc
        session = session_of(request)
        flag = self.studio.stops.begin("convert", session)
        try:
            converter = load_converter(
                entry,
                resolve_index_choice(self.studio.paths.models_dir, entry, values.get("index")),
                pretrained_dir=self.studio.paths.pretrained_dir,
                device=values.get("device") or "auto",
                precision="auto",
            )
            result = make_cover(
                converter,
                song,
                fresh_output_dir(self.studio.paths.outputs_dir),
                params,
                cover,
                cache_dir=self.cache_dir,
                progress=gradio_progress(progress),
                should_stop=flag.is_set,
            )
        finally:
            self.studio.stops.end("convert", session, flag)
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings_s.items())
        summary = f"Cover of **{song.name}** with **{entry.name}** · {timings}"
        if result.is_cached:
            summary += " · stems from the cache"
        if result.warnings:
            summary += "\n\n" + "\n".join(f"- ⚠ {w}" for w in result.warnings)
        files = [str(result.cover), str(result.vocals), str(result.instrumental)]
        return files[0], files[1], files[2], files, summary

    @ui_errors
    def separate(
        self,
        values: Mapping[str, Any],
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects the tracker)
    ) -> tuple[str, str, str]:
        """Only the separation: the song's vocals and instrumental."""
        from infer.separation import separate_file

        song = self._song(values)
        written = separate_file(
            song,
            fresh_output_dir(self.studio.paths.outputs_dir),
            values.get("separator") or None,
            cache_dir=self.cache_dir,
            progress=gradio_progress(progress),
        )
        origin = "from the cache" if written.is_cached else "separated"
        note = "" if written.has_vocals else " · no vocals found: the song looks instrumental"
        return str(written.vocals), str(written.instrumental), f"Stems of **{song.name}** ({origin}){note}"

    @ui_errors
    def cache_table(self) -> list[list[Any]]:
        """The stem cache's entries, newest first."""
        from infer.separation import list_stem_cache
        from ui.views import format_bytes

        rows = []
        for entry in sorted(list_stem_cache(self.cache_dir), key=lambda e: -e.created_s):
            rows.append(
                [entry.source_name, entry.separator, format_bytes(entry.size_bytes), _age(entry.created_s)]
            )
        return rows

    @ui_errors
    def clear_cache(self) -> tuple[list[list[Any]], str]:
        """Delete every cached stem pair."""
        from infer.separation import clear_stem_cache

        removed = clear_stem_cache(self.cache_dir)
        return self.cache_table(), f"Removed {removed} cached song(s)."


def _age(created_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(created_s))
