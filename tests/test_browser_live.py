"""The Live and Song cover tabs in a real headless Chromium.

Live: Chromium's fake microphone plays a corpus file into the page, the AudioWorklet streams it
over the studio's WebSocket through a tiny model, converted audio comes back, and *Measure
latency* times noise bursts through the whole loop. Song cover: a corpus mixture is uploaded,
covered, and the three files are downloaded.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from playwright.sync_api import Page, expect, sync_playwright

from tests.fakes import tiny_synth_config, write_voice_model
from tests.helpers import VOICES_DIR
from tests.test_app_e2e import AppProcess, start_app, stop_app
from tests.test_browser import (
    ARTIFACTS_DIR,
    CHROMIUM_FLAGS,
    CONVERT_TIMEOUT_MS,
    UI_TIMEOUT_MS,
    VIEWPORT,
    choose,
    find_chromium,
    goto_tab,
    open_page,
    screenshot,
    upload,
)

pytestmark = [pytest.mark.browser]

MIC_SOURCE = VOICES_DIR / "us2" / "speech" / "003.flac"
MIXTURE = VOICES_DIR / "mixtures" / "mix_us2_drums.flac"
MODEL = "plain"
LIVE_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    root = tmp_path_factory.mktemp("studio_live")
    write_voice_model(root / "models" / MODEL / f"{MODEL}.pth", tiny_synth_config("v2", 40000), name=MODEL)
    process = start_app(root)
    try:
        yield process
    finally:
        stop_app(process)
        ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS_DIR / "browser_live_app.log").write_text(process.log_tail(200_000))


@pytest.fixture(scope="module")
def page(app: AppProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """Chromium with a fake microphone that plays a corpus clip (48 kHz 16-bit WAV, looped)."""
    folder = tmp_path_factory.mktemp("mic")
    audio, rate = sf.read(MIC_SOURCE, dtype="float32")
    mic = folder / "mic.wav"
    sf.write(mic, soxr.resample(audio, rate, 48000), 48000, subtype="PCM_16")
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="timbre-chromium-live-")
    flags = [
        *CHROMIUM_FLAGS,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    playwright = sync_playwright().start()
    context = None
    try:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=find_chromium(),
            headless=True,
            args=flags,
            viewport=VIEWPORT,
            accept_downloads=True,
            permissions=["microphone"],
        )
        browser_page = context.new_page()
        browser_page.set_default_timeout(UI_TIMEOUT_MS)
        open_page(browser_page, app.url)
        yield browser_page
    finally:
        if context is not None:
            context.close()
        playwright.stop()
        shutil.rmtree(profile, ignore_errors=True)


def test_live_tab_streams_the_microphone_and_measures_the_latency(page: Page) -> None:
    goto_tab(page, "Live")
    page.locator("#live-start").wait_for()
    page.locator("#live-f0").select_option("pm")
    page.locator("#live-start").click()
    expect(page.locator("#live-status")).to_contain_text("Streaming into plain", timeout=LIVE_TIMEOUT_MS)
    page.wait_for_function("window.timbreLive.received > 48000", timeout=LIVE_TIMEOUT_MS)
    live = page.evaluate("({sent: window.timbreLive.sent, received: window.timbreLive.received})")
    assert live["sent"] > 48000 and live["received"] > 48000, live
    expect(page.locator("#live-status")).to_contain_text("compute p50", timeout=LIVE_TIMEOUT_MS)
    screenshot(page, "tab_live_streaming")

    page.locator("#live-measure").click()
    page.wait_for_function("window.timbreLive.measuredLatencyMs !== null", timeout=LIVE_TIMEOUT_MS)
    latency_ms = page.evaluate("window.timbreLive.measuredLatencyMs")
    text = page.locator("#live-latency").inner_text()
    assert "Measured end-to-end latency" in text, text
    # The loop can be no faster than the engine's own delay (block + crossfade + search).
    algorithmic = page.evaluate("window.timbreLive.ready.algorithmic_latency_ms")
    assert algorithmic <= latency_ms < 5000, (latency_ms, algorithmic)
    screenshot(page, "tab_live_latency")
    (ARTIFACTS_DIR / "live_latency.txt").write_text(f"{text}\nalgorithmic {algorithmic} ms\n")
    page.locator("#live-stop").click()
    expect(page.locator("#live-status")).to_contain_text("Stopped.")


def test_song_cover_tab_makes_a_cover_and_downloads_three_files(page: Page, tmp_path: Path) -> None:
    open_page(page)
    goto_tab(page, "Song cover")
    choose(page, "cover-model", MODEL)
    upload(page, "cover-song", [MIXTURE])
    page.locator("#cover-button").click()
    expect(page.locator("#cover-status")).to_contain_text(
        f"Cover of {MIXTURE.name} with {MODEL}", timeout=CONVERT_TIMEOUT_MS
    )
    links = page.locator("#cover-files a")
    expect(links).to_have_count(3, timeout=UI_TIMEOUT_MS)
    saved = []
    for i in range(3):
        with page.expect_download() as download:
            links.nth(i).click()
        target = tmp_path / download.value.suggested_filename
        download.value.save_as(target)
        saved.append(target)
    assert sorted(p.name for p in saved) == sorted(
        f"{MIXTURE.stem}{suffix}" for suffix in (".cover.flac", ".vocals.flac", ".instrumental.flac")
    )
    for path in saved:
        data, rate = sf.read(path)
        assert rate == 16000 and np.isfinite(data).all() and len(data) > rate
    screenshot(page, "tab_cover_result")
