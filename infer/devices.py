"""The one device resolver: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` -> a device torch can use.

ROCm builds of PyTorch report their GPUs through the CUDA API, so they resolve as ``cuda``.
"""

from __future__ import annotations

import logging

import torch

from infer.errors import TimbreError

log = logging.getLogger(__name__)

AUTO = "auto"


class DeviceError(TimbreError, ValueError):
    """The device asked for does not exist on this machine or is not a device name."""


def resolve_device(choice: str | torch.device | None) -> torch.device:
    """The device ``choice`` names; ``auto`` (or None) picks the first CUDA GPU, else the CPU.

    Raises:
        DeviceError: the name is not a device, or it names a GPU this machine does not have.
    """
    if isinstance(choice, torch.device):
        choice = str(choice)
    name = (choice or AUTO).strip().lower()
    if name == AUTO:
        if torch.cuda.is_available():
            log.info("device auto: CUDA GPU %s", torch.cuda.get_device_name(0))
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"{choice!r} is not a device; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"device {choice!r} was asked for but this machine has no CUDA GPU; use cpu")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= count:
            raise DeviceError(f"device {choice!r} does not exist: this machine has {count} CUDA GPU(s)")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise DeviceError(f"device {choice!r} is not supported here; use auto, cpu, cuda or cuda:N")
    return device
