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
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infer import dsp
from infer.assets import default_pretrained_dir
from infer.audio import check_convertible, resample
from infer.content import ContentEncoder, load_content_encoder
from infer.diffusion.denoiser import Denoiser
from infer.diffusion.head import (
    DiffusionHead,
    DiffusionHeadError,
    head_kind_for_sampler,
    load_head_for_sampler,
)
from infer.diffusion.refine import RefineParams, refine
from infer.errors import ModelLoadError, TimbreError
from infer.memory import release_free_memory
from infer.models import VoiceModel, build_synthesizer, load_voice_model
from infer.pitch import PitchExtractor, default_method, get_pitch_extractor
from infer.pitch.f0 import f0_to_coarse, median_filter_f0, shift_semitones
from infer.precision import check_precision, resolve_precision
from infer.progress import ProgressFn, StopFn, check_stop, report, sub_progress
from infer.retrieval import RetrievalIndex, check_dim, load_index, search_and_blend
from infer.synthesizer import Synthesizer

log = logging.getLogger(__name__)

SAMPLE_RATE_16K = 16000
WINDOW_SAMPLES = 160  # F0 hop at 16 kHz: 100 frames per second
INPUT_PEAK_LIMIT = 0.95  # RVC scales inputs whose peak exceeds this
OUTPUT_PEAK_LIMIT = 0.99
F0_METHODS = ("pm", "harvest", "crepe", "crepe-tiny", "fcpe", "rmvpe")
SAMPLERS = ("off", "ddpm", "ddim", "lcm")
LCM_MAX_STEPS = 4


@dataclass(frozen=True)
class PaddingConfig:
    """RVC's chunking constants in seconds (``x_pad``, ``x_query``, ``x_center``, ``x_max``)."""

    pad_s: int = 1
    query_s: int = 6
    center_s: int = 38
    max_s: int = 41

    @classmethod
    def cpu(cls) -> PaddingConfig:
        """RVC's values on the CPU or without half precision."""
        return cls(1, 6, 38, 41)

    @classmethod
    def gpu_half(cls) -> PaddingConfig:
        """RVC's values for fp16 on a GPU (longer chunks)."""
        return cls(3, 10, 60, 65)

    def __post_init__(self) -> None:
        if not (self.pad_s > 0 and 0 < self.query_s < self.center_s < self.max_s):
            raise ValueError(f"inconsistent padding config {self}")


@dataclass(frozen=True)
class ConvertParams:
    """Every knob of a conversion, with RVC's defaults.

    Attributes:
        pitch_shift_semitones: transpose of the source F0 (+12 = one octave up).
        f0_method: pm, harvest, crepe, crepe-tiny, fcpe or rmvpe; None picks rmvpe when its
            weights are present, else fcpe.
        index_rate: share of retrieved index features blended into the content features.
        filter_radius: median filter on harvest F0 when >= 3 (RVC's semantics).
        rms_mix_rate: 1 keeps the output's loudness envelope, 0 imposes the input's.
        protect: unvoiced frames keep this share of the index-blended features (0.5 = off).
        output_sample_rate: resample the output to this rate; 0 keeps the model's rate.
        speaker_id: row of the speaker embedding for multi-speaker models.
        noise_scale: scale of the prior sample (RVC: 0.66666).
        seed: seed for the prior and NSF noise; None draws fresh noise.
        padding: chunking constants; None picks RVC's CPU or GPU-fp16 values.
        sampler: ``'off'`` (the VITS prior + flow, RVC's path) or a diffusion sampler over the
            decoder latent: ``'ddpm'``, ``'ddim'`` (need the model's teacher head) or ``'lcm'``
            (needs its distilled head).
        diffusion_steps: sampler steps (LCM: 1 to 4).
        guidance_weight: classifier-free guidance weight w >= 0 (0 = conditional prediction).
        refine_start: ``'shallow'`` starts from the VITS latent noised to ``refine_strength``;
            ``'noise'`` starts from pure noise (LCM-SVC).
        refine_strength: for the shallow start, the fraction of the diffusion time, in (0, 1].
    """

    pitch_shift_semitones: float = 0.0
    f0_method: str | None = None
    index_rate: float = 0.75
    filter_radius: int = 3
    rms_mix_rate: float = 0.25
    protect: float = 0.33
    output_sample_rate: int = 0
    speaker_id: int = 0
    noise_scale: float = 0.66666
    seed: int | None = None
    padding: PaddingConfig | None = None
    sampler: str = "off"
    diffusion_steps: int = 4
    guidance_weight: float = 0.0
    refine_start: str = "shallow"
    refine_strength: float = 0.5

    def __post_init__(self) -> None:
        checks = [
            (-48 <= self.pitch_shift_semitones <= 48, "pitch_shift_semitones must be within ±48"),
            (
                self.f0_method is None or self.f0_method in F0_METHODS,
                f"f0_method must be one of {F0_METHODS}",
            ),
            (0.0 <= self.index_rate <= 1.0, "index_rate must be in [0, 1]"),
            (0 <= self.filter_radius <= 7, "filter_radius must be in [0, 7]"),
            (0.0 <= self.rms_mix_rate <= 1.0, "rms_mix_rate must be in [0, 1]"),
            (0.0 <= self.protect <= 0.5, "protect must be in [0, 0.5]"),
            (
                self.output_sample_rate == 0 or self.output_sample_rate >= 16000,
                "output_sample_rate must be 0 (model rate) or at least 16000",
            ),
            (self.speaker_id >= 0, "speaker_id must be >= 0"),
            (0.0 <= self.noise_scale <= 2.0, "noise_scale must be in [0, 2]"),
            (self.sampler in SAMPLERS, f"sampler must be one of {SAMPLERS}"),
            (
                1 <= self.diffusion_steps <= (LCM_MAX_STEPS if self.sampler == "lcm" else 1000),
                "diffusion_steps must be 1 to 4 for lcm and 1 to 1000 for ddpm/ddim",
            ),
            (0.0 <= self.guidance_weight <= 20.0, "guidance_weight must be in [0, 20]"),
            (self.refine_start in ("shallow", "noise"), "refine_start must be 'shallow' or 'noise'"),
            (0.0 < self.refine_strength <= 1.0, "refine_strength must be in (0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message} (got {self})")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ConvertParams:
        """Build from a plain dict, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown conversion parameter(s): {sorted(unknown)}")
        values = dict(values)
        if isinstance(values.get("padding"), dict):
            values["padding"] = PaddingConfig(**values["padding"])
        return cls(**values)


@dataclass
class Voice:
    """A voice model ready to convert: synthesizer weights on a device, and its index."""

    model: VoiceModel
    synthesizer: Synthesizer
    index: RetrievalIndex | None
    device: torch.device
    dtype: torch.dtype
    model_dir: Path | None = None
    _denoisers: dict[str, tuple[DiffusionHead, Denoiser]] = field(default_factory=dict, repr=False)

    def diffusion(self, sampler: str) -> tuple[DiffusionHead, Denoiser]:
        """The diffusion head (and its network on this device) that ``sampler`` needs, loaded once."""
        kind = head_kind_for_sampler(sampler)
        if kind not in self._denoisers:
            if self.model_dir is None:
                raise DiffusionHeadError(
                    "this voice model was not loaded from a file; it has no diffusion head"
                )
            head = load_head_for_sampler(self.model_dir, sampler)
            config = self.model.config
            head.check_compatible(
                latent_channels=config.inter_channels,
                content_dim=config.content_dim,
                gin_channels=config.gin_channels,
            )
            self._denoisers[kind] = (head, head.build_denoiser(self.device))
        return self._denoisers[kind]

    @property
    def sample_rate(self) -> int:
        return self.model.config.sample_rate

    @property
    def content_dim(self) -> int:
        return self.model.config.content_dim


@dataclass
class ConversionResult:
    """Output audio (float32 mono, peak at most 0.99) and what happened on the way."""

    audio: np.ndarray
    sample_rate: int
    f0_source_hz: np.ndarray
    f0_target_hz: np.ndarray
    f0_method: str
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    precision: str = "fp32"
    """The arithmetic used: ``'fp32'``, ``'bf16'`` or ``'fp16'`` (see :mod:`infer.precision`)."""


@dataclass(frozen=True)
class Resources:
    """Where the shared base files live (content encoder, pitch weights), the device and precision.

    Attributes:
        pretrained_dir: folder of the base files.
        content_encoder: content encoder name or path; None takes the voice model's.
        rmvpe_path: RMVPE weights; None looks in ``pretrained_dir``.
        device: torch device string.
        use_half: fp16 weights on a CUDA device (RVC's ``is_half``).
        precision: ``'auto'`` (default: ``'bf16'`` on CPUs with native bfloat16, ``'fp32'``
            elsewhere), ``'fp32'`` (RVC's CPU arithmetic, its exact numbers) or ``'bf16'`` (the
            content encoder and the decoder under bfloat16 autocast, about twice as fast; about
            45 dB SNR against fp32). See :mod:`infer.precision`.
    """

    pretrained_dir: Path = field(default_factory=default_pretrained_dir)
    content_encoder: str | None = None
    rmvpe_path: Path | None = None
    device: str = "cpu"
    use_half: bool = False
    precision: str = "auto"

    def __post_init__(self) -> None:
        check_precision(self.precision, half_weights=self.use_half)


_VOICE_CACHE: OrderedDict[tuple[Any, ...], Voice] = OrderedDict()
_VOICE_CACHE_SIZE = 2
_CACHE_LOCK = threading.Lock()


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def load_voice(
    model_path: str | Path,
    index_path: str | Path | None = None,
    *,
    device: str = "cpu",
    use_half: bool = False,
) -> Voice:
    """Load a voice model (and its index) once; later calls with unchanged files reuse it."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelLoadError(f"model file not found: {model_path}")
    index_path = Path(index_path) if index_path else None
    if index_path is not None and not index_path.is_file():
        raise ModelLoadError(f"index file not found: {index_path}")
    torch_device = torch.device(device)
    dtype = torch.float16 if use_half and torch_device.type == "cuda" else torch.float32
    key = (_file_key(model_path), _file_key(index_path) if index_path else None, str(torch_device), dtype)
    with _CACHE_LOCK:
        if key in _VOICE_CACHE:
            _VOICE_CACHE.move_to_end(key)
            return _VOICE_CACHE[key]
    model = load_voice_model(model_path)
    synthesizer = build_synthesizer(model, device=torch_device, dtype=dtype)
    index = None
    if index_path is not None:
        index = load_index(index_path)
        check_dim(index, model.config.content_dim)
    voice = Voice(
        model=model,
        synthesizer=synthesizer,
        index=index,
        device=torch_device,
        dtype=dtype,
        model_dir=model_path.absolute().parent,
    )
    with _CACHE_LOCK:
        _VOICE_CACHE[key] = voice
        while len(_VOICE_CACHE) > _VOICE_CACHE_SIZE:
            _VOICE_CACHE.popitem(last=False)
    return voice


def _content_encoder_for(voice: Voice, resources: Resources) -> ContentEncoder:
    output = "v1" if voice.content_dim == 256 else "v2"
    name = resources.content_encoder or voice.model.metadata.content_encoder or "hubert_base"
    encoder = load_content_encoder(
        name,
        output=output,
        device=str(voice.device),
        dtype=voice.dtype,
        pretrained_dir=resources.pretrained_dir,
    )
    if encoder.dim != voice.content_dim:
        raise ModelLoadError(
            f"content encoder {name!r} gives {encoder.dim}-d features but the voice model expects "
            f"{voice.content_dim}-d ({'v1' if voice.content_dim == 256 else 'v2'}); pick a matching encoder"
        )
    return encoder


def _pitch_extractor_for(params: ConvertParams, resources: Resources) -> PitchExtractor:
    method = params.f0_method or default_method(resources.pretrained_dir)
    return get_pitch_extractor(
        method,
        device=resources.device,
        rmvpe_path=resources.rmvpe_path,
        pretrained_dir=resources.pretrained_dir,
    )


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


class _Timer:
    def __init__(self, device: torch.device) -> None:
        self.totals: dict[str, float] = {}
        self._device = device

    def add(self, stage: str, start: float) -> float:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        now = time.perf_counter()
        self.totals[stage] = self.totals.get(stage, 0.0) + now - start
        return now


@torch.inference_mode()
def convert(
    audio_16k: np.ndarray,
    voice: Voice,
    params: ConvertParams | None = None,
    *,
    resources: Resources | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> ConversionResult:
    """Convert 16 kHz mono audio into ``voice``.

    Args:
        audio_16k: (L,) float32 mono at 16 kHz (see :func:`infer.audio.load_audio`).
        voice: from :func:`load_voice`.
        params: conversion knobs; defaults are RVC's.
        resources: where the content encoder and pitch weights live, and the device.
        progress: ``progress(fraction, stage)``.
        should_stop: checked between chunks; when it returns True, :class:`Cancelled` is raised.

    Returns:
        The converted audio at ``voice.sample_rate`` (or ``params.output_sample_rate``).
    """
    params = params or ConvertParams()
    resources = resources or Resources(device=str(voice.device))
    config = voice.model.config
    padding = params.padding or (
        PaddingConfig.gpu_half() if voice.dtype == torch.float16 else PaddingConfig.cpu()
    )
    n_speakers = config.spk_embed_dim
    if params.speaker_id >= n_speakers:
        raise TimbreError(f"speaker_id {params.speaker_id} is out of range: this model has {n_speakers}")
    precision = resolve_precision(resources.precision, voice.device, voice.dtype)
    timer = _Timer(voice.device)
    warnings: list[str] = []
    started = time.perf_counter()

    audio = np.asarray(audio_16k, dtype=np.float32)
    check_convertible(audio, SAMPLE_RATE_16K)
    peak = float(np.abs(audio).max())
    if peak / INPUT_PEAK_LIMIT > 1:
        audio = audio / (peak / INPUT_PEAK_LIMIT)
    report(progress, 0.0, "loading models")
    encoder = _content_encoder_for(voice, resources)
    extractor = _pitch_extractor_for(params, resources) if config.use_f0 else None
    if params.sampler != "off":
        voice.diffusion(params.sampler)
    t0 = timer.add("load", started)

    audio = dsp.highpass_filtfilt(audio, SAMPLE_RATE_16K)
    cuts = split_points(audio, padding)
    t_pad = SAMPLE_RATE_16K * padding.pad_s
    t_pad_tgt = config.sample_rate * padding.pad_s
    # RVC keeps the padded input in float64 but every later use reads it as float32: convert once.
    audio_pad = np.pad(audio, (t_pad, t_pad), mode="reflect").astype(np.float32)
    n_input = audio.shape[0]
    del audio
    p_len = audio_pad.shape[0] // WINDOW_SAMPLES
    t0 = timer.add("prepare", t0)

    pitch = pitchf = None
    f0_source = np.zeros(0, dtype=np.float32)
    if extractor is not None:
        report(progress, 0.02, f"pitch ({extractor.name})")
        f0 = extractor.extract(audio_pad, p_len=p_len)
        if extractor.name == "harvest" and params.filter_radius > 2:
            f0 = median_filter_f0(f0, 3)
        f0_source = f0.copy()
        f0 = shift_semitones(f0, params.pitch_shift_semitones)
        pitch = torch.from_numpy(f0_to_coarse(f0)[:p_len].astype(np.int64)).unsqueeze(0).to(voice.device)
        pitchf = torch.from_numpy(f0[:p_len].astype(np.float32)).unsqueeze(0).to(voice.device)
        t0 = timer.add("f0", t0)
    release_free_memory()
    check_stop(should_stop)

    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=voice.device).manual_seed(params.seed)
    sid = torch.tensor([params.speaker_id], device=voice.device, dtype=torch.long)
    g = voice.synthesizer.speaker_embedding(sid)

    bounds: list[tuple[int, int | None]] = []
    start = 0
    for cut in cuts:
        bounds.append((start, cut))
        start = cut
    bounds.append((start, None))

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
        chunk = audio_pad[s:end]
        frame_end = None if t is None else (t + 2 * t_pad) // WINDOW_SAMPLES
        chunk_pitch = None if pitch is None else pitch[:, s // WINDOW_SAMPLES : frame_end]
        chunk_pitchf = None if pitchf is None else pitchf[:, s // WINDOW_SAMPLES : frame_end]
        out = _convert_chunk(
            chunk,
            chunk_pitch,
            chunk_pitchf,
            g,
            voice,
            encoder,
            params,
            timer,
            generator,
            chunk_index=i,
            trim_samples=t_pad_tgt,
            precision=precision,
        )
        audio_out[filled : filled + out.shape[0]] = out
        filled += out.shape[0]
        del out
        release_free_memory()
    report(chunk_progress, 1.0, "synthesis done")

    t0 = time.perf_counter()
    audio_out = audio_out[:filled]
    if params.rms_mix_rate != 1:
        source = audio_pad[t_pad : t_pad + n_input]  # the high-passed input, unpadded
        audio_out = dsp.rms_mix(source, SAMPLE_RATE_16K, audio_out, config.sample_rate, params.rms_mix_rate)
    sample_rate = config.sample_rate
    if params.output_sample_rate and params.output_sample_rate != sample_rate:
        audio_out = resample(audio_out, sample_rate, params.output_sample_rate)
        sample_rate = params.output_sample_rate
    # max(|x|) without an |x| temporary; NaN or inf anywhere makes it non-finite.
    out_peak = max(float(audio_out.max()), -float(audio_out.min())) if audio_out.size else 0.0
    if not np.isfinite(out_peak):
        raise TimbreError("the synthesizer produced non-finite samples; the model file may be damaged")
    if out_peak > OUTPUT_PEAK_LIMIT:
        audio_out = np.multiply(audio_out, np.float32(OUTPUT_PEAK_LIMIT / out_peak), out=audio_out)
    timer.add("post", t0)
    timer.totals["total"] = time.perf_counter() - started
    report(progress, 1.0, "done")

    f0_target = shift_semitones(f0_source, params.pitch_shift_semitones) if f0_source.size else f0_source
    return ConversionResult(
        audio=audio_out.astype(np.float32, copy=False),
        sample_rate=sample_rate,
        f0_source_hz=f0_source[t_pad // WINDOW_SAMPLES : p_len - t_pad // WINDOW_SAMPLES],
        f0_target_hz=f0_target[t_pad // WINDOW_SAMPLES : p_len - t_pad // WINDOW_SAMPLES],
        f0_method=extractor.name if extractor is not None else "none",
        timings_s=dict(timer.totals),
        warnings=warnings,
        precision=precision,
    )


def _convert_chunk(
    chunk_16k: np.ndarray,
    pitch: torch.Tensor | None,
    pitchf: torch.Tensor | None,
    g: torch.Tensor,
    voice: Voice,
    encoder: ContentEncoder,
    params: ConvertParams,
    timer: _Timer,
    generator: torch.Generator | None,
    *,
    chunk_index: int = 0,
    trim_samples: int = 0,
    precision: str = "fp32",
) -> np.ndarray:
    """RVC's ``Pipeline.vc`` for one padded chunk, less ``trim_samples`` output samples at each end.

    Returns (n,) float32 at the model rate. Only the kept frames are decoded (the decoder is
    local, so the trimmed padding need not be synthesized).
    """
    synth = voice.synthesizer
    t0 = time.perf_counter()
    wav = torch.from_numpy(np.ascontiguousarray(chunk_16k, dtype=np.float32)).to(voice.device)
    with _autocast(voice.device, precision):
        feats = encoder.encode(wav.unsqueeze(0).to(voice.dtype)).float()  # (1, T, C)
    t0 = timer.add("content", t0)

    use_protect = params.protect < 0.5 and pitchf is not None
    feats_np = feats[0].cpu().numpy()
    before_index = feats_np if use_protect else None
    if voice.index is not None and params.index_rate != 0:
        feats_np = search_and_blend(feats_np, voice.index, params.index_rate)
    feats_up = dsp.upsample_nearest_2x(feats_np)
    p_len = chunk_16k.shape[0] // WINDOW_SAMPLES
    p_len = min(p_len, feats_up.shape[0])
    if pitch is not None and pitchf is not None:
        pitch = pitch[:, :p_len]
        pitchf = pitchf[:, :p_len]
    feats_up = feats_up[:p_len]
    if use_protect and before_index is not None and pitchf is not None:
        feats_up = dsp.apply_protect(
            feats_up, dsp.upsample_nearest_2x(before_index)[:p_len], pitchf[0].cpu().numpy(), params.protect
        )
    t0 = timer.add("retrieval", t0)

    phone = torch.from_numpy(np.ascontiguousarray(feats_up, dtype=np.float32)).unsqueeze(0)
    phone = phone.to(device=voice.device, dtype=voice.dtype)
    lengths = torch.tensor([p_len], device=voice.device, dtype=torch.long)
    m_p, logs_p, x_mask = synth.prior(phone, lengths, pitch, g)
    t0 = timer.add("text_encoder", t0)
    noise = torch.randn(m_p.shape, generator=generator, device=m_p.device, dtype=m_p.dtype)
    z_p = (m_p + torch.exp(logs_p) * noise * params.noise_scale) * x_mask
    z = synth.flow_reverse(z_p, x_mask, g)
    t0 = timer.add("flow", t0)
    if params.sampler != "off":
        head, denoiser = voice.diffusion(params.sampler)
        f0_cond = (
            pitchf.float() if pitchf is not None else torch.zeros(x_mask.shape[0], p_len, device=z.device)
        )
        refine_params = RefineParams(
            sampler=params.sampler,
            steps=params.diffusion_steps,
            guidance_weight=params.guidance_weight,
            start=params.refine_start,
            strength=params.refine_strength,
            seed=None if params.seed is None else params.seed + chunk_index,
        )
        z = refine(
            head,
            phone.float(),
            f0_cond,
            g.float(),
            x_mask.float(),
            params=refine_params,
            z_init=z.float(),
            denoiser=denoiser,
        ).to(z.dtype)
        t0 = timer.add("diffusion", t0)
    sine_noise = None
    if pitchf is not None:
        sine_noise = torch.randn(
            (1, p_len * synth.config.hop_length, 1), generator=generator, device=z.device, dtype=z.dtype
        )
    hop = synth.config.hop_length
    total = p_len * hop
    if total <= 2 * trim_samples:
        timer.add("decoder", t0)
        return np.zeros(0, dtype=np.float32)
    start_frame = trim_samples // hop
    stop_frame = -(-(total - trim_samples) // hop)
    with _autocast(voice.device, precision):
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


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    """bfloat16 autocast on ``device`` for ``precision == 'bf16'``; a disabled context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
