"""The Live tab's transport: a WebSocket on the studio's own server, fed by an AudioWorklet.

Routes (added to the studio's FastAPI app at launch, see :func:`live_routes`):

* ``GET  /timbre/live/models``: the panel's lists and defaults, as JSON (:func:`panel_info`);
* ``GET  /timbre/live/static/<file>``: the page's client (``assets/live/*.js``);
* ``WS   /timbre/live/ws``: one live stream.

The protocol on the WebSocket, client first:

1. text ``{"type": "start", "model": NAME, "engine": "torch"|"student", "sample_rate": HZ,
   "params": {...}, "stream": {...}}`` where ``params`` are conversion form names
   (:func:`infer.params.convert_params_from_form`) and ``stream`` the
   :class:`~infer.stream.StreamConfig` fields; with ``engine`` ``student`` the voice's live
   student (:mod:`infer.student`) runs instead, in its own blocks, and both are ignored;
2. binary frames: little-endian float32 mono samples at ``sample_rate`` (the client's clock);
3. text ``{"type": "update", "params": {...}}`` at any time; ``{"type": "stop"}`` to end.

The server answers ``{"type": "ready", ...}``, then binary float32 frames of converted audio at
the client's rate, ``{"type": "stats", ...}`` about once a second, and ``{"type": "error",
"message": ...}`` (then closes) when something goes wrong. A client that disconnects ends its
stream; the server and the other tabs carry on. With ``--auth`` the socket and the model list
need the studio's login cookie.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from infer.errors import TimbreError
from infer.home import asset_path
from infer.options import LIVE_ENGINES

log = logging.getLogger(__name__)

STATIC_DIR = asset_path("live")
STATIC_FILES = frozenset({"live.js", "live-worklet.js"})
MAX_SESSIONS = 2
"""Live streams at once (each keeps a core busy)."""
STATS_INTERVAL_S = 1.0
SEND_POLL_S = 0.005
CLIENT_RATES_HZ = (16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000)
"""The engines of :data:`infer.options.ENGINES` a live stream can run."""
MAX_FRAME_SAMPLES = 96000
"""Largest binary frame a client may send (one second at 96 kHz)."""


@dataclass
class LiveContext:
    """What the live routes need from the studio."""

    models_dir: Path
    pretrained_dir: Path
    device: str = "cpu"
    sessions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _is_signed_in(connection: Request | WebSocket) -> bool:
    app = connection.scope.get("app")
    if app is None or getattr(app, "auth", None) is None:
        return True
    cookie_id = getattr(app, "cookie_id", "")
    token = connection.cookies.get(f"access-token-{cookie_id}") or connection.cookies.get(
        f"access-token-unsecure-{cookie_id}"
    )
    return token is not None and token in getattr(app, "tokens", {})


def panel_info(context: LiveContext) -> dict[str, Any]:
    """What the Live panel lists and starts with: models, F0 methods, the dataclasses' defaults."""
    from infer.catalog import list_models
    from infer.options import ENGINES, F0_METHODS, names
    from infer.params import ConvertParams
    from infer.pitch import default_method
    from infer.stream import StreamConfig
    from infer.student import student_path

    params, stream = ConvertParams(), StreamConfig()
    return {
        "models": [
            {
                "name": e.name,
                "has_index": e.index_path is not None,
                "has_student": not e.is_loose and student_path(e.folder) is not None,
            }
            for e in list_models(context.models_dir)
        ],
        "engines": [name for name in names(ENGINES) if name in LIVE_ENGINES],
        "f0_methods": list(names(F0_METHODS)),
        "defaults": {
            "f0_method": default_method(context.pretrained_dir),
            "index_rate": params.index_rate,
            "protect": params.protect,
            "block_s": stream.block_s,
            "context_s": stream.context_s,
            "crossfade_s": stream.crossfade_s,
        },
    }


def live_routes(context: LiveContext) -> list[Route | WebSocketRoute]:
    """The routes of the Live tab, for the studio app's ``routes``."""

    async def models(request: Request) -> Response:
        if not _is_signed_in(request):
            return JSONResponse({"error": "sign in first"}, status_code=401)
        return JSONResponse(await asyncio.to_thread(panel_info, context))

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return Response(status_code=404)
        return FileResponse(STATIC_DIR / name, media_type="text/javascript")

    async def socket(websocket: WebSocket) -> None:
        await _serve(websocket, context)

    return [
        Route("/timbre/live/models", models),
        Route("/timbre/live/static/{name}", static),
        WebSocketRoute("/timbre/live/ws", socket),
    ]


class _Stream:
    """One client's stream: resampling both ways around a :class:`~infer.stream.LiveSession`."""

    def __init__(self, start: Mapping[str, Any], context: LiveContext) -> None:
        import soxr

        from infer.catalog import find_model
        from infer.devices import resolve_device
        from infer.params import convert_params_from_form
        from infer.pipeline import Converter, Resources, load_voice
        from infer.stream import LiveSession, StreamConfig, StreamEngine

        rate = int(start.get("sample_rate", 48000))
        if rate not in CLIENT_RATES_HZ:
            raise TimbreError(f"unsupported audio rate {rate} Hz; use one of {CLIENT_RATES_HZ}")
        entry = find_model(context.models_dir, str(start.get("model", "")))
        engine = str(start.get("engine", "torch"))
        if engine not in LIVE_ENGINES:
            raise TimbreError(f"live engine must be one of {sorted(LIVE_ENGINES)}, got {engine!r}")
        self.params = convert_params_from_form(dict(start.get("params", {})))
        if engine == "student":
            from infer.student import engine_for_model

            # One CPU thread's worth of work; it shares the studio's torch thread pool.
            self.engine: Any = engine_for_model(entry.folder if not entry.is_loose else entry.pth_path)
        else:
            index = entry.index_path if start.get("use_index", True) else None
            device = str(resolve_device(context.device))
            voice = load_voice(entry.pth_path, index, device=device)
            converter = Converter(voice, Resources(pretrained_dir=context.pretrained_dir, device=device))
            config = StreamConfig(**dict(start.get("stream", {})))
            self.engine = StreamEngine(converter, self.params, config)
        self.session = LiveSession(self.engine)
        self.rate = rate
        self.model = entry.name
        self._down = soxr.ResampleStream(rate, 16000, 1, dtype="float32")
        self._up = soxr.ResampleStream(self.engine.sample_rate, rate, 1, dtype="float32")
        self._pending = np.zeros(0, dtype=np.float32)

    def feed(self, data: bytes) -> None:
        samples = np.frombuffer(data, dtype="<f4")
        if samples.shape[0] > MAX_FRAME_SAMPLES or not np.all(np.isfinite(samples)):
            raise TimbreError("bad audio frame: too long, or not finite float32 samples")
        self._pending = np.concatenate([self._pending, self._down.resample_chunk(samples)])
        n = self.engine.block_samples_16k
        while self._pending.shape[0] >= n:
            self.session.push(self._pending[:n])
            self._pending = self._pending[n:]

    def ready(self) -> list[bytes]:
        return [self._up.resample_chunk(b).astype("<f4").tobytes() for b in self.session.pull_ready()]

    def update(self, values: Mapping[str, Any]) -> None:
        from infer.params import convert_params_from_form

        self.params = convert_params_from_form(dict(values))
        self.session.update(self.params)

    def stats(self) -> dict[str, Any]:
        from infer.stream import suggest_block_s

        stats, config = self.engine.stats, self.engine.config
        f0 = self.engine.last_target_f0_hz
        voiced = f0[f0 > 0]
        return {
            "type": "stats",
            "blocks": stats.blocks,
            "compute_p50_ms": round(stats.percentile_ms(50), 1),
            "compute_p95_ms": round(stats.percentile_ms(95), 1),
            "compute_p99_ms": round(stats.percentile_ms(99), 1),
            "block_ms": round(config.block_s * 1000),
            "dropped": stats.dropped,
            "algorithmic_latency_ms": round(config.algorithmic_latency_s * 1000),
            "suggested_block_s": suggest_block_s(stats, config),
            "f0_hz": round(float(np.median(voiced)), 1) if voiced.size else 0.0,
        }


async def _serve(websocket: WebSocket, context: LiveContext) -> None:
    await websocket.accept()
    if not _is_signed_in(websocket):
        await _fail(websocket, "sign in to the studio first")
        return
    with context.lock:
        if context.sessions >= MAX_SESSIONS:
            busy = True
        else:
            busy = False
            context.sessions += 1
    if busy:
        await _fail(websocket, f"{MAX_SESSIONS} live streams are running already; stop one first")
        return
    stream: _Stream | None = None
    try:
        message = json.loads(await websocket.receive_text())
        if message.get("type") != "start":
            raise TimbreError("the first message must be {'type': 'start', ...}")
        stream = await asyncio.to_thread(_Stream, message, context)
        await websocket.send_text(
            json.dumps(
                {
                    "type": "ready",
                    "model": stream.model,
                    "sample_rate": stream.rate,
                    "block_ms": round(stream.engine.config.block_s * 1000),
                    "algorithmic_latency_ms": round(stream.engine.config.algorithmic_latency_s * 1000),
                }
            )
        )
        await _pump(websocket, stream)
    except WebSocketDisconnect:
        log.info("live client went away")
    except (TimbreError, ValueError, TypeError) as exc:
        await _fail(websocket, str(exc))
    finally:
        if stream is not None:
            stream.session.close()
        with context.lock:
            context.sessions -= 1


async def _pump(websocket: WebSocket, stream: _Stream) -> None:
    """Receive input and control messages while sending converted audio and stats."""
    done = asyncio.Event()

    async def send_loop() -> None:
        last_stats = 0.0
        loop = asyncio.get_running_loop()
        while not done.is_set():
            if stream.session.error is not None:
                raise TimbreError(f"conversion failed: {stream.session.error}")
            for frame in stream.ready():
                await websocket.send_bytes(frame)
            now = loop.time()
            if now - last_stats >= STATS_INTERVAL_S:
                last_stats = now
                await websocket.send_text(json.dumps(stream.stats()))
            await asyncio.sleep(SEND_POLL_S)

    sender = asyncio.create_task(send_loop())
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            if message.get("bytes") is not None:
                stream.feed(message["bytes"])
            elif message.get("text") is not None:
                control = json.loads(message["text"])
                if control.get("type") == "update":
                    stream.update(control.get("params", {}))
                elif control.get("type") == "stop":
                    return
            if sender.done():
                sender.result()  # re-raise what stopped the sender
    finally:
        done.set()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimbreError, WebSocketDisconnect, RuntimeError):
            await sender


async def _fail(websocket: WebSocket, message: str) -> None:
    try:
        await websocket.send_text(json.dumps({"type": "error", "message": message}))
        await websocket.close(code=1011)
    except (RuntimeError, WebSocketDisconnect):
        pass
