"""The one device resolver, on fake machines: which device each name gives, and the one-line errors."""

from __future__ import annotations

import logging
import types

import pytest
import torch

from infer import devices
from infer.devices import DeviceError, parse_device_name, resolve_device, uses_half_weights
from infer.options import DEVICES


def fake_machine(monkeypatch: pytest.MonkeyPatch, *, cuda: int = 0, xpu: int = 0, mps: bool = False) -> None:
    """Make torch report ``cuda`` CUDA GPUs, ``xpu`` Intel GPUs and an Apple GPU if ``mps``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: f"FakeGPU {index}")
    fake_xpu = types.SimpleNamespace(
        is_available=lambda: xpu > 0, device_count=lambda: xpu, get_device_name=lambda index=0: "FakeArc"
    )
    monkeypatch.setattr(torch, "xpu", fake_xpu, raising=False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


MACHINES = {
    "cpu only": {},
    "one cuda": {"cuda": 1},
    "two cuda + xpu + mps": {"cuda": 2, "xpu": 1, "mps": True},
    "xpu + mps": {"xpu": 2, "mps": True},
    "mps only": {"mps": True},
}

# (machine, asked for, expected device or None for DeviceError)
TABLE = [
    ("cpu only", "auto", "cpu"),
    ("cpu only", None, "cpu"),
    ("cpu only", "cpu", "cpu"),
    ("cpu only", "CPU ", "cpu"),
    ("cpu only", "cuda", None),
    ("cpu only", "cuda:0", None),
    ("cpu only", "mps", None),
    ("cpu only", "xpu", None),
    ("one cuda", "auto", "cuda:0"),
    ("one cuda", "cuda", "cuda:0"),
    ("one cuda", "cuda:0", "cuda:0"),
    ("one cuda", "cuda:1", None),
    ("one cuda", "xpu", None),
    ("two cuda + xpu + mps", "auto", "cuda:0"),
    ("two cuda + xpu + mps", "cuda:1", "cuda:1"),
    ("two cuda + xpu + mps", "xpu", "xpu:0"),
    ("two cuda + xpu + mps", "mps", "mps"),
    ("two cuda + xpu + mps", "cpu", "cpu"),
    ("xpu + mps", "auto", "xpu:0"),
    ("xpu + mps", "xpu:1", "xpu:1"),
    ("xpu + mps", "xpu:2", None),
    ("xpu + mps", "cuda", None),
    ("mps only", "auto", "mps"),
    ("mps only", "mps", "mps"),
    ("mps only", "mps:0", None),  # one Apple GPU: no index
    ("mps only", "cuda", None),
    ("cpu only", "tpu", None),
    ("cpu only", "cuda:x", None),
    ("cpu only", "cuda:-1", None),
    ("cpu only", "cpu:1", None),
    ("cpu only", "auto:0", None),
    ("cpu only", "", "cpu"),
]


@pytest.mark.parametrize(("machine", "choice", "expected"), TABLE)
def test_resolver_table(
    monkeypatch: pytest.MonkeyPatch, machine: str, choice: str | None, expected: str | None
):
    fake_machine(monkeypatch, **MACHINES[machine])
    if expected is None:
        with pytest.raises(DeviceError) as info:
            resolve_device(choice)
        message = str(info.value)
        assert "\n" not in message and repr(choice) in message
        assert "cpu" in message  # every error says what works instead
    else:
        assert resolve_device(choice) == torch.device(expected)


def test_auto_logs_what_it_picked_and_what_it_passed_over(monkeypatch, caplog):
    fake_machine(monkeypatch, mps=True)
    with caplog.at_level(logging.INFO, logger="infer.devices"):
        assert resolve_device("auto") == torch.device("mps")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "Apple GPU (MPS)" in line and "no CUDA, XPU" in line
    caplog.clear()
    fake_machine(monkeypatch)
    with caplog.at_level(logging.DEBUG, logger="infer.devices"):
        assert resolve_device("auto") == torch.device("cpu")
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG and "no CUDA, XPU, MPS" in record.getMessage()


def test_torch_without_an_xpu_backend_counts_none(monkeypatch):
    fake_machine(monkeypatch, cuda=1)
    monkeypatch.delattr(torch, "xpu", raising=False)
    assert devices.device_count("xpu") == 0
    assert resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match="no xpu device"):
        resolve_device("xpu")


def test_a_torch_device_is_accepted(monkeypatch):
    fake_machine(monkeypatch, cuda=2)
    assert resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_every_vocabulary_name_parses_and_the_real_machine_resolves_auto():
    for name in DEVICES:
        kind, index = parse_device_name(name)
        assert kind == name and index is None
    assert resolve_device("auto").type in devices.AUTO_ORDER
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    ("device", "use_half", "expected"),
    [
        ("cuda:0", True, True),
        ("xpu:0", True, True),
        ("mps", True, False),
        ("cpu", True, False),
        ("cuda:0", False, False),
    ],
)
def test_half_weights_only_where_they_run(device, use_half, expected):
    assert uses_half_weights(torch.device(device), use_half) is expected


def test_training_config_checks_the_spelling_without_the_machine():
    from train.vits.config import VitsTrainConfig

    fields = {"sample_rate": 40000, "version": "v2"}
    for good in ("auto", "cpu", "cuda:3", "xpu", "mps"):
        VitsTrainConfig.from_dict({**fields, "device": good})
    with pytest.raises(ValueError, match="not a device"):
        VitsTrainConfig.from_dict({**fields, "device": "gpu"})
