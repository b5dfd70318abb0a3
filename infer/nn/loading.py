"""Build a module on the meta device and fill it with exactly the given weights (no random init)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
from torch import nn

from infer.errors import ModelLoadError

M = TypeVar("M", bound=nn.Module)


def materialize(
    build: Callable[[], M],
    state_dict: Mapping[str, torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    what: str,
    source: str,
    hint: str = "",
) -> M:
    """``build()`` on the meta device, then load ``state_dict`` strictly by assignment.

    Floating tensors are cast to ``dtype``; the module comes back in eval mode without gradients.

    Raises:
        ModelLoadError: missing, unexpected or mis-shaped tensors; the message lists a few of each.
    """
    with torch.device("meta"):
        model = build()
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong = [
        f"{key} {tuple(state_dict[key].shape)} (expected {shape})"
        for key, shape in expected.items()
        if key in state_dict and tuple(state_dict[key].shape) != shape
    ]
    if missing or unexpected or wrong:
        raise ModelLoadError(
            f"{source}: the weights do not fit {what}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shape {wrong[:5]}{hint}"
        )
    tensors = {
        key: state_dict[key]
        .to(device=device, dtype=dtype if state_dict[key].is_floating_point() else None)
        .contiguous()
        for key in expected
    }
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval().requires_grad_(False)
