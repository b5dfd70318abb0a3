"""The one device resolver: ``auto``, ``cpu``, ``cuda[:N]``, ``xpu[:N]``, ``mps`` -> a torch device.

ROCm builds of PyTorch report their GPUs through the CUDA API, so they resolve as ``cuda``.
``auto`` picks the best device this machine has, in the order of :data:`AUTO_ORDER`, and logs why.
Every path that runs a network (conversion, training, the studio, the live engine) asks here.

Arithmetic per device (see README "Devices"): fp16 weights (``--half``) on CUDA and XPU, bf16
autocast on CPUs with native bf16 instructions (``auto``) and on request on CUDA/XPU; MPS runs fp32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from infer.errors import TimbreError
from infer.options import DEVICES, names

log = logging.getLogger(__name__)

AUTO = "auto"
AUTO_ORDER = ("cuda", "xpu", "mps", "cpu")
"""What ``auto`` tries, best first."""
INDEXED_TYPES = ("cuda", "xpu")
"""Device types that take an index (``cuda:1``); MPS and the CPU are one device each."""
HALF_WEIGHT_TYPES = frozenset({"cuda", "xpu"})
"""Device types where fp16 weights (RVC's ``is_half``) are used; MPS and the CPU keep fp32."""
CHOICES_HINT = f"use {', '.join(names(DEVICES))}, cuda:N or xpu:N"


class DeviceError(TimbreError, ValueError):
    """The device asked for does not exist on this machine or is not a device name."""


def _xpu_backend() -> object | None:
    return getattr(torch, "xpu", None)


def device_count(device_type: str) -> int:
    """How many devices of ``device_type`` this machine offers torch (0 where the backend is absent)."""
    if device_type == "cpu":
        return 1
    if device_type == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device_type == "xpu":
        xpu = _xpu_backend()
        if xpu is None or not xpu.is_available():  # type: ignore[attr-defined]
            return 0
        return int(xpu.device_count())  # type: ignore[attr-defined]
    if device_type == "mps":
        mps = getattr(torch.backends, "mps", None)
        return 1 if mps is not None and mps.is_available() else 0
    return 0


def parse_device_name(choice: str) -> tuple[str, int | None]:
    """``'cuda:1'`` -> ``('cuda', 1)``; checks the spelling only (DeviceError if it is not a device)."""
    name = choice.strip().lower()
    kind, sep, index_text = name.partition(":")
    if kind == AUTO and not sep:
        return AUTO, None
    if kind not in DEVICES or kind == AUTO:
        raise DeviceError(f"{choice!r} is not a device; {CHOICES_HINT}")
    if not sep:
        return kind, None
    if kind not in INDEXED_TYPES or not index_text.isdigit():
        raise DeviceError(f"{choice!r} is not a device; {CHOICES_HINT}")
    return kind, int(index_text)


def _describe(device_type: str) -> str:
    if device_type == "cuda":
        return f"CUDA GPU {torch.cuda.get_device_name(0)}"
    if device_type == "xpu":
        xpu = _xpu_backend()
        return f"Intel XPU {xpu.get_device_name(0)}"  # type: ignore[union-attr]
    if device_type == "mps":
        return "Apple GPU (MPS)"
    return "the CPU"


def pick_auto() -> torch.device:
    """The best device available (CUDA > XPU > MPS > CPU), logged with what was passed over."""
    missing = []
    for device_type in AUTO_ORDER:
        if device_count(device_type) > 0:
            why = f" (no {', '.join(missing)})" if missing else ""
            # The CPU on a machine without accelerators is no news: said only with --debug.
            level = logging.DEBUG if device_type == "cpu" else logging.INFO
            log.log(level, "device auto: %s%s", _describe(device_type), why)
            return torch.device(device_type, 0) if device_type in INDEXED_TYPES else torch.device(device_type)
        missing.append(device_type.upper() if device_type != "mps" else "MPS")
    return torch.device("cpu")  # unreachable: the CPU always counts one


def resolve_device(choice: str | torch.device | None) -> torch.device:
    """The device ``choice`` names; ``auto`` (or None) picks the best one available.

    Raises:
        DeviceError: the name is not a device, or it names one this machine does not have.
    """
    if isinstance(choice, torch.device):
        choice = str(choice)
    kind, index = parse_device_name(choice or AUTO)
    if kind == AUTO:
        return pick_auto()
    count = device_count(kind)
    if count == 0:
        raise DeviceError(f"device {choice!r} was asked for, but this machine has no {kind} device; use cpu")
    if kind not in INDEXED_TYPES:
        return torch.device(kind)
    index = index if index is not None else 0
    if index >= count:
        raise DeviceError(
            f"device {choice!r} does not exist: this machine has {count} {kind} device(s), "
            f"{kind}:0 to {kind}:{count - 1}; or use cpu"
        )
    return torch.device(kind, index)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU): for timing stages."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu":
        sync: Callable[..., None] | None = getattr(_xpu_backend(), "synchronize", None)
        if sync is not None:
            sync(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def uses_half_weights(device: torch.device, use_half: bool) -> bool:
    """True when ``use_half`` asks for fp16 weights and ``device`` runs them (CUDA, XPU)."""
    return use_half and device.type in HALF_WEIGHT_TYPES
