"""Desktop live conversion through local audio devices (PortAudio, via the sounddevice package).

The input device is read at its own rate, resampled to 16 kHz on the fly and queued in blocks to
a :class:`~infer.stream.LiveSession`; converted blocks are resampled to the output device's
rate and played. Inference never runs inside an audio callback: the callbacks only move
samples, so a slow block becomes a counted gap of silence, never a stalled device.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import numpy as np

from infer.errors import TimbreError
from infer.params import ConvertParams
from infer.pipeline import SAMPLE_RATE_16K, Converter
from infer.stream import LiveSession, StreamConfig, StreamEngine, suggest_block_s

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 5.0


class AudioDeviceError(TimbreError):
    """No usable audio device, or the audio library is missing."""


def _sounddevice() -> Any:
    try:
        import sounddevice
    except ImportError as exc:
        raise AudioDeviceError(
            "live conversion on local devices needs the sounddevice package (pip install sounddevice)"
        ) from exc
    except OSError as exc:  # the package is there, the PortAudio library is not
        raise AudioDeviceError(
            f"the PortAudio library is missing ({exc}); install it (Debian/Ubuntu: apt install libportaudio2)"
        ) from exc
    return sounddevice


def list_devices() -> str:
    """A table of the audio devices PortAudio sees (index, name, channels, default rate)."""
    sd = _sounddevice()
    devices = list(sd.query_devices())
    if not devices:
        return "no audio devices found (is a sound card or a virtual device present?)"
    lines = ["index  in  out  rate    name"]
    for index, device in enumerate(devices):
        lines.append(
            f"{index:>5}  {device['max_input_channels']:>2}  {device['max_output_channels']:>3}  "
            f"{int(device['default_samplerate']):>6}  {device['name']}"
        )
    return "\n".join(lines)


def _device(sd: Any, index: int | None, kind: str) -> dict[str, Any]:
    try:
        return dict(sd.query_devices(index, kind))
    except (ValueError, sd.PortAudioError) as exc:
        which = f"device {index}" if index is not None else f"a default {kind} device"
        raise AudioDeviceError(
            f"no usable audio {kind}: {which} is not available ({exc}); "
            "see `python -m infer live --list-devices`"
        ) from exc


class _Player:
    """Output FIFO fed by converted blocks (resampled to the device rate), drained by the callback."""

    def __init__(self, session: LiveSession, resampler: Any) -> None:
        self.session = session
        self.resampler = resampler
        self.fifo: collections.deque[np.ndarray] = collections.deque()
        self.buffered = 0
        self.underruns = 0
        self.started = False

    def fill(self, frames: int) -> np.ndarray:
        for block in self.session.pull_ready():
            resampled = self.resampler.resample_chunk(block)
            self.fifo.append(resampled)
            self.buffered += resampled.shape[0]
            self.started = True
        out = np.zeros(frames, dtype=np.float32)
        if not self.started:
            return out
        if self.buffered < frames:
            self.underruns += 1
        filled = 0
        while filled < frames and self.fifo:
            head = self.fifo[0]
            take = min(frames - filled, head.shape[0])
            out[filled : filled + take] = head[:take]
            filled += take
            self.buffered -= take
            if take == head.shape[0]:
                self.fifo.popleft()
            else:
                self.fifo[0] = head[take:]
        return out


def probe_devices(devices: tuple[int | None, int | None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The input and output device descriptions; AudioDeviceError when either is missing."""
    sd = _sounddevice()
    return _device(sd, devices[0], "input"), _device(sd, devices[1], "output")


def run_live(
    converter: Converter | None,
    params: ConvertParams | None,
    config: Any,
    *,
    devices: tuple[int | None, int | None] = (None, None),
    seconds: float | None = None,
    engine: Any | None = None,
) -> int:
    """Convert the input device into the voice on the output device until Ctrl-C (or ``seconds``).

    ``engine`` replaces the :class:`StreamEngine` built from ``converter``, ``params`` and
    ``config`` (e.g. a :class:`infer.student.StudentEngine`; ``config`` is then its config).
    Returns the process exit code (0; 130 on Ctrl-C).

    Raises:
        AudioDeviceError: sounddevice/PortAudio missing, or no such input or output device.
    """
    import soxr

    sd = _sounddevice()
    in_info, out_info = probe_devices(devices)
    in_rate, out_rate = int(in_info["default_samplerate"]), int(out_info["default_samplerate"])
    if engine is None:
        engine = StreamEngine(converter, params, config)
    session = LiveSession(engine)
    down = soxr.ResampleStream(in_rate, SAMPLE_RATE_16K, 1, dtype="float32")
    player = _Player(session, soxr.ResampleStream(engine.sample_rate, out_rate, 1, dtype="float32"))
    pending: list[np.ndarray] = []
    pending_len = [0]
    lock = threading.Lock()

    def on_input(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        mono = down.resample_chunk(np.ascontiguousarray(indata.mean(axis=1), dtype=np.float32))
        with lock:
            pending.append(mono)
            pending_len[0] += mono.shape[0]
            if pending_len[0] >= engine.block_samples_16k:
                joined = np.concatenate(pending)
                n = engine.block_samples_16k
                count = joined.shape[0] // n
                for i in range(count):
                    session.push(joined[i * n : (i + 1) * n])
                pending[:] = [joined[count * n :]]
                pending_len[0] = joined.shape[0] - count * n

    def on_output(outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        outdata[:, 0] = player.fill(frames)
        outdata[:, 1:] = outdata[:, :1]

    log.info(
        "live: %s (%d Hz) -> %s (%d Hz); block %.0f ms, algorithmic latency %.0f ms; Ctrl-C stops",
        in_info["name"], in_rate, out_info["name"], out_rate, config.block_s * 1000,
        config.algorithmic_latency_s * 1000,
    )  # fmt: skip
    started = time.monotonic()
    try:
        with (
            sd.InputStream(device=devices[0], channels=1, samplerate=in_rate, callback=on_input),
            sd.OutputStream(
                device=devices[1],
                channels=min(2, int(out_info["max_output_channels"])),
                samplerate=out_rate,
                callback=on_output,
            ),
        ):
            while seconds is None or time.monotonic() - started < seconds:
                time.sleep(min(STATUS_INTERVAL_S, seconds or STATUS_INTERVAL_S))
                if session.error is not None:
                    raise TimbreError(f"live conversion stopped: {session.error}")
                _log_status(engine, config, player)
    except KeyboardInterrupt:
        return 130
    finally:
        session.close()
    return 0


def _log_status(engine: StreamEngine, config: StreamConfig, player: _Player) -> None:
    stats = engine.stats
    log.info(
        "blocks %d, compute p50 %.0f / p95 %.0f ms per %.0f ms block, dropped %d, gaps %d",
        stats.blocks, stats.percentile_ms(50), stats.percentile_ms(95), config.block_s * 1000,
        stats.dropped, player.underruns,
    )  # fmt: skip
    suggestion = suggest_block_s(stats, config)
    if suggestion is not None:
        log.warning("the model is too slow for this block size; try --block %.2f", suggestion)
