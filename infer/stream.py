"""Live conversion on a :class:`~infer.pipeline.Converter`: RVC's realtime semantics on a 10 ms grid.

Every ``block`` of 16 kHz input the engine converts one window::

    input buffer (16 kHz):  [ context | crossfade | search | block ]   <- the newest audio at the right
    content encoder + text encoder + flow:   the whole buffer (flow from 24 frames before the head)
    decoder:                                 [ crossfade | search | block ] only (skip_head/return_length)

The F0 tracker runs only over the newest block plus a margin and its frames are shifted into a
cached pitch track; the pitch shift is applied when the track is used, so it can change while
streaming. Index blending, protect and the RMS mix work as in offline conversion; a chosen diffusion sampler
refines only the returned slice of the latent. Consecutive outputs are joined by SOLA: the
offset (within ``search``) of the highest normalised cross-correlation with the previous
block's tail, then complementary sin² fades over ``crossfade``.

Latency: the first sample of every output block entered the input ``block + crossfade +
search`` earlier (:attr:`StreamConfig.algorithmic_latency_s`); compute time and audio-device
buffering come on top. :class:`LiveSession` runs the engine off the audio thread: a queue in, a
worker, a queue out; a block that is not ready when the output needs it is counted and filled
with silence, and a worker that falls behind drops its oldest pending block instead of growing
the delay.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from infer import dsp
from infer.params import ConvertParams
from infer.pipeline import (
    SAMPLE_RATE_16K,
    WINDOW_SAMPLES,
    ChunkState,
    Converter,
    autocast_for,
    content_frames,
    refine_latent,
)
from infer.pitch.f0 import f0_to_coarse, shift_semitones
from infer.progress import ProgressFn, StopFn, check_stop, report

log = logging.getLogger(__name__)

GRID_S = 0.01
"""Every length is a whole number of 10 ms frames (160 samples at 16 kHz, one F0 hop)."""
BLOCK_RANGE_S = (0.02, 1.5)
CONTEXT_RANGE_S = (0.0, 5.0)
CROSSFADE_RANGE_S = (0.01, 0.15)
SEARCH_RANGE_S = (0.0, 0.05)
F0_MARGIN_FRAMES = 5
"""Extra F0 frames tracked before the newest block (edge frames of a tracker are unreliable)."""
F0_EDGE_FRAMES = 3
"""Leading frames of each fresh F0 window discarded before they enter the cached track."""
SOLA_EPS = 1e-3


def _frames(seconds: float) -> int:
    return round(seconds / GRID_S)


@dataclass(frozen=True)
class StreamConfig:
    """Block sizes of the streaming engine, in seconds on a 10 ms grid.

    Attributes:
        block_s: audio converted per call (RVC: 0.25 s by default).
        context_s: extra past audio the encoders see (the vocoder never does).
        crossfade_s: SOLA crossfade between consecutive blocks.
        search_s: SOLA search window for the best join offset.
        silence_gate_db: blocks quieter than this (RMS dBFS) are output as silence; None: no gate.
    """

    block_s: float = 0.25
    context_s: float = 1.0
    crossfade_s: float = 0.05
    search_s: float = 0.01
    silence_gate_db: float | None = -60.0

    def __post_init__(self) -> None:
        for name, (low, high) in (
            ("block_s", BLOCK_RANGE_S),
            ("context_s", CONTEXT_RANGE_S),
            ("crossfade_s", CROSSFADE_RANGE_S),
            ("search_s", SEARCH_RANGE_S),
        ):
            value = getattr(self, name)
            if not low - 1e-9 <= value <= high + 1e-9:
                raise ValueError(f"{name} must be within {low}..{high} s, got {value}")
            object.__setattr__(self, name, _frames(value) * GRID_S)
        if self.crossfade_s > self.block_s:
            raise ValueError(f"crossfade_s ({self.crossfade_s}) cannot exceed block_s ({self.block_s})")

    @property
    def block_frames(self) -> int:
        """Frames (10 ms) per block."""
        return _frames(self.block_s)

    @property
    def context_frames(self) -> int:
        """Frames of extra context."""
        return _frames(self.context_s)

    @property
    def return_frames(self) -> int:
        """Frames the decoder synthesizes per block: crossfade + search + block."""
        return _frames(self.crossfade_s) + _frames(self.search_s) + self.block_frames

    @property
    def buffer_frames(self) -> int:
        """Frames of input the encoders see per block."""
        return self.context_frames + self.return_frames

    @property
    def algorithmic_latency_s(self) -> float:
        """Delay of the engine alone: block + crossfade + search."""
        return self.return_frames * GRID_S


@dataclass
class StreamStats:
    """What a stream did: blocks, per-block compute times, late and dropped blocks."""

    blocks: int = 0
    gated: int = 0
    late: int = 0
    dropped: int = 0
    compute_s: list[float] = field(default_factory=list)

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile of per-block compute time in ms (0 before the first block)."""
        return float(np.percentile(self.compute_s, q) * 1000) if self.compute_s else 0.0


class StreamEngine:
    """Block-by-block conversion with RVC's realtime semantics (see the module docstring).

    Not thread-safe: one engine per stream, fed from one thread. ``params`` may be replaced
    between blocks (:meth:`update`); a new index rate, pitch shift or protect applies to the
    next block.
    """

    def __init__(
        self, converter: Converter, params: ConvertParams, config: StreamConfig | None = None
    ) -> None:
        self.converter = converter
        self.config = config or StreamConfig()
        self.stats = StreamStats()
        self._hop = converter.voice.model.config.hop_length
        self._input = np.zeros(self.config.buffer_frames * WINDOW_SAMPLES, dtype=np.float32)
        self._f0_hz = np.zeros(self.config.buffer_frames, dtype=np.float32)
        self._sola_tail = np.zeros(_frames(self.config.crossfade_s) * self._hop, dtype=np.float32)
        self._fade_in = np.sin(0.5 * np.pi * np.linspace(0.0, 1.0, self._sola_tail.shape[0])) ** 2
        self._state: ChunkState = converter.start(params)
        self.params = params
        self.last_target_f0_hz = np.zeros(0, dtype=np.float32)
        """F0 (Hz, pitch shift applied) the synthesizer got for the last block's window (a readout)."""

    @property
    def block_samples_16k(self) -> int:
        """Input samples (16 kHz) per block."""
        return self.config.block_frames * WINDOW_SAMPLES

    @property
    def block_samples_out(self) -> int:
        """Output samples (model rate) per block."""
        return self.config.block_frames * self._hop

    @property
    def sample_rate(self) -> int:
        """The output rate (the voice model's)."""
        return self.converter.sample_rate

    @property
    def pitch_track_hz(self) -> np.ndarray:
        """The cached source F0 (buffer_frames, 100 fps, newest last; before the pitch shift), a copy."""
        return self._f0_hz.copy()

    def update(self, params: ConvertParams) -> None:
        """Use ``params`` from the next block on (speaker and seed are fixed for a stream)."""
        self.converter.start(params)
        self._state.params = params
        self.params = params

    @torch.inference_mode()
    def process(self, block_16k: np.ndarray) -> np.ndarray:
        """Convert one block: (block_samples_16k,) float32 at 16 kHz -> (block_samples_out,) float32."""
        block = np.asarray(block_16k, dtype=np.float32)
        if block.shape != (self.block_samples_16k,):
            raise ValueError(f"a block is {self.block_samples_16k} samples at 16 kHz, got {block.shape}")
        started = time.perf_counter()
        n = block.shape[0]
        self._input[:-n] = self._input[n:]
        self._input[-n:] = block
        self._f0_hz[: -self.config.block_frames] = self._f0_hz[self.config.block_frames :]
        self._f0_hz[-self.config.block_frames :] = 0.0
        gate = self.config.silence_gate_db
        if gate is not None and _rms_db(block) < gate:
            self._input[-n:] = 0.0  # the encoders hear silence, as RVC's gate does
            self.stats.gated += 1
        returned = self._input[-self.config.return_frames * WINDOW_SAMPLES :]
        if not np.any(returned):
            out = self._join(np.zeros((self.config.return_frames * self._hop,), np.float32))
        else:
            self._track_pitch()
            out = self._join(self._synthesize())
        self.stats.blocks += 1
        self.stats.compute_s.append(time.perf_counter() - started)
        return out

    def _track_pitch(self) -> None:
        """F0 over the newest block plus a margin, written into the cached track's tail."""
        extractor = self.converter.pitch_extractor(self.params.f0_method)
        if extractor is None:
            return
        frames = self.config.block_frames + F0_MARGIN_FRAMES + F0_EDGE_FRAMES
        frames = min(frames, self.config.buffer_frames)
        tail = self._input[-frames * WINDOW_SAMPLES :]
        f0 = extractor.extract(tail, p_len=frames)
        keep = min(frames - F0_EDGE_FRAMES, self._f0_hz.shape[0])
        self._f0_hz[-keep:] = f0[frames - keep : frames]

    def _synthesize(self) -> np.ndarray:
        """The decoder's output for the returned frames of the current buffer (model rate)."""
        converter, params, state = self.converter, self.params, self._state
        voice = converter.voice
        synth = voice.synthesizer
        use_f0 = voice.model.config.use_f0
        f0_target = shift_semitones(self._f0_hz, params.pitch_shift_semitones) if use_f0 else None
        if f0_target is not None:
            self.last_target_f0_hz = f0_target[-self.config.return_frames :].copy()
        pitchf = torch.from_numpy(f0_target).unsqueeze(0).to(voice.device) if f0_target is not None else None
        feats_up, p_len = content_frames(converter, self._input, pitchf, params)
        pitch = None
        if f0_target is not None and pitchf is not None:
            pitch = torch.from_numpy(f0_to_coarse(f0_target[:p_len]).astype(np.int64)).unsqueeze(0)
            pitch, pitchf = pitch.to(voice.device), pitchf[:, :p_len]
        phone = torch.from_numpy(np.ascontiguousarray(feats_up)).unsqueeze(0).to(voice.device, voice.dtype)
        lengths = torch.tensor([p_len], device=voice.device)
        head = p_len - self.config.return_frames
        sid = torch.tensor([params.speaker_id], device=voice.device)
        z, x_mask, g, f0_window = synth.latent_window(
            phone,
            lengths,
            pitch,
            pitchf,
            sid,
            (head, self.config.return_frames),
            noise_scale=params.noise_scale,
            generator=state.generator,
        )
        if params.refine is not None:
            phone_window = phone[:, head : head + self.config.return_frames]
            z = refine_latent(voice, params, state.chunk_index, (phone_window, f0_window, g, x_mask, z))
        sine_noise = None
        if f0_window is not None:
            sine_noise = torch.randn(
                (1, self.config.return_frames * self._hop, 1), generator=state.generator, device=z.device
            )
        with autocast_for(voice.device, converter.precision):
            audio = synth.decode(
                z * x_mask,
                None if f0_window is None else f0_window.to(voice.dtype),
                g,
                sine_noise=sine_noise,
            )
        state.chunk_index += 1
        out = audio[0, 0].float().cpu().numpy()
        if params.rms_mix_rate != 1:
            source = self._input[-self.config.return_frames * WINDOW_SAMPLES :]
            out = dsp.rms_mix(source, SAMPLE_RATE_16K, out, self.sample_rate, params.rms_mix_rate)
        return out

    def _join(self, infer_wav: np.ndarray) -> np.ndarray:
        """SOLA: best offset within the search window, sin² crossfade with the last tail, one block out."""
        cross = self._sola_tail.shape[0]
        search = _frames(self.config.search_s) * self._hop
        offset = sola_offset(infer_wav[: cross + search], self._sola_tail)
        wav = infer_wav[offset:]
        out = wav[: self.block_samples_out].copy()
        out[:cross] = out[:cross] * self._fade_in + self._sola_tail * (1.0 - self._fade_in)
        self._sola_tail = wav[self.block_samples_out : self.block_samples_out + cross].copy()
        return out.astype(np.float32, copy=False)


def sola_offset(head: np.ndarray, tail: np.ndarray) -> int:
    """The shift of ``head`` (crossfade + search samples) best matching ``tail`` (crossfade samples).

    Normalised cross-correlation: ``sum(head[o:o+n] * tail) / sqrt(sum(head[o:o+n]^2) + eps)``.
    """
    n = tail.shape[0]
    positions = head.shape[0] - n + 1
    if positions <= 1 or not np.any(tail):
        return 0
    numerator = np.correlate(head, tail, mode="valid")[:positions]
    energy = np.convolve(head * head, np.ones(n), mode="valid")[:positions]
    return int(np.argmax(numerator / np.sqrt(energy + SOLA_EPS)))


def _rms_db(x: np.ndarray) -> float:
    return float(20 * np.log10(max(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))), 1e-10)))


def stream_array(
    engine: StreamEngine,
    audio_16k: np.ndarray,
    *,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> np.ndarray:
    """Feed ``audio_16k`` through ``engine`` block by block, as a live stream would hear it.

    The input is followed by silence long enough to flush the engine, and the output is
    returned aligned with the input (the in-window delay, crossfade + search, removed from its
    front; a live listener hears it ``algorithmic_latency_s`` late), the input's duration at the
    model rate. Every block is processed (none dropped), so the
    result is reproducible.
    """
    n = engine.block_samples_16k
    audio = np.asarray(audio_16k, dtype=np.float32)
    config = engine.config
    # Output block k starts at input time (k + 1) * block - return: the array lags by return - block.
    lag_frames = config.return_frames - config.block_frames
    latency_16k = lag_frames * WINDOW_SAMPLES
    count = -(-(audio.shape[0] + latency_16k) // n)
    padded = np.zeros(count * n, dtype=np.float32)
    padded[: audio.shape[0]] = audio
    out = np.empty(count * engine.block_samples_out, dtype=np.float32)
    for i in range(count):
        check_stop(should_stop)
        out[i * engine.block_samples_out : (i + 1) * engine.block_samples_out] = engine.process(
            padded[i * n : (i + 1) * n]
        )
        report(progress, (i + 1) / count, f"block {i + 1}/{count}")
    rate = engine.sample_rate
    skip = lag_frames * rate // 100
    length = audio.shape[0] * rate // SAMPLE_RATE_16K
    return out[skip : skip + length]


class LiveSession:
    """A stream off the audio thread: :meth:`push` input blocks, :meth:`pull` output blocks.

    A worker thread converts queued blocks. :meth:`pull` never waits: a block that is not
    ready is counted late and silence is returned. When more than ``max_pending`` blocks wait,
    the oldest is dropped (counted), so delay stays bounded.
    """

    def __init__(
        self,
        engine: StreamEngine,
        *,
        max_pending: int = 2,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.engine = engine
        self.max_pending = max_pending
        self._in: queue.Queue[np.ndarray | None] = queue.Queue()
        self._out: queue.Queue[np.ndarray] = queue.Queue()
        self._lock = threading.Lock()
        self._on_error = on_error
        self.error: BaseException | None = None
        self._worker = threading.Thread(target=self._run, name="timbre-live", daemon=True)
        self._worker.start()

    def push(self, block_16k: np.ndarray) -> None:
        """Queue one input block (dropping the oldest pending one when the worker is behind)."""
        with self._lock:
            while self._in.qsize() >= self.max_pending:
                try:
                    self._in.get_nowait()
                except queue.Empty:
                    break
                self.engine.stats.dropped += 1
            self._in.put(np.asarray(block_16k, dtype=np.float32))

    def pull(self) -> np.ndarray:
        """The next output block, or silence (counted as late) when none is ready."""
        try:
            return self._out.get_nowait()
        except queue.Empty:
            self.engine.stats.late += 1
            return np.zeros(self.engine.block_samples_out, dtype=np.float32)

    def pull_ready(self) -> list[np.ndarray]:
        """Every output block ready now (for callers that send as they come, e.g. a WebSocket)."""
        blocks = []
        while True:
            try:
                blocks.append(self._out.get_nowait())
            except queue.Empty:
                return blocks

    def update(self, params: ConvertParams) -> None:
        """Change the conversion knobs from the next block on."""
        with self._lock:
            self.engine.update(params)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker (pending blocks are discarded)."""
        self._in.put(None)
        self._worker.join(timeout_s)

    def _run(self) -> None:
        while True:
            block = self._in.get()
            if block is None:
                return
            try:
                with self._lock:
                    out = self.engine.process(block)
            except Exception as exc:
                self.error = exc
                log.exception("live conversion failed")
                if self._on_error is not None:
                    self._on_error(exc)
                return
            self._out.put(out)


def suggest_block_s(stats: StreamStats, config: StreamConfig) -> float | None:
    """None when the measured p95 compute fits the block; else a larger block on the 10 ms grid.

    The suggestion is 1.5x the p95 per-block time: a longer block spends the fixed part of
    each call (the context, the encoders' start-up) over more audio.
    """
    if not stats.compute_s:
        return None
    p95_s = stats.percentile_ms(95) / 1000
    if p95_s < config.block_s:
        return None
    return min(BLOCK_RANGE_S[1], float(np.ceil(1.5 * p95_s / GRID_S) * GRID_S))
