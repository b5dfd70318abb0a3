"""Voice conversion: composition of the content encoder, pitch, retrieval and synthesizer.

The semantics follow RVC's inference pipeline (classic ``infer/modules/vc/pipeline.py``):
48 Hz high-pass, reflect padding, long inputs split at quiet points near every
``x_center`` seconds, F0 over the whole padded input, then per chunk: content features,
index blend, 2x nearest upsampling, ``protect`` on unvoiced frames, synthesis, and trimming
of the padding. After synthesis: RMS envelope mix and optional resampling.

Memory stays flat in input length: chunks are converted one after another and only the
input and output buffers grow with the input.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infer import dsp, rvc
from infer.audio import check_convertible, resample
from infer.content import ContentEncoder, load_content_encoder
from infer.devices import synchronize
from infer.diffusion.refine import refine
from infer.errors import ModelLoadError, TimbreError
from infer.memory import release_free_memory
from infer.options import DEFAULT_CONTENT_ENCODER
from infer.params import ConversionResult, ConvertParams, PaddingConfig
from infer.pitch import PitchExtractor, default_method, get_pitch_extractor
from infer.pitch.f0 import f0_to_coarse, median_filter_f0, shift_semitones
from infer.precision import bf16_refusal, resolve_precision
from infer.progress import ProgressFn, StopFn, check_stop, report, sub_progress
from infer.retrieval import search_and_blend
from infer.voice import Resources, Voice, load_voice

__all__ = [
    "ChunkState",
    "ConversionResult",
    "ConvertParams",
    "Converter",
    "PaddingConfig",
    "Resources",
    "Voice",
    "convert",
    "load_voice",
    "split_points",
]

log = logging.getLogger(__name__)

SAMPLE_RATE_16K = 16000
WINDOW_SAMPLES = 160  # F0 hop at 16 kHz: 100 frames per second
INPUT_PEAK_LIMIT = 0.95  # RVC scales inputs whose peak exceeds this
OUTPUT_PEAK_LIMIT = 0.99


def split_points(audio_16k: np.ndarray, padding: PaddingConfig) -> list[int]:
    """RVC's chunk boundaries (in samples of the unpadded input, multiples of the F0 hop)."""
    return [
        t // WINDOW_SAMPLES * WINDOW_SAMPLES
        for t in dsp.find_split_points(
            audio_16k,
            sample_rate=SAMPLE_RATE_16K,
            window=WINDOW_SAMPLES,
            x_center_s=padding.center_s,
            x_query_s=padding.query_s,
            x_max_s=padding.max_s,
        )
    ]


class StageTimer:
    """Seconds spent per stage, summed over calls (GPU work is synchronised before reading)."""

    def __init__(self, device: torch.device) -> None:
        self.totals: dict[str, float] = {}
        self._device = device

    def add(self, stage: str, start: float) -> float:
        """Add the time since ``start`` to ``stage``; returns now, the next stage's start."""
        synchronize(self._device)
        now = time.perf_counter()
        self.totals[stage] = self.totals.get(stage, 0.0) + now - start
        return now


@dataclass
class ChunkState:
    """What one conversion carries from chunk to chunk (or block to block when streaming).

    Attributes:
        params: the conversion's knobs.
        speaker: (1, gin, 1) speaker embedding of ``params.speaker_id``.
        generator: the seeded noise source, or None for fresh noise.
        timer: per-stage seconds.
        chunk_index: chunks converted so far (diffusion seeds are derived from it).
    """

    params: ConvertParams
    speaker: torch.Tensor
    generator: torch.Generator | None
    timer: StageTimer
    chunk_index: int = 0


class Converter:
    """A voice with everything a conversion needs prepared: encoders, pitch trackers, precision.

    ``convert`` converts whole inputs; ``start`` + ``convert_chunk`` convert one padded chunk
    at a time with explicit state, the seam streaming and song covers sit on.
    """

    def __init__(self, voice: Voice, resources: Resources | None = None) -> None:
        self.voice = voice
        self.resources = resources or Resources(device=str(voice.device))
        self.precision = resolve_precision(self.resources.precision, voice.device, voice.dtype)
        # Why the arithmetic asked for was not used ("" when it was); a conversion warns with it.
        self.precision_note = (
            bf16_refusal(voice.device)
            if self.resources.precision == "bf16" and self.precision == "fp32"
            else ""
        )
        self._encoder: ContentEncoder | None = None
        self._onnx: Any = None

    @property
    def onnx(self) -> Any:
        """The :class:`~infer.onnx_synth.OnnxSynthesizer` of ``engine='onnx'`` (exported once, cached)."""
        if self._onnx is None:
            from infer.onnx_synth import OnnxSynthesizer, onnx_for_model

            source = self.voice.model.source_path
            if source is None:
                raise ModelLoadError("--engine onnx needs a voice loaded from a model file")
            self._onnx = OnnxSynthesizer.load(onnx_for_model(Path(source), self.voice.synthesizer))
        return self._onnx

    @property
    def sample_rate(self) -> int:
        """The voice model's output rate in Hz."""
        return self.voice.sample_rate

    @property
    def encoder(self) -> ContentEncoder:
        """The content encoder this voice was trained on (loaded once, cached across converters)."""
        if self._encoder is None:
            voice, resources = self.voice, self.resources
            name = (
                resources.content_encoder or voice.model.metadata.content_encoder or DEFAULT_CONTENT_ENCODER
            )
            encoder = load_content_encoder(
                name,
                output=rvc.content_layer_for_dim(voice.content_dim),
                device=str(voice.device),
                dtype=voice.dtype,
                pretrained_dir=resources.pretrained_dir,
            )
            if encoder.dim != voice.content_dim:
                raise ModelLoadError(
                    f"content encoder {name!r} gives {encoder.dim}-d features but the voice model expects "
                    f"{voice.content_dim}-d ({rvc.version_for_content_dim(voice.content_dim)}); "
                    "pick a matching encoder"
                )
            self._encoder = encoder
        return self._encoder

    def pitch_extractor(self, f0_method: str | None) -> PitchExtractor | None:
        """The F0 tracker for ``f0_method`` (None: the default); None for a model without pitch."""
        if not self.voice.model.config.use_f0:
            return None
        resources = self.resources
        return get_pitch_extractor(
            f0_method or default_method(resources.pretrained_dir),
            device=resources.device,
            rmvpe_path=resources.rmvpe_path,
            pretrained_dir=resources.pretrained_dir,
        )

    def track_pitch(self, audio_16k: np.ndarray, params: ConvertParams, p_len: int) -> np.ndarray | None:
        """Source F0 in Hz at 100 frames/s over ``audio_16k`` (harvest median-filtered as RVC does)."""
        extractor = self.pitch_extractor(params.f0_method)
        if extractor is None:
            return None
        f0 = extractor.extract(audio_16k, p_len=p_len)
        if extractor.name == "harvest" and params.filter_radius > 2:
            f0 = median_filter_f0(f0, 3)
        return f0

    def start(self, params: ConvertParams) -> ChunkState:
        """Check ``params`` against the voice, load what they need, and return a fresh chunk state."""
        n_speakers = self.voice.model.config.spk_embed_dim
        if params.speaker_id >= n_speakers:
            raise TimbreError(f"speaker_id {params.speaker_id} is out of range: this model has {n_speakers}")
        if params.refine is not None:
            if self.resources.engine != "torch":
                raise TimbreError("the diffusion refinement runs on the torch engine; use --engine torch")
            self.voice.diffusion(params.refine.sampler)
        _ = self.encoder
        if self.resources.engine == "onnx":
            _ = self.onnx
        device = self.voice.device
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=device).manual_seed(params.seed)
        sid = torch.tensor([params.speaker_id], device=device, dtype=torch.long)
        return ChunkState(
            params=params,
            speaker=self.voice.synthesizer.speaker_embedding(sid),
            generator=generator,
            timer=StageTimer(device),
        )

    @torch.inference_mode()
    def convert(
        self,
        audio_16k: np.ndarray,
        params: ConvertParams | None = None,
        *,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> ConversionResult:
        """Convert 16 kHz mono audio into the voice.

        Args:
            audio_16k: (L,) float32 mono at 16 kHz (see :func:`infer.audio.load_audio`).
            params: conversion knobs; defaults are RVC's.
            progress: ``progress(fraction, stage)``.
            should_stop: checked between chunks; when it returns True, :class:`Cancelled` is raised.

        Returns:
            The converted audio at the voice's rate (or ``params.output_sample_rate``).
        """
        return _convert_whole(self, audio_16k, params or ConvertParams(), progress, should_stop)

    @torch.inference_mode()
    def convert_chunk(
        self,
        chunk_16k: np.ndarray,
        f0_hz: np.ndarray | None,
        state: ChunkState,
        *,
        trim_samples: int = 0,
    ) -> np.ndarray:
        """RVC's ``Pipeline.vc`` for one padded chunk, less ``trim_samples`` output samples at each end.

        Args:
            chunk_16k: (L,) float32 at 16 kHz, high-passed and padded.
            f0_hz: (>= L // 160,) target F0 (pitch shift applied) for the chunk; None without pitch.
            state: from :meth:`start`; its generator and chunk index advance.
            trim_samples: output samples dropped at each end (only kept frames are decoded).

        Returns:
            (n,) float32 at the model rate.
        """
        pitch = pitchf = None
        if f0_hz is not None:
            device = self.voice.device
            pitch = torch.from_numpy(f0_to_coarse(f0_hz).astype(np.int64)).unsqueeze(0).to(device)
            pitchf = torch.from_numpy(np.asarray(f0_hz, dtype=np.float32)).unsqueeze(0).to(device)
        out = _convert_chunk(self, chunk_16k, pitch, pitchf, state, trim_samples)
        state.chunk_index += 1
        return out


def convert(
    audio_16k: np.ndarray,
    voice: Voice,
    params: ConvertParams | None = None,
    *,
    resources: Resources | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> ConversionResult:
    """Convert 16 kHz mono audio into ``voice``: ``Converter(voice, resources).convert(...)``."""
    return Converter(voice, resources).convert(audio_16k, params, progress=progress, should_stop=should_stop)


def _chunk_bounds(cuts: list[int]) -> list[tuple[int, int | None]]:
    bounds: list[tuple[int, int | None]] = []
    start = 0
    for cut in cuts:
        bounds.append((start, cut))
        start = cut
    bounds.append((start, None))
    return bounds


def _convert_whole(
    converter: Converter,
    audio_16k: np.ndarray,
    params: ConvertParams,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> ConversionResult:
    voice = converter.voice
    config = voice.model.config
    padding = params.padding or (
        PaddingConfig.gpu_half() if voice.dtype == torch.float16 else PaddingConfig.cpu()
    )
    started = time.perf_counter()
    audio = np.asarray(audio_16k, dtype=np.float32)
    warnings = list(check_convertible(audio, SAMPLE_RATE_16K).warnings)
    if converter.precision_note:
        warnings.append(converter.precision_note)
    peak = float(np.abs(audio).max())
    if peak / INPUT_PEAK_LIMIT > 1:
        audio = audio / (peak / INPUT_PEAK_LIMIT)
    report(progress, 0.0, "loading models")
    state = converter.start(params)
    extractor = converter.pitch_extractor(params.f0_method)
    timer = state.timer
    t0 = timer.add("load", started)

    audio = dsp.highpass_filtfilt(audio, SAMPLE_RATE_16K)
    cuts = split_points(audio, padding)
    t_pad = SAMPLE_RATE_16K * padding.pad_s
    # RVC keeps the padded input in float64 but every later use reads it as float32: convert once.
    audio_pad = np.pad(audio, (t_pad, t_pad), mode="reflect").astype(np.float32)
    n_input = audio.shape[0]
    del audio
    p_len = audio_pad.shape[0] // WINDOW_SAMPLES
    t0 = timer.add("prepare", t0)

    f0_source = np.zeros(0, dtype=np.float32)
    f0_target = None
    if extractor is not None:
        report(progress, 0.02, f"pitch ({extractor.name})")
        f0_source = converter.track_pitch(audio_pad, params, p_len)
        f0_target = shift_semitones(f0_source, params.pitch_shift_semitones)[:p_len]
        t0 = timer.add("f0", t0)
    release_free_memory()
    check_stop(should_stop)

    bounds = _chunk_bounds(cuts)
    chunk_progress = sub_progress(progress, 0.1, 0.95)
    # One output buffer, sized for the longest possible result, filled chunk by chunk.
    hop = config.hop_length
    capacity = sum(
        max(0, ((audio_pad.shape[0] if t is None else t + 2 * t_pad + WINDOW_SAMPLES) - s) // WINDOW_SAMPLES)
        * hop
        for s, t in bounds
    )
    audio_out = np.empty(capacity, dtype=np.float32)
    filled = 0
    for i, (s, t) in enumerate(bounds):
        check_stop(should_stop)
        report(chunk_progress, i / len(bounds), f"converting chunk {i + 1}/{len(bounds)}")
        end = None if t is None else t + 2 * t_pad + WINDOW_SAMPLES
        frame_end = None if t is None else (t + 2 * t_pad) // WINDOW_SAMPLES
        chunk_f0 = None if f0_target is None else f0_target[s // WINDOW_SAMPLES : frame_end]
        out = converter.convert_chunk(
            audio_pad[s:end], chunk_f0, state, trim_samples=config.sample_rate * padding.pad_s
        )
        audio_out[filled : filled + out.shape[0]] = out
        filled += out.shape[0]
        del out
        release_free_memory()
    report(chunk_progress, 1.0, "synthesis done")

    t0 = time.perf_counter()
    # the high-passed input, unpadded, for the RMS mix
    audio_out, sample_rate = _finish(audio_out[:filled], audio_pad[t_pad : t_pad + n_input], params, config)
    timer.add("post", t0)
    timer.totals["total"] = time.perf_counter() - started
    report(progress, 1.0, "done")

    keep = slice(t_pad // WINDOW_SAMPLES, p_len - t_pad // WINDOW_SAMPLES)
    f0_shifted = shift_semitones(f0_source, params.pitch_shift_semitones) if f0_source.size else f0_source
    return ConversionResult(
        audio=audio_out.astype(np.float32, copy=False),
        sample_rate=sample_rate,
        f0_source_hz=f0_source[keep],
        f0_target_hz=f0_shifted[keep],
        f0_method=extractor.name if extractor is not None else "none",
        timings_s=dict(timer.totals),
        warnings=warnings,
        precision=converter.precision,
    )


def _finish(
    audio: np.ndarray, source_16k: np.ndarray, params: ConvertParams, config: Any
) -> tuple[np.ndarray, int]:
    """RMS mix with the source, the output rate, the peak limit: (audio, its sample rate)."""
    if params.rms_mix_rate != 1:
        audio = dsp.rms_mix(source_16k, SAMPLE_RATE_16K, audio, config.sample_rate, params.rms_mix_rate)
    sample_rate = config.sample_rate
    if params.output_sample_rate and params.output_sample_rate != sample_rate:
        audio = resample(audio, sample_rate, params.output_sample_rate)
        sample_rate = params.output_sample_rate
    return _limit_peak(audio), sample_rate


def _limit_peak(audio: np.ndarray) -> np.ndarray:
    """Scale ``audio`` in place to a peak of at most OUTPUT_PEAK_LIMIT; non-finite output is an error."""
    # max(|x|) without an |x| temporary; NaN or inf anywhere makes it non-finite.
    peak = max(float(audio.max()), -float(audio.min())) if audio.size else 0.0
    if not np.isfinite(peak):
        raise TimbreError("the synthesizer produced non-finite samples; the model file may be damaged")
    if peak > OUTPUT_PEAK_LIMIT:
        audio = np.multiply(audio, np.float32(OUTPUT_PEAK_LIMIT / peak), out=audio)
    return audio


def content_frames(
    converter: Converter, chunk_16k: np.ndarray, pitchf: torch.Tensor | None, params: ConvertParams
) -> tuple[np.ndarray, int]:
    """Content features at 100 fps (index-blended, protected) and the chunk's frame count."""
    voice = converter.voice
    wav = torch.from_numpy(np.ascontiguousarray(chunk_16k, dtype=np.float32)).to(voice.device)
    with autocast_for(voice.device, converter.precision):
        feats = converter.encoder.encode(wav.unsqueeze(0).to(voice.dtype)).float()  # (1, T, C)
    use_protect = params.protect < 0.5 and pitchf is not None
    feats_np = feats[0].cpu().numpy()
    before_index = feats_np if use_protect else None
    if voice.index is not None and params.index_rate != 0:
        feats_np = search_and_blend(feats_np, voice.index, params.index_rate)
    feats_up = dsp.upsample_nearest_2x(feats_np)
    p_len = min(chunk_16k.shape[0] // WINDOW_SAMPLES, feats_up.shape[0])
    feats_up = feats_up[:p_len]
    if use_protect and before_index is not None and pitchf is not None:
        feats_up = dsp.apply_protect(
            feats_up,
            dsp.upsample_nearest_2x(before_index)[:p_len],
            pitchf[0, :p_len].cpu().numpy(),
            params.protect,
        )
    return feats_up, p_len


def _convert_chunk(
    converter: Converter,
    chunk_16k: np.ndarray,
    pitch: torch.Tensor | None,
    pitchf: torch.Tensor | None,
    state: ChunkState,
    trim_samples: int,
) -> np.ndarray:
    voice, params, timer, g = converter.voice, state.params, state.timer, state.speaker
    synth = voice.synthesizer
    t0 = time.perf_counter()
    feats_up, p_len = content_frames(converter, chunk_16k, pitchf, params)
    if pitch is not None and pitchf is not None:
        pitch, pitchf = pitch[:, :p_len], pitchf[:, :p_len]
    t0 = timer.add("content", t0)

    if converter.resources.engine == "onnx":
        return _synthesize_onnx(converter, feats_up, p_len, pitch, pitchf, state, trim_samples, t0)
    phone = torch.from_numpy(np.ascontiguousarray(feats_up, dtype=np.float32)).unsqueeze(0)
    phone = phone.to(device=voice.device, dtype=voice.dtype)
    lengths = torch.tensor([p_len], device=voice.device, dtype=torch.long)
    m_p, logs_p, x_mask = synth.prior(phone, lengths, pitch, g)
    t0 = timer.add("text_encoder", t0)
    noise = torch.randn(m_p.shape, generator=state.generator, device=m_p.device, dtype=m_p.dtype)
    z_p = (m_p + torch.exp(logs_p) * noise * params.noise_scale) * x_mask
    z = synth.flow_reverse(z_p, x_mask, g)
    t0 = timer.add("flow", t0)
    if params.refine is not None:
        z = refine_latent(voice, params, state.chunk_index, (phone, pitchf, g, x_mask, z))
        t0 = timer.add("diffusion", t0)
    hop = synth.config.hop_length
    sine_noise = None
    if pitchf is not None:
        sine_noise = torch.randn(
            (1, p_len * hop, 1), generator=state.generator, device=z.device, dtype=z.dtype
        )
    total = p_len * hop
    if total <= 2 * trim_samples:
        timer.add("decoder", t0)
        return np.zeros(0, dtype=np.float32)
    start_frame = trim_samples // hop
    stop_frame = -(-(total - trim_samples) // hop)
    with autocast_for(voice.device, converter.precision):
        audio = synth.decode(
            z * x_mask,
            None if pitchf is None else pitchf.to(voice.dtype),
            g,
            sine_noise=sine_noise,
            frames=(start_frame, stop_frame),
        )
    offset = trim_samples - start_frame * hop
    out = audio[0, 0, offset : offset + total - 2 * trim_samples].float().cpu().numpy()
    timer.add("decoder", t0)
    return out


def _synthesize_onnx(
    converter: Converter,
    feats_up: np.ndarray,
    p_len: int,
    pitch: torch.Tensor | None,
    pitchf: torch.Tensor | None,
    state: ChunkState,
    trim_samples: int,
    t0: float,
) -> np.ndarray:
    """The synthesizer stages of one chunk on onnxruntime (RVC's ONNX inputs; see infer.onnx_synth)."""
    config = converter.voice.synthesizer.config
    noise = torch.randn((1, config.inter_channels, p_len), generator=state.generator, device="cpu")
    inputs = {
        "phone": np.ascontiguousarray(feats_up[None], dtype=np.float32),
        "phone_lengths": np.array([p_len], dtype=np.int64),
        "ds": np.array([state.params.speaker_id], dtype=np.int64),
        "rnd": (noise * state.params.noise_scale).numpy(),
    }
    if pitch is not None and pitchf is not None:
        inputs["pitch"] = pitch.cpu().numpy().astype(np.int64)
        inputs["pitchf"] = pitchf.float().cpu().numpy()
    audio = converter.onnx.run(inputs)[0, 0]
    state.timer.add("synthesizer_onnx", t0)
    return audio[trim_samples : len(audio) - trim_samples].astype(np.float32, copy=False)


def refine_latent(
    voice: Voice,
    params: ConvertParams,
    chunk_index: int,
    tensors: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """The latent ``z`` refined by the voice's diffusion head (seeded per chunk)."""
    assert params.refine is not None
    phone, pitchf, g, x_mask, z = tensors
    head, denoiser = voice.diffusion(params.refine.sampler)
    p_len = phone.shape[1]
    f0_cond = pitchf.float() if pitchf is not None else torch.zeros(x_mask.shape[0], p_len, device=z.device)
    seed = None if params.seed is None else params.seed + chunk_index
    return refine(
        head,
        phone.float(),
        f0_cond,
        g.float(),
        x_mask.float(),
        params=replace(params.refine, seed=seed),
        z_init=z.float(),
        denoiser=denoiser,
    ).to(z.dtype)


def autocast_for(device: torch.device, precision: str) -> torch.autocast:
    """bfloat16 autocast on ``device`` for ``precision == 'bf16'``; a disabled context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
