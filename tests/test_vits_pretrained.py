"""Fine-tuning from RVC's base-file layout at real size: strict loads, the key report, one step.

The base files are built on the fly from the manifests (``{'model': state_dict}``, fp16, the
real key names and shapes) with seeded random values, since the real ``f0G40k.pth`` /
``f0D40k.pth`` cannot be downloaded here.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from infer.pitch import f0_to_coarse
from tests.helpers import MANIFESTS_DIR
from train.features import (
    F0_COARSE_DIRNAME,
    F0_HZ_DIRNAME,
    GT_WAVS_DIRNAME,
    feature_dir,
    list_training_examples,
)
from train.vits import SPEAKER_TABLE_KEY, PretrainedError, VitsTrainConfig, VitsTrainer

SAMPLE_RATE = 40000
CLIP_S = 1.0  # RVC's sampler leaves out segments under about 0.75 s
F0_HZ = 150.0


def _write_base_file(path: Path, rows: list[list], seed: int) -> dict[str, torch.Tensor]:
    """An RVC base file: ``{'model': state_dict}`` in fp16 with the manifest's keys and shapes."""
    generator = torch.Generator().manual_seed(seed)
    state = {key: (torch.randn(shape, generator=generator) * 0.02).half() for key, shape, *_ in rows}
    torch.save({"model": state}, path)
    return state


@pytest.fixture(scope="module")
def base_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("base")
    g_rows = json.loads((MANIFESTS_DIR / "synth_v2_f0_40k.json").read_text())["G_state_dict"]
    d_rows = json.loads((MANIFESTS_DIR / "disc_MultiPeriodDiscriminatorV2_v2.json").read_text())["state_dict"]
    g_state = _write_base_file(folder / "f0G40k.pth", g_rows, seed=1)
    _write_base_file(folder / "f0D40k.pth", d_rows, seed=2)
    return folder / "f0G40k.pth", folder / "f0D40k.pth", g_state


@pytest.fixture(scope="module")
def work_40k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared 40 kHz v2 segment: a voiced tone, constant F0 and random content features."""
    work = tmp_path_factory.mktemp("work40k")
    dirs = [work / GT_WAVS_DIRNAME, feature_dir(work, "v2"), work / F0_COARSE_DIRNAME, work / F0_HZ_DIRNAME]
    for folder in dirs:
        folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(CLIP_S * SAMPLE_RATE)) / SAMPLE_RATE
    audio = (0.3 * np.sin(2 * math.pi * F0_HZ * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    sf.write(dirs[0] / "0_0.wav", audio, SAMPLE_RATE, subtype="FLOAT")
    frames = t.size // 400
    np.save(dirs[1] / "0_0.npy", rng.standard_normal((frames // 2 + 1, 768)).astype(np.float32))
    f0 = np.full(frames, F0_HZ, np.float32)
    np.save(dirs[2] / "0_0.npy", f0_to_coarse(f0).astype(np.int64))
    np.save(dirs[3] / "0_0.npy", f0)
    return work


def _real_size_trainer(work: Path, run_dir: Path, **overrides: object) -> VitsTrainer:
    config = VitsTrainConfig(version="v2", sample_rate=40000, batch_size=1, device="cpu", **overrides)
    return VitsTrainer(config, list_training_examples(work, "v2", use_f0=True), run_dir=run_dir)


def test_real_size_base_files_load_strictly_with_a_key_report(
    base_files: tuple[Path, Path, dict[str, torch.Tensor]],
    work_40k: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    g_path, d_path, g_state = base_files
    trainer = _real_size_trainer(work_40k, tmp_path / "same")
    with caplog.at_level(logging.INFO):
        loads = trainer.load_pretrained(g_path, d_path)
    assert [(load.role, len(load.loaded), load.new) for load in loads] == [
        ("generator", len(g_state), ()),
        ("discriminator", 165, ()),
    ]
    assert trainer.trained_from == "pretrained"
    own = trainer.net_g.state_dict()
    assert all(own[k].dtype == torch.float32 and torch.equal(own[k], v.float()) for k, v in g_state.items())
    assert f"pretrained generator f0G40k.pth: {len(g_state)} tensors loaded" in caplog.text

    # Another speaker count: the speaker table keeps its fresh values and is reported as new.
    caplog.clear()
    fewer = _real_size_trainer(work_40k, tmp_path / "fewer", speakers=1)
    fresh = fewer.net_g.state_dict()[SPEAKER_TABLE_KEY].clone()
    with caplog.at_level(logging.INFO):
        g_load, _ = fewer.load_pretrained(g_path, d_path)
    assert g_load.new == (SPEAKER_TABLE_KEY,) and len(g_load.loaded) == len(g_state) - 1
    assert fewer.net_g.emb_g.weight.shape == (1, 256)
    assert torch.equal(fewer.net_g.state_dict()[SPEAKER_TABLE_KEY], fresh)
    assert torch.equal(
        fewer.net_g.state_dict()["dec.conv_pre.weight"], g_state["dec.conv_pre.weight"].float()
    )
    assert "1 new (fresh initialisation): emb_g.weight" in caplog.text
    assert any(
        r.levelno == logging.WARNING and "another speaker count" in r.getMessage() for r in caplog.records
    )
    assert g_load.to_dict()["new"] == [SPEAKER_TABLE_KEY]

    # Any other shape change is still a clear error.
    with pytest.raises(
        PretrainedError, match=r"does not fit the v2 40000 Hz no-pitch .* unexpected keys \[.dec\.m_source"
    ):
        _real_size_trainer(work_40k, tmp_path / "nof0", use_f0=False).load_pretrained(g_path, None)


@pytest.mark.slow
def test_real_size_first_step_from_base_files_runs(
    base_files: tuple[Path, Path, dict[str, torch.Tensor]], work_40k: Path, tmp_path: Path
) -> None:
    g_path, d_path, _ = base_files
    trainer = _real_size_trainer(work_40k, tmp_path / "run")
    trainer.load_pretrained(g_path, d_path)
    before = trainer.net_g.dec.conv_pre.weight.detach().clone()
    batch = next(trainer.batches(1))
    metrics = trainer.train_step(batch)
    keys = ("loss_disc", "loss_gen", "loss_fm", "loss_mel", "loss_kl", "grad_norm_d", "grad_norm_g")
    assert all(math.isfinite(metrics[k]) for k in keys), metrics
    assert metrics["grad_norm_g"] > 0 and metrics["grad_norm_d"] > 0
    moved = (trainer.net_g.dec.conv_pre.weight.detach() - before).abs().max()
    assert 0 < float(moved) <= 2.1 * trainer.vits_config.learning_rate  # a first AdamW step moves ~lr
