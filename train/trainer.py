"""A small trainer base shared by the VITS, diffusion and distillation trainers.

A subclass owns its modules, optimizers, schedulers and data; the base owns the loop:
progress with ETA, per-step metrics to a callback and a JSONL log, cancellation, and
checkpoints that are written atomically, pruned to the last N, and restored exactly
(modules, optimizers, schedulers, grad scaler, epoch, step, position in the epoch and every
RNG) or not at all.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infer.errors import Cancelled, TimbreError
from infer.fsutil import atomic_torch_save
from infer.progress import ProgressFn, StopFn, report
from infer.safeload import load_checkpoint

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "timbre-trainer-1"
_CKPT_RE = re.compile(r"^ckpt_(\d{9})\.pt$")

MetricsFn = Callable[[int, dict[str, float]], None]


class ResumeError(TimbreError):
    """A checkpoint cannot be restored completely; training does not silently start over."""


@dataclass(frozen=True)
class TrainerConfig:
    """Loop settings common to every trainer.

    Attributes:
        run_dir: folder of checkpoints (``ckpt_<step>.pt``) and ``metrics.jsonl``.
        epochs: total epochs to reach.
        save_every_epochs: checkpoint period; a checkpoint is also written at the end and on cancel.
        keep_last: how many checkpoints to keep.
        log_every_steps: period of metrics callbacks and JSONL rows.
        seed: seeds python, numpy and torch at the start of a fresh run.
        max_steps: stop after this many optimizer steps in total (0 = no limit).
    """

    run_dir: Path
    epochs: int = 1
    save_every_epochs: int = 1
    keep_last: int = 2
    log_every_steps: int = 1
    seed: int = 1234
    max_steps: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.save_every_epochs < 1 or self.keep_last < 1 or self.log_every_steps < 1:
            raise ValueError(f"trainer settings must be positive: {self}")
        if self.max_steps < 0:
            raise ValueError("max_steps must be >= 0")


def rng_state() -> dict[str, Any]:
    """Every RNG state the loop depends on."""
    kind, keys, pos, has_gauss, cached_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # Plain types only, so checkpoints load with torch.load(weights_only=True).
        "numpy": (
            kind,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached_gauss),
        ),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(_as_python_state(state["python"]))
    kind, keys, pos, has_gauss, cached_gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(value: Any) -> tuple[Any, ...]:
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class Trainer(ABC):
    """Subclasses implement :meth:`batches`, :meth:`train_step` and the state getters."""

    def __init__(
        self,
        config: TrainerConfig,
        *,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
        on_metrics: MetricsFn | None = None,
    ) -> None:
        self.config = config
        self.progress = progress
        self.should_stop = should_stop
        self.on_metrics = on_metrics
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.batch_in_epoch = 0  # batches of the current epoch already consumed
        # Seeded before the subclass builds its modules, so a fresh run is reproducible.
        seed_everything(config.seed)

    # --- what a subclass provides ---------------------------------------------------------------
    @abstractmethod
    def modules(self) -> dict[str, torch.nn.Module]:
        """The trained (and EMA) modules by name."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers by name."""

    def schedulers(self) -> dict[str, Any]:
        """Learning-rate schedulers by name (stepped by the subclass)."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Anything else to checkpoint (grad scaler, EMA decay...)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""
        if state:
            raise ResumeError(f"checkpoint has extra state this trainer does not know: {sorted(state)}")

    @abstractmethod
    def batches(self, epoch: int) -> Iterator[Any]:
        """The batches of ``epoch`` in a deterministic order (seeded by epoch)."""

    @abstractmethod
    def batches_per_epoch(self) -> int:
        """Number of batches :meth:`batches` yields."""

    @abstractmethod
    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimizer step; returns scalar metrics."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after each completed epoch (``epoch`` counts from 1), before any checkpoint."""

    def on_checkpoint(self, path: Path) -> None:
        """Called after a checkpoint was written (e.g. to export an inference file)."""

    # --- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The complete training state."""
        return {
            "format": CHECKPOINT_FORMAT,
            "trainer": type(self).__name__,
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers().items()},
            "extra": self.extra_state(),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore everything or raise :class:`ResumeError`."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ResumeError(f"not a Timbre trainer checkpoint (format {state.get('format')!r})")
        if state.get("trainer") != type(self).__name__:
            raise ResumeError(f"checkpoint was written by {state.get('trainer')}, not {type(self).__name__}")
        for group, current in (
            ("modules", self.modules()),
            ("optimizers", self.optimizers()),
            ("schedulers", self.schedulers()),
        ):
            saved = state.get(group, {})
            if set(saved) != set(current):
                raise ResumeError(
                    f"checkpoint {group} {sorted(saved)} do not match the trainer's {sorted(current)}"
                )
            for name, obj in current.items():
                try:
                    if group == "modules":
                        obj.load_state_dict(saved[name], strict=True)
                    else:
                        obj.load_state_dict(saved[name])
                except (RuntimeError, ValueError, KeyError) as exc:
                    raise ResumeError(f"cannot restore {group[:-1]} {name!r}: {exc}") from exc
        self.load_extra_state(state.get("extra", {}))
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        set_rng_state(state["rng"])

    # --- checkpoints ------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Existing checkpoints, oldest first."""
        run_dir = self.config.run_dir
        if not run_dir.is_dir():
            return []
        found = [p for p in run_dir.iterdir() if _CKPT_RE.match(p.name)]
        return sorted(found, key=lambda p: int(_CKPT_RE.match(p.name).group(1)))  # type: ignore[union-attr]

    def save_checkpoint(self) -> Path:
        """Write ``ckpt_<step>.pt`` atomically and prune to the last ``keep_last``."""
        path = self.config.run_dir / f"ckpt_{self.step:09d}.pt"
        atomic_torch_save(self.state_dict(), path)
        for old in self.checkpoints()[: -self.config.keep_last]:
            old.unlink(missing_ok=True)
        log.info("checkpoint %s (epoch %d, step %d)", path.name, self.epoch, self.step)
        self.on_checkpoint(path)
        return path

    def resume(self, path: Path | None = None) -> bool:
        """Restore the newest (or the given) checkpoint; False when there is none to resume."""
        if path is None:
            existing = self.checkpoints()
            if not existing:
                return False
            path = existing[-1]
        try:
            state = load_checkpoint(path)
        except TimbreError as exc:
            raise ResumeError(f"cannot resume from {path}: {exc}") from exc
        if not isinstance(state, dict):
            raise ResumeError(f"cannot resume from {path}: not a trainer checkpoint")
        self.load_state_dict(state)
        log.info("resumed from %s (epoch %d, step %d)", path.name, self.epoch, self.step)
        return True

    # --- loop -------------------------------------------------------------------------------------
    def fit(self) -> None:
        """Train until ``config.epochs`` (or ``max_steps``); checkpoints on period, end and cancel."""
        config = self.config
        config.run_dir.mkdir(parents=True, exist_ok=True)
        per_epoch = max(1, self.batches_per_epoch())
        total_steps = config.epochs * per_epoch
        if config.max_steps:
            total_steps = min(total_steps, config.max_steps)
        metrics_path = config.run_dir / "metrics.jsonl"
        started = time.perf_counter()
        start_step = self.step
        last_saved_step = self.step
        try:
            while self.epoch < config.epochs and not self._step_limit_reached():
                epoch_number = self.epoch + 1
                for i, batch in enumerate(self.batches(epoch_number)):
                    if i < self.batch_in_epoch:
                        continue
                    if self.should_stop is not None and self.should_stop():
                        raise Cancelled("training stopped on request")
                    step_started = time.perf_counter()
                    metrics = self.train_step(batch)
                    self.step += 1
                    self.batch_in_epoch = i + 1
                    done = self.step - start_step
                    elapsed = time.perf_counter() - started
                    remaining = max(0, total_steps - self.step)
                    eta_s = elapsed / done * remaining if done else float("nan")
                    if self.step % config.log_every_steps == 0:
                        row = {
                            **{k: float(v) for k, v in metrics.items()},
                            "epoch": epoch_number,
                            "steps_per_s": 1.0 / max(1e-9, time.perf_counter() - step_started),
                            "eta_s": eta_s,
                        }
                        with open(metrics_path, "a", encoding="utf-8") as handle:
                            handle.write(json.dumps({"step": self.step, **row}) + "\n")
                        if self.on_metrics is not None:
                            self.on_metrics(self.step, row)
                    report(
                        self.progress,
                        self.step / max(1, total_steps),
                        f"epoch {epoch_number}/{config.epochs}, step {self.step}/{total_steps}"
                        + (f", ETA {eta_s:.0f} s" if np.isfinite(eta_s) else ""),
                    )
                    if self._step_limit_reached():
                        break
                if self.batch_in_epoch >= per_epoch:
                    self.epoch = epoch_number
                    self.batch_in_epoch = 0
                    self.on_epoch_end(epoch_number)
                    if self.epoch % config.save_every_epochs == 0 or self.epoch == config.epochs:
                        self.save_checkpoint()
                        last_saved_step = self.step
        except Cancelled:
            if self.step != last_saved_step:
                self.save_checkpoint()
            raise
        if self.step != last_saved_step:
            self.save_checkpoint()

    def _step_limit_reached(self) -> bool:
        return bool(self.config.max_steps) and self.step >= self.config.max_steps
