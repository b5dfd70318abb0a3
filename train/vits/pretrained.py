"""RVC's pretrained base files (``f0G40k.pth`` / ``f0D40k.pth`` and family): find, read, load strictly."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from infer.errors import TimbreError
from infer.safeload import load_checkpoint
from train.vits.config import VitsTrainConfig


class PretrainedError(TimbreError):
    """A pretrained base file does not fit the model being trained, or cannot be read."""


def _read_pretrained_state(path: Path, role: str) -> dict[str, Tensor]:
    try:
        obj = load_checkpoint(path)
    except TimbreError as exc:
        raise PretrainedError(f"cannot read the pretrained {role} {path}: {exc}") from exc
    state = obj.get("model") if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PretrainedError(
            f"{path.name} is not an RVC pretrained {role}: expected a dict with 'model' holding a state dict "
            "(like f0G40k.pth / f0D40k.pth)"
        )
    keys = list(state)
    if keys and all(isinstance(k, str) and k.startswith("module.") for k in keys):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _few(keys: Sequence[str], limit: int = 4) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(repr(k) for k in keys[:limit]) + more


SPEAKER_TABLE_KEY = "emb_g.weight"
"""The generator's speaker table: the one tensor a base file may give in another shape."""


@dataclass(frozen=True)
class PretrainedLoad:
    """What a pretrained file gave a network.

    Attributes:
        role: ``'generator'`` or ``'discriminator'``.
        path: the file.
        loaded: keys taken from the file.
        new: keys that keep their fresh initialisation: the speaker table when the file's
            speaker count differs from the model's (RVC's bases have 109 speakers).
    """

    role: str
    path: Path
    loaded: tuple[str, ...]
    new: tuple[str, ...]

    def summary(self) -> str:
        """One line for the log and the run info."""
        text = f"pretrained {self.role} {self.path.name}: {len(self.loaded)} tensors loaded"
        if self.new:
            text += f", {len(self.new)} new (fresh initialisation): {', '.join(self.new)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict (the key lists in full)."""
        return {"role": self.role, "path": str(self.path), "loaded": list(self.loaded), "new": list(self.new)}


def load_pretrained_module(module: nn.Module, path: Path, role: str, description: str) -> PretrainedLoad:
    """Load RVC's ``{'model': state_dict}`` file into ``module`` strictly, or raise PretrainedError.

    Every key must be there with the model's shape, except the generator's speaker table
    (:data:`SPEAKER_TABLE_KEY`), which keeps its fresh initialisation when the file has another
    speaker count. Tensors are converted to the model's dtype (base files are fp16).
    """
    state = _read_pretrained_state(path, role)
    own = module.state_dict()
    if role == "generator" and any(k.startswith("discriminators.") for k in state):
        raise PretrainedError(
            f"{path.name} is a discriminator file, but it was given as the pretrained generator"
        )
    if role == "discriminator" and "enc_p.emb_phone.weight" in state:
        raise PretrainedError(
            f"{path.name} is a generator file, but it was given as the pretrained discriminator"
        )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [k for k in own if k in state and state[k].shape != own[k].shape]
    new = [k for k in resized if k == SPEAKER_TABLE_KEY and own[k].dim() == state[k].dim() == 2]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in resized if k not in new]
    if missing or unexpected or wrong:
        raise PretrainedError(
            f"the pretrained {role} {path.name} does not fit the {description} model being trained: "
            f"{len(missing)} missing keys [{_few(missing)}], {len(unexpected)} unexpected keys "
            f"[{_few(unexpected)}], {len(wrong)} wrong shapes [{_few(wrong)}]. Use the base files made "
            "for the same version, sample rate and pitch setting"
        )
    for key in new:
        state[key] = own[key]
    module.load_state_dict(state, strict=True)
    return PretrainedLoad(role, path, tuple(k for k in own if k not in new), tuple(new))


def resolve_pretrained(
    config: VitsTrainConfig, pretrained_dir: str | os.PathLike[str] | None = None
) -> tuple[Path | None, Path | None, str | None]:
    """The base (generator, discriminator) files to start from, and a warning when there are none.

    Explicit ``pretrained_g`` / ``pretrained_d`` paths must exist. Otherwise, for full-size models
    with ``use_pretrained``, RVC's files for the preset are looked up in ``pretrained_dir``.

    Returns:
        ``(g_path | None, d_path | None, warning | None)``; the warning says training starts from scratch.

    Raises:
        PretrainedError: an explicit path does not exist.
        AssetError: a base file is there but damaged (wrong size), or only partly downloaded.
    """
    from infer.assets import asset_status, pretrained_pair, resolve_asset

    explicit: list[Path | None] = []
    for role, value in (("generator", config.pretrained_g), ("discriminator", config.pretrained_d)):
        if value is None:
            explicit.append(None)
            continue
        path = Path(value).expanduser()
        if not path.is_file():
            raise PretrainedError(
                f"the pretrained {role} {path} does not exist; check the path or leave it empty"
            )
        explicit.append(path)
    g_path, d_path = explicit
    describe = f"{config.version} {config.sample_rate // 1000} kHz {'pitch' if config.use_f0 else 'no-pitch'}"
    if g_path is None and d_path is None and config.use_pretrained and config.size == "full":
        g_name, d_name = pretrained_pair(config.version, config.sample_rate, use_f0=config.use_f0)
        states = {s.name: s for s in asset_status(pretrained_dir) if s.name in (g_name, d_name)}
        if all(states[n].state == "missing" for n in (g_name, d_name)):
            where = ", ".join(str(states[n].path) for n in (g_name, d_name))
            return (
                None,
                None,
                (
                    f"Training the {describe} model from scratch: the pretrained base files were not found "
                    f"({where}). A model trained from scratch needs much more data and many more epochs, and "
                    "usually sounds far worse; download them with "
                    f"`python -m infer assets download {g_name}` "
                    f"and `python -m infer assets download {d_name}`"
                ),
            )
        g_path, d_path = resolve_asset(g_name, pretrained_dir), resolve_asset(d_name, pretrained_dir)
    if g_path is None and d_path is None:
        why = (
            "a tiny model has no pretrained base"
            if config.size == "tiny"
            else "pretrained files are turned off"
        )
        return (
            None,
            None,
            (
                f"Training the {describe} model from scratch ({why}). A model trained from scratch needs "
                "much more data and many more epochs, and usually sounds far worse than one fine-tuned from "
                "the base files"
            ),
        )
    if g_path is None or d_path is None:
        missing_role = "generator" if g_path is None else "discriminator"
        return (
            g_path,
            d_path,
            f"No pretrained {missing_role}: it starts from random weights, expect worse quality",
        )
    return g_path, d_path, None
