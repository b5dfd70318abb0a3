"""A tiny deterministic trainer used by the trainer-base tests (also runnable as a subprocess)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from train.trainer import Trainer, TrainerConfig

N_SAMPLES = 64
BATCH = 8


class ToyTrainer(Trainer):
    """Linear regression with AdamW, an epoch-stepped scheduler and noise from the global RNG."""

    def __init__(self, config: TrainerConfig, *, step_sleep_s: float = 0.0, **kwargs) -> None:
        super().__init__(config, **kwargs)
        data_gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(N_SAMPLES, 4, generator=data_gen)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        self.model = torch.nn.Linear(4, 1)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=0.05, betas=(0.8, 0.99))
        self.sched = torch.optim.lr_scheduler.ExponentialLR(self.opt, gamma=0.9)
        self.step_sleep_s = step_sleep_s

    def modules(self):
        return {"model": self.model}

    def optimizers(self):
        return {"opt": self.opt}

    def schedulers(self):
        return {"sched": self.sched}

    def batches_per_epoch(self) -> int:
        return N_SAMPLES // BATCH

    def batches(self, epoch: int) -> Iterator[torch.Tensor]:
        order = torch.randperm(N_SAMPLES, generator=torch.Generator().manual_seed(1000 + epoch))
        for i in range(0, N_SAMPLES, BATCH):
            yield order[i : i + BATCH]

    def train_step(self, batch: torch.Tensor) -> dict[str, float]:
        x = self.x[batch] + 0.01 * torch.randn(len(batch), 4)
        loss = torch.mean((self.model(x) - self.y[batch]) ** 2)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        if self.step_sleep_s:
            time.sleep(self.step_sleep_s)
        return {"loss": float(loss.detach())}

    def on_epoch_end(self, epoch: int) -> None:
        self.sched.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--die-in-checkpoint", type=int, default=0, help="SIGKILL mid-write of save N")
    args = parser.parse_args()
    if args.die_in_checkpoint:
        real_save = torch.save
        count = {"n": 0}

        def dying_save(obj, f, *a, **k):
            count["n"] += 1
            if count["n"] == args.die_in_checkpoint:
                f.write(b"PK\x03\x04 partial checkpoint bytes")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *a, **k)

        torch.save = dying_save
    trainer = ToyTrainer(TrainerConfig(run_dir=args.run_dir, epochs=args.epochs), step_sleep_s=args.sleep)
    trainer.resume()
    trainer.fit()
    sys.stdout.write("finished\n")


if __name__ == "__main__":
    main()
