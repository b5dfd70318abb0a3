"""A voice model loaded for conversion (synthesizer on a device, its index, its diffusion heads)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from infer.assets import default_pretrained_dir
from infer.devices import resolve_device, uses_half_weights
from infer.diffusion.denoiser import Denoiser
from infer.diffusion.head import (
    DiffusionHead,
    DiffusionHeadError,
    head_kind_for_sampler,
    load_head_for_sampler,
)
from infer.errors import ModelLoadError
from infer.models import VoiceModel, build_synthesizer, load_voice_model
from infer.options import CONVERT_ENGINES
from infer.precision import check_precision
from infer.retrieval import RetrievalIndex, check_dim, load_index
from infer.synthesizer import Synthesizer

__all__ = ["Resources", "Voice", "load_voice"]


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


@dataclass(frozen=True)
class Resources:
    """Where the shared base files live (content encoder, pitch weights), the device and precision.

    Attributes:
        pretrained_dir: folder of the base files.
        content_encoder: content encoder name or path; None takes the voice model's.
        rmvpe_path: RMVPE weights; None looks in ``pretrained_dir``.
        device: torch device string.
        use_half: fp16 weights on a CUDA or XPU device (RVC's ``is_half``).
        precision: ``'auto'`` (default: ``'bf16'`` on CPUs with native bfloat16, ``'fp32'``
            elsewhere), ``'fp32'`` (RVC's CPU arithmetic, its exact numbers) or ``'bf16'`` (the
            content encoder and the decoder under bfloat16 autocast, about twice as fast; about
            45 dB SNR against fp32). See :mod:`infer.precision`.
        engine: what runs the synthesizer: ``'torch'`` or ``'onnx'`` (onnxruntime on the CPU,
            see :mod:`infer.onnx_synth`); from :data:`infer.options.ENGINES`.
    """

    pretrained_dir: Path = field(default_factory=default_pretrained_dir)
    content_encoder: str | None = None
    rmvpe_path: Path | None = None
    device: str = "cpu"
    use_half: bool = False
    precision: str = "auto"
    engine: str = "torch"

    def __post_init__(self) -> None:
        check_precision(self.precision, half_weights=self.use_half)
        if self.engine not in CONVERT_ENGINES:
            raise ValueError(f"engine must be one of {CONVERT_ENGINES} for a conversion, got {self.engine!r}")


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
    torch_device = resolve_device(device)
    dtype = torch.float16 if uses_half_weights(torch_device, use_half) else torch.float32
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
