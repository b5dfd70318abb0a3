"""Which arithmetic a conversion runs in: fp32, or bfloat16 where the hardware does it natively.

``'fp32'`` is RVC's CPU arithmetic and reproduces its numbers. ``'bf16'`` runs the content
encoder and the decoder (most of the time of a conversion) under bfloat16 autocast: on CPUs with
AVX-512 BF16 or AMX it is about twice as fast, and its output is within about 45 dB SNR of the
fp32 output (``bench/convert_speed.py`` prints the figure). ``'auto'`` picks
bf16 on such CPUs and fp32 everywhere else (CPUs without native bf16 would emulate it slowly;
CUDA keeps RVC's own choice, fp16 weights with ``use_half``).
"""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path

import torch

from infer.options import CONVERT_PRECISIONS, names

log = logging.getLogger(__name__)

PRECISIONS = names(CONVERT_PRECISIONS)
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""``/proc/cpuinfo`` flags of x86 CPUs with bfloat16 dot-product instructions."""
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU feature flags Linux reports (empty where there is no ``/proc/cpuinfo``)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AVX-512 BF16 or AMX (and a oneDNN build of PyTorch to use them)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    return bool(cpu_flags() & NATIVE_BF16_CPU_FLAGS)


def check_precision(precision: str, *, half_weights: bool = False) -> str:
    """``precision`` if it is one of :data:`PRECISIONS` and fits the weights; ValueError otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if half_weights and precision == "bf16":
        raise ValueError("bf16 cannot be combined with fp16 weights (use_half); choose one")
    return precision


def resolve_precision(precision: str, device: torch.device | str, weights_dtype: torch.dtype) -> str:
    """The arithmetic a conversion on ``device`` with weights in ``weights_dtype`` will use.

    Returns ``'fp32'``, ``'bf16'`` (autocast) or ``'fp16'``: fp16 weights (RVC's ``is_half`` on
    CUDA) run as they are, with no autocast layered on top.
    """
    check_precision(precision, half_weights=weights_dtype == torch.float16)
    if weights_dtype == torch.float16:
        return "fp16"
    if precision != "auto":
        return precision
    if torch.device(device).type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"
