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
    return _native_bf16(cpu_flags())


def check_precision(precision: str, *, half_weights: bool = False) -> str:
    """``precision`` if it is one of :data:`PRECISIONS` and fits the weights; ValueError otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if half_weights and precision == "bf16":
        raise ValueError("bf16 cannot be combined with fp16 weights (use_half); choose one")
    return precision


def bf16_refusal(device: torch.device | str, flags: frozenset[str] | None = None) -> str:
    """Why bf16 would be a trap on ``device`` (``""`` where it runs natively, or on a GPU).

    ``flags`` is the CPU feature table (the machine's own when None; tests pass a fake one).
    Without AVX-512 BF16 or AMX, PyTorch emulates bfloat16 on the CPU: measured on an AVX2 EPYC,
    10 s of input took 138 s in bf16 against 11 s in fp32, so the studio and the CLIs never take it.
    """
    if torch.device(device).type != "cpu":
        return ""
    native = cpu_has_native_bf16() if flags is None else _native_bf16(flags)
    if native:
        return ""
    return (
        "bf16 was asked for, but this CPU has no native bfloat16 (avx512_bf16 or amx_bf16), "
        "where it is emulated about 10x slower than fp32; converting in fp32 instead"
    )


def _native_bf16(flags: frozenset[str]) -> bool:
    return platform.machine().lower() in ("x86_64", "amd64") and bool(flags & NATIVE_BF16_CPU_FLAGS)


def resolve_precision(
    precision: str,
    device: torch.device | str,
    weights_dtype: torch.dtype,
    *,
    flags: frozenset[str] | None = None,
) -> str:
    """The arithmetic a conversion on ``device`` with weights in ``weights_dtype`` will use.

    Returns ``'fp32'``, ``'bf16'`` (autocast) or ``'fp16'``: fp16 weights (RVC's ``is_half`` on
    CUDA) run as they are, with no autocast layered on top. An explicit ``'bf16'`` on a CPU that
    would emulate it resolves to ``'fp32'`` with a warning (:func:`bf16_refusal` says why).
    """
    check_precision(precision, half_weights=weights_dtype == torch.float16)
    if weights_dtype == torch.float16:
        return "fp16"
    if precision == "bf16":
        refusal = bf16_refusal(device, flags)
        if refusal:
            log.warning("%s", refusal)
            return "fp32"
        return "bf16"
    if precision != "auto":
        return precision
    if torch.device(device).type == "cpu" and not bf16_refusal(device, flags):
        return "bf16"
    return "fp32"
