"""The trainer base: exact resume after cancel and SIGKILL, atomic checkpoints, loud failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from infer.errors import Cancelled
from tests.helpers import REPO_DIR
from tests.toy_trainer import ToyTrainer
from train.trainer import ResumeError, TrainerConfig


def _params(trainer: ToyTrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def _full_run(run_dir: Path, epochs: int = 6) -> ToyTrainer:
    trainer = ToyTrainer(TrainerConfig(run_dir=run_dir, epochs=epochs))
    trainer.fit()
    return trainer


def test_cancel_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    reference = _full_run(tmp_path / "ref")
    calls = {"n": 0}

    def stop_after_13() -> bool:
        calls["n"] += 1
        return calls["n"] > 13

    first = ToyTrainer(TrainerConfig(run_dir=tmp_path / "run", epochs=6), should_stop=stop_after_13)
    with pytest.raises(Cancelled):
        first.fit()
    assert first.step == 13
    assert first.batch_in_epoch == 5  # 13 = one epoch of 8 + 5
    second = ToyTrainer(TrainerConfig(run_dir=tmp_path / "run", epochs=6))
    assert second.resume()
    assert (second.step, second.epoch, second.batch_in_epoch) == (13, 1, 5)
    second.fit()
    for a, b in zip(_params(reference), _params(second), strict=True):
        assert torch.equal(a, b)
    assert second.sched.get_last_lr() == reference.sched.get_last_lr()


def test_checkpoints_are_pruned_to_keep_last(tmp_path: Path) -> None:
    trainer = ToyTrainer(TrainerConfig(run_dir=tmp_path, epochs=5, keep_last=2))
    trainer.fit()
    names = [p.name for p in trainer.checkpoints()]
    assert names == ["ckpt_000000032.pt", "ckpt_000000040.pt"]
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 40
    assert '"loss"' in rows[0] and '"eta_s"' in rows[0]


def _run_toy(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.toy_trainer", str(run_dir), *extra],
        cwd=REPO_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_sigkill_mid_run_resumes_from_last_checkpoint_with_identical_optimizer_state(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _run_toy(run_dir, "--epochs", "6", "--sleep", "0.05")
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if len(list(run_dir.glob("ckpt_*.pt"))) >= 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the training subprocess wrote no checkpoints")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    probe = ToyTrainer(TrainerConfig(run_dir=run_dir, epochs=6))
    last = probe.checkpoints()[-1]
    saved = torch.load(last, weights_only=True)
    assert probe.resume()
    assert probe.step == saved["step"] and probe.step % 8 == 0
    restored = probe.opt.state_dict()
    for key, value in saved["optimizers"]["opt"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(restored["state"][key][name], tensor)
    probe.fit()
    reference = _full_run(tmp_path / "ref")
    for a, b in zip(_params(reference), _params(probe), strict=True):
        assert torch.equal(a, b)


def test_kill_during_checkpoint_write_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _run_toy(run_dir, "--epochs", "4", "--die-in-checkpoint", "3")
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    names = sorted(p.name for p in run_dir.glob("ckpt_*.pt"))
    assert names == ["ckpt_000000008.pt", "ckpt_000000016.pt"]
    leftovers = [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1  # the interrupted write, never renamed into place
    trainer = ToyTrainer(TrainerConfig(run_dir=run_dir, epochs=4))
    assert trainer.resume()
    assert trainer.step == 16


def test_resume_fails_loudly_on_a_corrupt_or_foreign_checkpoint(tmp_path: Path) -> None:
    trainer = _full_run(tmp_path, epochs=1)
    last = trainer.checkpoints()[-1]
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(ResumeError, match="cannot resume"):
        ToyTrainer(TrainerConfig(run_dir=tmp_path, epochs=2)).resume()
    state = ToyTrainer(TrainerConfig(run_dir=tmp_path / "x")).state_dict()
    state["modules"]["model"] = {"weight": torch.zeros(2, 2)}
    with pytest.raises(ResumeError, match="model"):
        ToyTrainer(TrainerConfig(run_dir=tmp_path / "y")).load_state_dict(state)


def test_fresh_trainer_has_nothing_to_resume(tmp_path: Path) -> None:
    assert not ToyTrainer(TrainerConfig(run_dir=tmp_path / "empty")).resume()
