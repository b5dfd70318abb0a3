"""The Live tab's WebSocket on a running studio: stream, update, errors, a client that vanishes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from websockets.sync.client import connect

from infer.student import STUDENT_FILENAME, LiveStudent, StudentConfig, save_student
from tests.fakes import tiny_synth_config, write_voice_model
from tests.helpers import VOICES_DIR
from tests.test_app_e2e import AppProcess, start_app, stop_app

SPEECH = VOICES_DIR / "us2" / "speech" / "003.flac"
RATE = 48000
FRAME = 960  # 20 ms, as the page sends


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    root = tmp_path_factory.mktemp("studio_ws")
    write_voice_model(root / "models" / "plain" / "plain.pth", tiny_synth_config("v2", 40000), name="plain")
    live = root / "models" / "live"
    write_voice_model(live / "live.pth", tiny_synth_config("v2", 40000), name="live")
    torch.manual_seed(0)
    save_student(LiveStudent(StudentConfig.tiny()), live / STUDENT_FILENAME)
    process = start_app(root)
    try:
        yield process
    finally:
        stop_app(process)


def _ws_url(app: AppProcess) -> str:
    return app.url.replace("http://", "ws://").rstrip("/") + "/timbre/live/ws"


def _start(ws: object, **fields: object) -> dict:
    message = {
        "type": "start",
        "model": "plain",
        "sample_rate": RATE,
        "params": {"f0_method": "pm"},
        "stream": {"block_s": 0.2, "context_s": 0.5},
        **fields,
    }
    ws.send(json.dumps(message))  # type: ignore[attr-defined]
    return json.loads(ws.recv(timeout=120))  # type: ignore[attr-defined]


def _mic() -> np.ndarray:
    audio, rate = sf.read(SPEECH, dtype="float32")
    return soxr.resample(audio, rate, RATE).astype("<f4")


def test_stream_returns_audio_and_takes_updates(app: AppProcess) -> None:
    samples = _mic()
    received, stats = 0, None
    with connect(_ws_url(app), max_size=None) as ws:
        ready = _start(ws)
        assert ready["type"] == "ready" and ready["algorithmic_latency_ms"] == 260
        for i in range(0, samples.shape[0], FRAME):
            ws.send(samples[i : i + FRAME].tobytes())
            if i == samples.shape[0] // 2:
                ws.send(
                    json.dumps({"type": "update", "params": {"f0_method": "pm", "pitch_shift_semitones": 7}})
                )
            time.sleep(0.004)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            received < samples.shape[0] // 2 or stats is None or stats["blocks"] == 0
        ):
            try:
                message = ws.recv(timeout=1)
            except TimeoutError:
                continue
            if isinstance(message, bytes):
                frame = np.frombuffer(message, dtype="<f4")
                assert np.isfinite(frame).all()
                received += frame.shape[0]
            else:
                stats = json.loads(message)
        ws.send(json.dumps({"type": "stop"}))
    assert received >= samples.shape[0] // 2, received
    assert stats is not None and stats["type"] == "stats" and stats["blocks"] > 0


def test_errors_are_one_message_and_the_server_keeps_serving(app: AppProcess) -> None:
    with connect(_ws_url(app)) as ws:
        error = _start(ws, model="nobody")
        assert error["type"] == "error" and "no model called 'nobody'" in error["message"]
    with connect(_ws_url(app)) as ws:
        error = _start(ws, sample_rate=12345)
        assert error["type"] == "error" and "unsupported audio rate" in error["message"]
    with connect(_ws_url(app)) as ws:
        error = _start(ws, params={"f0_method": "pm", "no_such_knob": 1})
        assert error["type"] == "error" and "no_such_knob" in error["message"]
    # A client that vanishes mid-stream ends its stream only: the next one works.
    with connect(_ws_url(app), max_size=None) as gone:  # leaves without saying stop
        assert _start(gone)["type"] == "ready"
        gone.send(_mic()[:RATE].tobytes())
    with connect(_ws_url(app), max_size=None) as again:
        assert _start(again)["type"] == "ready"
        again.send(json.dumps({"type": "stop"}))
    assert app.url  # the studio itself still answers
    with connect(_ws_url(app)) as ws:
        ws.send(json.dumps({"type": "hello"}))
        assert "first message" in json.loads(ws.recv(timeout=30))["message"]


def test_model_list_for_the_panel(app: AppProcess) -> None:
    import urllib.request

    with urllib.request.urlopen(app.url.rstrip("/") + "/timbre/live/models", timeout=30) as response:
        info = json.loads(response.read())
    assert {m["name"]: m["has_student"] for m in info["models"]} == {"live": True, "plain": False}
    assert info["engines"] == ["torch", "student"]
    assert "pm" in info["f0_methods"] and info["defaults"]["block_s"] == pytest.approx(0.25)
    with urllib.request.urlopen(app.url.rstrip("/") + "/timbre/live/static/live.js", timeout=30) as response:
        assert b"AudioWorklet" in response.read()


def test_the_live_student_streams_in_16_ms_blocks(app: AppProcess) -> None:
    samples = _mic()[: RATE * 2]
    received, stats = 0, None
    with connect(_ws_url(app), max_size=None) as ws:
        ready = _start(ws, model="live", engine="student")
        assert ready["type"] == "ready" and ready["block_ms"] == 16 and ready["algorithmic_latency_ms"] == 17
        for i in range(0, samples.shape[0], FRAME):
            ws.send(samples[i : i + FRAME].tobytes())
            time.sleep(0.02)  # real time: a faster client makes the session drop blocks
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            received < samples.shape[0] // 2 or stats is None or stats["blocks"] == 0
        ):
            try:
                message = ws.recv(timeout=1)
            except TimeoutError:
                continue
            if isinstance(message, bytes):
                frame = np.frombuffer(message, dtype="<f4")
                assert np.isfinite(frame).all()
                received += frame.shape[0]
            else:
                stats = json.loads(message)
        ws.send(json.dumps({"type": "stop"}))
    assert received >= samples.shape[0] // 2, received
    assert stats is not None and stats["blocks"] > 0 and stats["algorithmic_latency_ms"] == 17
    with connect(_ws_url(app)) as ws:
        error = _start(ws, engine="student")  # "plain" has no student
        assert error["type"] == "error" and "no live student" in error["message"]
