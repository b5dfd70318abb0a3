"""The live student: a small causal waveform-to-waveform voice converter (LLVC-style), 16 kHz.

After Sadov et al. 2023 (LLVC, arXiv 2311.00873): a per-voice student distilled from the trained
RVC voice (the teacher), so live conversion needs neither a context window nor a 100-250 ms
block. Every part is causal::

    x (16 kHz) -> prenet: causal conv over samples (kernel ``prenet_kernel``)
               -> framing: strided conv, one frame per ``frame_samples`` (2 frames wide)
               -> encoder: dilated causal convs over frames (Waveformer-style residual blocks)
               -> decoder: masked (causal) transformer over frames; each frame attends to itself
                  and the ``attention_window - 1`` frames before it (bounded KV cache)
               -> mask:    sigmoid(decoder) x encoder features (Waveformer's masking)
               -> synthesis: transposed conv, overlap-add of 2-frame-long windows
    y (16 kHz)

Output sample ``n`` depends on input samples ``<= n + lookahead_samples`` and nothing later
(frames complete ``frame_samples - 1`` samples late; the rest of the lookahead is a shift).
The algorithmic latency of a stream is its chunk plus the lookahead
(:meth:`StudentConfig.algorithmic_latency_s`).

Whole-file (:meth:`LiveStudent.forward`) and chunk-by-chunk (:class:`StudentStreamer`) run the
same modules with explicit state: the prenet's and every conv's last input samples, the framing
remainder, the attention key/value caches (at most ``attention_window - 1`` frames, so cost per
chunk does not grow) and the overlap-add tail; so both give the same output up to float rounding.

The default size (128-d encoder of 8 layers, 96-d decoder of 2 layers) is smaller than LLVC's
512-d encoder and 256-d decoder: it is what runs well over 2.8x faster than real time on one
CPU thread of a small VM (``bench/live_student.py`` measures it).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from infer.errors import ModelLoadError
from infer.nn.configs import ConfigError, check_config_keys
from infer.stream import StreamStats

__all__ = [
    "DEFAULT_BLOCK_SAMPLES",
    "STUDENT_FILENAME",
    "STUDENT_FORMAT",
    "STUDENT_SAMPLE_RATE_HZ",
    "LiveStudent",
    "StudentConfig",
    "StudentEngine",
    "StudentFile",
    "StudentState",
    "StudentStreamConfig",
    "StudentStreamer",
    "engine_for_model",
    "load_student",
    "save_student",
    "stream_student_array",
    "student_path",
]

log = logging.getLogger(__name__)

STUDENT_FILENAME = "live_student.pt"
"""The student's file in a model folder and its zip (the one place this name is spelled)."""
STUDENT_FORMAT = "timbre-live-student-1"
STUDENT_SAMPLE_RATE_HZ = 16000
"""The student's input and output rate (LLVC's): the content band of speech, cheap to run."""
LEAKY_SLOPE = 0.1
DEFAULT_BLOCK_SAMPLES = 256
"""A live block of 16 ms: with the 1 ms lookahead, 17 ms of algorithmic latency. Shorter blocks
work (any multiple of a frame) but spend more of each call on per-call overhead."""


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"StudentConfig.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class StudentConfig:
    """Widths and depths of the live student.

    Attributes:
        sample_rate: input and output rate in Hz (16000).
        frame_samples: samples per encoder frame (LLVC's L = 16: 1 ms).
        lookahead_samples: future input samples an output sample may depend on
            (at least ``frame_samples - 1``; LLVC: 16).
        prenet_channels: width of the causal sample-rate prenet.
        prenet_kernel: its kernel in samples.
        encoder_channels: width of the frame encoder (LLVC: 512).
        encoder_layers: dilated causal conv blocks; dilation doubles per block, cycling every
            ``dilation_cycle`` blocks (LLVC: 8 layers).
        encoder_kernel: kernel of each dilated conv, in frames.
        dilation_cycle: blocks per dilation cycle (dilations 1, 2, 4, ... 2^(cycle-1)).
        decoder_dim: width of the masked transformer decoder (LLVC: 256).
        decoder_layers: its layers.
        decoder_heads: attention heads (must divide ``decoder_dim``).
        attention_window: frames each frame attends to, itself included (the bounded KV cache).
    """

    sample_rate: int = STUDENT_SAMPLE_RATE_HZ
    frame_samples: int = 16
    lookahead_samples: int = 16
    prenet_channels: int = 16
    prenet_kernel: int = 9
    encoder_channels: int = 128
    encoder_layers: int = 8
    encoder_kernel: int = 3
    dilation_cycle: int = 8
    decoder_dim: int = 96
    decoder_layers: int = 2
    decoder_heads: int = 4
    attention_window: int = 64

    def __post_init__(self) -> None:
        for name in (
            "frame_samples", "prenet_channels", "prenet_kernel", "encoder_channels", "encoder_layers",
            "encoder_kernel", "dilation_cycle", "decoder_dim", "decoder_layers", "decoder_heads",
            "attention_window",
        ):  # fmt: skip
            _positive_int(name, getattr(self, name))
        if self.sample_rate != STUDENT_SAMPLE_RATE_HZ:
            raise ConfigError(f"StudentConfig.sample_rate must be {STUDENT_SAMPLE_RATE_HZ}")
        if isinstance(self.lookahead_samples, bool) or not isinstance(self.lookahead_samples, int):
            raise ConfigError("StudentConfig.lookahead_samples must be an int")
        if self.lookahead_samples < self.frame_samples - 1:
            raise ConfigError(
                f"StudentConfig.lookahead_samples must be at least frame_samples - 1 "
                f"({self.frame_samples - 1}): a frame completes that late"
            )
        if self.decoder_dim % self.decoder_heads:
            raise ConfigError("StudentConfig.decoder_heads must divide decoder_dim")

    @property
    def shift_samples(self) -> int:
        """The part of the lookahead that is a plain shift (beyond a frame's own delay)."""
        return self.lookahead_samples - (self.frame_samples - 1)

    def algorithmic_latency_s(self, chunk_samples: int) -> float:
        """Delay of a stream fed ``chunk_samples`` at a time: the chunk plus the lookahead."""
        return (chunk_samples + self.lookahead_samples) / self.sample_rate

    def dilations(self) -> tuple[int, ...]:
        """Dilation of each encoder block."""
        return tuple(2 ** (i % self.dilation_cycle) for i in range(self.encoder_layers))

    @classmethod
    def tiny(cls) -> StudentConfig:
        """A very small student for tests and quick trials."""
        return cls(
            prenet_channels=4, encoder_channels=16, encoder_layers=3, decoder_dim=16, decoder_layers=1,
            decoder_heads=2, attention_window=8,
        )  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudentConfig:
        """Build from a plain dict; unknown keys are a :class:`ConfigError`."""
        check_config_keys(cls, data, require_all=False)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field."""
        return asdict(self)


@dataclass
class StudentState:
    """Everything a stream carries between chunks (batch B; zeros at the start).

    Attributes:
        prenet: (B, 1, prenet_kernel - 1) last input samples.
        pending: (B, P, r) prenet outputs not yet making a whole frame (r < frame_samples).
        framing: (B, P, frame_samples) prenet outputs of the previous frame.
        convs: per encoder block, (B, E, (kernel - 1) * dilation) last normalised inputs.
        keys, values: per decoder layer, (B, H, <= window - 1, head_dim) attention caches.
        tail: (B, 1, frame_samples) overlap-add tail of the synthesis.
        frames: frames produced so far.
    """

    prenet: Tensor
    pending: Tensor
    framing: Tensor
    convs: list[Tensor]
    keys: list[Tensor]
    values: list[Tensor]
    tail: Tensor
    frames: int = 0


class _EncoderBlock(nn.Module):
    """``h + W2 act(causal_dilated_conv(LN(h)))`` over frames."""

    def __init__(self, channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.proj = nn.Conv1d(channels, channels, 1)
        self.context = (kernel - 1) * dilation

    def forward(self, h: Tensor, buffer: Tensor) -> tuple[Tensor, Tensor]:
        """h: (B, E, n) -> (B, E, n), and the new buffer (B, E, context)."""
        u = self.norm(h.transpose(1, 2)).transpose(1, 2)
        padded = torch.cat([buffer, u], dim=2)
        out = self.proj(F.leaky_relu(self.conv(padded), LEAKY_SLOPE))
        return h + out, padded[:, :, padded.shape[2] - self.context :]


class _DecoderLayer(nn.Module):
    """Pre-norm masked self-attention with a learned relative-offset bias, then a feed-forward."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads = heads
        self.window = window
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.offset_bias = nn.Parameter(torch.zeros(heads, window))
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: (B, n, D); caches (B, H, c, D/H) -> (B, n, D) and the caches of the last window - 1 frames."""
        batch, n, dim = x.shape
        head_dim = dim // self.heads
        q, k, v = self.qkv(self.norm1(x)).split(dim, dim=2)
        q, k, v = (t.view(batch, n, self.heads, head_dim).transpose(1, 2) for t in (q, k, v))
        k_all = torch.cat([keys, k], dim=2)
        v_all = torch.cat([values, v], dim=2)
        cached = keys.shape[2]
        outs = []
        # Queries in blocks of one window: each block sees at most 2 windows of keys.
        for start in range(0, n, self.window):
            stop = min(n, start + self.window)
            lo = max(0, cached + start - (self.window - 1))
            hi = cached + stop
            outs.append(
                self._attend(q[:, :, start:stop], k_all[:, :, lo:hi], v_all[:, :, lo:hi], cached + start - lo)
            )
        attended = torch.cat(outs, dim=2).transpose(1, 2).reshape(batch, n, dim)
        x = x + self.out(attended)
        x = x + self.ff(self.norm2(x))
        first_kept = max(0, k_all.shape[2] - (self.window - 1))
        return x, k_all[:, :, first_kept:], v_all[:, :, first_kept:]

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, first_query: int) -> Tensor:
        """Query i (at key position ``first_query + i``) attends to keys at offsets 0..window-1 before it."""
        n, m = q.shape[2], k.shape[2]
        offsets = (first_query + torch.arange(n, device=q.device))[:, None] - torch.arange(m, device=q.device)
        allowed = (offsets >= 0) & (offsets < self.window)
        bias = self.offset_bias[:, offsets.clamp(0, self.window - 1)]  # (H, n, m)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
        scores = scores.masked_fill(~allowed, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v


class LiveStudent(nn.Module):
    """The causal student network (see the module docstring); 16 kHz in, 16 kHz out."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        hop = c.frame_samples
        self.prenet = nn.Conv1d(1, c.prenet_channels, c.prenet_kernel)
        self.framing = nn.Conv1d(c.prenet_channels, c.encoder_channels, 2 * hop, stride=hop)
        self.encoder = nn.ModuleList(
            [_EncoderBlock(c.encoder_channels, c.encoder_kernel, d) for d in c.dilations()]
        )
        self.to_decoder = nn.Linear(c.encoder_channels, c.decoder_dim)
        self.decoder = nn.ModuleList(
            [
                _DecoderLayer(c.decoder_dim, c.decoder_heads, c.attention_window)
                for _ in range(c.decoder_layers)
            ]
        )
        self.decoder_norm = nn.LayerNorm(c.decoder_dim)
        self.to_mask = nn.Linear(c.decoder_dim, c.encoder_channels)
        # No bias: overlapping windows would add it twice where a chunk's tail meets the next chunk.
        self.synthesis = nn.ConvTranspose1d(c.encoder_channels, 1, 2 * hop, stride=hop, bias=False)

    def initial_state(self, batch: int = 1) -> StudentState:
        """The zero state a stream starts from."""
        c = self.config
        p = next(self.parameters())
        zeros = lambda *shape: torch.zeros(*shape, dtype=p.dtype, device=p.device)  # noqa: E731
        head_dim = c.decoder_dim // c.decoder_heads
        return StudentState(
            prenet=zeros(batch, 1, c.prenet_kernel - 1),
            pending=zeros(batch, c.prenet_channels, 0),
            framing=zeros(batch, c.prenet_channels, c.frame_samples),
            convs=[zeros(batch, c.encoder_channels, block.context) for block in self.encoder],
            keys=[zeros(batch, c.decoder_heads, 0, head_dim) for _ in self.decoder],
            values=[zeros(batch, c.decoder_heads, 0, head_dim) for _ in self.decoder],
            tail=zeros(batch, 1, c.frame_samples),
        )

    def step(self, x: Tensor, state: StudentState) -> tuple[Tensor, StudentState]:
        """Advance a stream by ``x``: (B, 1, n) samples -> (B, 1, frames * frame_samples) new output.

        Output comes in whole frames: the samples of every frame completed by ``x`` (none when
        ``x`` completes no frame). This is the causal output before the lookahead shift.
        """
        c = self.config
        hop = c.frame_samples
        padded = torch.cat([state.prenet, x], dim=2)
        pre = F.leaky_relu(self.prenet(padded), LEAKY_SLOPE)
        prenet_buffer = padded[:, :, padded.shape[2] - (c.prenet_kernel - 1) :]
        pending = torch.cat([state.pending, pre], dim=2)
        n_frames = pending.shape[2] // hop
        used = n_frames * hop
        if n_frames == 0:
            return x.new_zeros(x.shape[0], 1, 0), StudentState(
                prenet_buffer, pending, state.framing, state.convs, state.keys, state.values, state.tail,
                state.frames,
            )  # fmt: skip
        framed_in = torch.cat([state.framing, pending[:, :, :used]], dim=2)
        h = self.framing(framed_in)  # (B, E, n_frames)
        framing_buffer = framed_in[:, :, framed_in.shape[2] - hop :]
        convs = []
        for block, buffer in zip(self.encoder, state.convs, strict=True):
            h, new_buffer = block(h, buffer)
            convs.append(new_buffer)
        d = self.to_decoder(h.transpose(1, 2))
        keys, values = [], []
        for layer, cached_k, cached_v in zip(self.decoder, state.keys, state.values, strict=True):
            d, new_k, new_v = layer(d, cached_k, cached_v)
            keys.append(new_k)
            values.append(new_v)
        mask = torch.sigmoid(self.to_mask(self.decoder_norm(d))).transpose(1, 2)
        frames = self.synthesis(h * mask)  # (B, 1, (n_frames + 1) * hop)
        frames = torch.cat([frames[:, :, :hop] + state.tail, frames[:, :, hop:]], dim=2)
        out, tail = frames[:, :, :used], frames[:, :, used:]
        new_state = StudentState(
            prenet_buffer, pending[:, :, used:], framing_buffer, convs, keys, values, tail,
            state.frames + n_frames,
        )  # fmt: skip
        return out, new_state

    def forward(self, x: Tensor) -> Tensor:
        """Whole signals: x (B, 1, T) float32 at 16 kHz -> (B, 1, T), the lookahead shift applied.

        ``y[n]`` depends on ``x[: n + lookahead_samples + 1]`` only.
        """
        c = self.config
        total = x.shape[2]
        shift = c.shift_samples
        needed = -(-(total + shift) // c.frame_samples) * c.frame_samples
        padded = F.pad(x, (0, needed - total))
        out, _ = self.step(padded, self.initial_state(x.shape[0]))
        return out[:, :, shift : shift + total]


class StudentStreamer:
    """Chunk-by-chunk conversion of one stream with explicit state; any chunk size.

    :meth:`push` returns every output sample that is determined so far (the lookahead shift
    applied, so the first ``shift_samples`` causal samples are dropped); :meth:`flush` ends the
    stream with zeros and returns the rest, so the concatenation equals
    :meth:`LiveStudent.forward` of the whole input.
    """

    def __init__(self, student: LiveStudent) -> None:
        self.student = student
        self.state = student.initial_state()
        self._to_drop = student.config.shift_samples
        self._pushed = 0
        self._emitted = 0

    @torch.inference_mode()
    def push(self, chunk: np.ndarray) -> np.ndarray:
        """(n,) float32 at 16 kHz -> the output samples it completes (float32, any length)."""
        samples = np.asarray(chunk, dtype=np.float32)
        self._pushed += samples.shape[0]
        x = torch.from_numpy(samples).view(1, 1, -1)
        out, self.state = self.student.step(x, self.state)
        y = out[0, 0].numpy()
        if self._to_drop:
            dropped = min(self._to_drop, y.shape[0])
            y = y[dropped:]
            self._to_drop -= dropped
        self._emitted += y.shape[0]
        return y.copy()

    def flush(self) -> np.ndarray:
        """Feed zeros until every pushed sample has its output; returns that remainder."""
        c = self.student.config
        missing = self._pushed - self._emitted
        if missing <= 0:
            return np.zeros(0, dtype=np.float32)
        pending = self.state.pending.shape[2]
        needed = missing + self._to_drop
        zeros = -(-(needed + pending) // c.frame_samples) * c.frame_samples - pending
        pushed = self._pushed
        rest = self.push(np.zeros(zeros, dtype=np.float32))
        self._pushed = pushed
        return rest[:missing]


@dataclass(frozen=True)
class StudentStreamConfig:
    """Block size of a student stream (samples at 16 kHz, a whole number of frames)."""

    block_samples: int = DEFAULT_BLOCK_SAMPLES
    lookahead_samples: int = 16
    silence_gate_db: float | None = None

    @property
    def block_s(self) -> float:
        """Block length in seconds."""
        return self.block_samples / STUDENT_SAMPLE_RATE_HZ

    @property
    def algorithmic_latency_s(self) -> float:
        """Block plus lookahead."""
        return (self.block_samples + self.lookahead_samples) / STUDENT_SAMPLE_RATE_HZ


class StudentEngine:
    """The live student behind the streaming engine's interface (:class:`infer.stream.LiveSession`).

    Each block of ``block_samples`` in gives one block out, the causal output delayed by the
    lookahead (so the first ``shift_samples`` output samples of a stream are silence). The
    conversion knobs do not apply: the student learnt one fixed conversion.
    """

    def __init__(self, student: LiveStudent, block_samples: int = DEFAULT_BLOCK_SAMPLES) -> None:
        hop = student.config.frame_samples
        if block_samples < hop or block_samples % hop:
            raise ValueError(f"a student block is a positive multiple of {hop} samples, got {block_samples}")
        self.student = student.eval()
        self.config = StudentStreamConfig(block_samples, student.config.lookahead_samples)
        self.stats = StreamStats()
        self.state = student.initial_state()
        self.last_target_f0_hz = np.zeros(0, dtype=np.float32)

    @property
    def block_samples_16k(self) -> int:
        """Input samples per block."""
        return self.config.block_samples

    @property
    def block_samples_out(self) -> int:
        """Output samples per block (the same rate)."""
        return self.config.block_samples

    @property
    def sample_rate(self) -> int:
        """16000."""
        return STUDENT_SAMPLE_RATE_HZ

    def update(self, params: Any) -> None:
        """Conversion knobs do not apply to the student (kept for the engine interface)."""

    @torch.inference_mode()
    def process(self, block_16k: np.ndarray) -> np.ndarray:
        """(block_samples,) float32 -> (block_samples,) float32."""
        block = np.asarray(block_16k, dtype=np.float32)
        if block.shape != (self.block_samples_16k,):
            raise ValueError(f"a block is {self.block_samples_16k} samples at 16 kHz, got {block.shape}")
        started = time.perf_counter()
        out, self.state = self.student.step(torch.from_numpy(block).view(1, 1, -1), self.state)
        self.stats.blocks += 1
        self.stats.compute_s.append(time.perf_counter() - started)
        return out[0, 0].numpy().copy()


@dataclass(frozen=True)
class StudentFile:
    """A loaded ``live_student.pt``: config, weights and plain metadata."""

    config: StudentConfig
    state_dict: dict[str, Tensor]
    metadata: dict[str, Any]

    def build(self) -> LiveStudent:
        """The network with these weights, on the CPU, in eval mode."""
        student = LiveStudent(self.config)
        try:
            student.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            raise ModelLoadError(
                f"{STUDENT_FILENAME}: weights do not fit its config ({str(exc)[:200]})"
            ) from exc
        return student.eval()


def save_student(student: LiveStudent, path: str | Path, metadata: Mapping[str, Any] | None = None) -> None:
    """Write the student atomically as plain data (config dict, tensors, metadata)."""
    from infer.fsutil import atomic_torch_save

    atomic_torch_save(
        {
            "format": STUDENT_FORMAT,
            "config": student.config.to_dict(),
            "state_dict": {k: v.detach().cpu().clone() for k, v in student.state_dict().items()},
            "metadata": dict(metadata or {}),
        },
        path,
    )


def load_student(path: str | Path) -> StudentFile:
    """Read and validate a student file (data only; format, config, weights).

    Raises:
        ModelLoadError: not a student file, or its weights do not fit its config.
        UnsafeFileError: the file asks to run code.
    """
    from infer.safeload import load_checkpoint

    path = Path(path)
    data = load_checkpoint(path)
    if not isinstance(data, dict) or data.get("format") != STUDENT_FORMAT:
        raise ModelLoadError(f"{path.name}: not a Timbre live student (expected format {STUDENT_FORMAT})")
    try:
        config = StudentConfig.from_dict(data["config"])
    except (ConfigError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path.name}: bad student config: {exc}") from exc
    weights = data.get("state_dict")
    if not isinstance(weights, dict) or not all(isinstance(v, Tensor) for v in weights.values()):
        raise ModelLoadError(f"{path.name}: the student's weights are missing")
    metadata = data.get("metadata", {})
    loaded = StudentFile(config, weights, dict(metadata) if isinstance(metadata, dict) else {})
    loaded.build()  # the weights must fit the config
    return loaded


def student_path(model_dir: str | Path | None) -> Path | None:
    """The model folder's ``live_student.pt`` when there is one."""
    if model_dir is None:
        return None
    path = Path(model_dir) / STUDENT_FILENAME
    return path if path.is_file() else None


def engine_for_model(model_path: str | Path, block_s: float | None = None) -> StudentEngine:
    """The live student beside voice model ``model_path`` (a ``.pth`` or its folder), ready to stream.

    ``block_s`` is rounded to whole frames; None takes :data:`DEFAULT_BLOCK_SAMPLES`.

    Raises:
        ModelLoadError: the voice has no ``live_student.pt``, or it is not a valid one.
    """
    model_path = Path(model_path)
    folder = model_path if model_path.is_dir() else model_path.parent
    path = student_path(folder)
    if path is None:
        raise ModelLoadError(
            f"{folder.name} has no live student ({STUDENT_FILENAME}); train one with "
            f"`python -m train live-student --name {folder.name}` or pick --engine torch"
        )
    student = load_student(path).build()
    hop = student.config.frame_samples
    block = DEFAULT_BLOCK_SAMPLES
    if block_s is not None:
        block = max(hop, round(block_s * STUDENT_SAMPLE_RATE_HZ / hop) * hop)
    return StudentEngine(student, block)


def stream_student_array(
    engine: StudentEngine,
    audio_16k: np.ndarray,
    *,
    progress: Any | None = None,
    should_stop: Any | None = None,
) -> np.ndarray:
    """Feed a 16 kHz array through ``engine`` block by block; the output aligned with the input.

    The live delay of the lookahead's shift is removed from the front and the end flushed with
    silence, so the result has the input's length (and equals :meth:`LiveStudent.forward`).
    """
    from infer.progress import check_stop, report

    n = engine.block_samples_16k
    audio = np.asarray(audio_16k, dtype=np.float32)
    shift = engine.student.config.shift_samples
    count = -(-(audio.shape[0] + shift) // n)
    padded = np.zeros(count * n, dtype=np.float32)
    padded[: audio.shape[0]] = audio
    out = np.empty(count * n, dtype=np.float32)
    for i in range(count):
        check_stop(should_stop)
        out[i * n : (i + 1) * n] = engine.process(padded[i * n : (i + 1) * n])
        report(progress, (i + 1) / count, f"block {i + 1}/{count}")
    return out[shift : shift + audio.shape[0]]
