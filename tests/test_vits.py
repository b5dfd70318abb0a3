"""VITS trainer: RVC's spectrograms and losses, bucketing, overfitting, exact resume after SIGKILL,
atomic checkpoints, inference exports that match RVC's manifests, pretrained init, loud failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from infer.errors import Cancelled
from infer.models import build_synthesizer, load_voice_model
from infer.nn.configs import ConfigError
from infer.pitch import f0_to_coarse, get_pitch_extractor
from infer.synthesizer import POSTERIOR_ENCODER_PREFIX, TrainingDraws
from tests.helpers import MANIFESTS_DIR, REPO_DIR, VOICES_DIR
from train.features import list_training_examples
from train.mel import SpectrogramConfig, linear_spectrogram, mel_basis, spec_to_mel
from train.trainer import ResumeError
from train.vits import (
    RVC_BUCKET_BOUNDARIES_FRAMES,
    PretrainedError,
    StepTrace,
    VitsDataError,
    VitsTrainConfig,
    VitsTrainer,
    bucket_batches,
    build_networks,
    discriminator_loss,
    export_synth_config,
    feature_matching_loss,
    fit_vits,
    generator_adversarial_loss,
    kl_loss,
    resolve_pretrained,
)

SAMPLE_RATE = 16000
CLIP_S = 0.8
OVERFIT_CLIP_S = 0.4
SPEECH = VOICES_DIR / "us1" / "speech"


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # Bitwise-equal runs in this process and in the training subprocess need the same thread count.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _make_work_dir(work: Path, clips: list[str], *, content_dim: int = 256, clip_s: float = CLIP_S) -> Path:
    """A prepared folder like train.dataset + train.features write, from real speech at 16 kHz.

    Content features are seeded random vectors of the right width (no HuBERT weights offline).
    """
    dirs = {k: work / k for k in ("0_gt_wavs", f"3_feature{content_dim}", "2a_f0", "2b-f0nsf")}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    extractor = get_pitch_extractor("pm")
    rng = np.random.default_rng(0)
    for i, clip in enumerate(clips):
        audio, rate = sf.read(SPEECH / clip, dtype="float32")
        assert rate == SAMPLE_RATE
        audio = audio[: int(clip_s * rate)]
        name = f"{i}_0"
        sf.write(dirs["0_gt_wavs"] / f"{name}.wav", audio, rate, subtype="FLOAT")
        f0_hz = np.asarray(extractor.extract(audio, p_len=len(audio) // 160), dtype=np.float32)
        np.save(dirs["2b-f0nsf"] / f"{name}.npy", f0_hz)
        np.save(dirs["2a_f0"] / f"{name}.npy", f0_to_coarse(f0_hz).astype(np.int64))
        frames_50fps = (len(audio) - 400) // 320 + 1
        feats = rng.standard_normal((frames_50fps, content_dim)).astype(np.float32)
        np.save(dirs[f"3_feature{content_dim}"] / f"{name}.npy", feats)
    return work


@pytest.fixture(scope="module")
def two_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_work_dir(tmp_path_factory.mktemp("two"), ["001.flac", "002.flac"])


@pytest.fixture(scope="module")
def one_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_work_dir(tmp_path_factory.mktemp("one"), ["001.flac"], clip_s=OVERFIT_CLIP_S)


def _trainer(work: Path, run_dir: Path, config: VitsTrainConfig, **kwargs) -> VitsTrainer:
    examples = list_training_examples(work, config.version, use_f0=config.use_f0)
    return VitsTrainer(config, examples, run_dir=run_dir, **kwargs)


# --------------------------------------------------------------------------- spectrograms, losses


def test_linear_spectrogram_matches_a_numpy_stft_with_rvc_padding() -> None:
    config = SpectrogramConfig.for_sample_rate(SAMPLE_RATE)
    rng = np.random.default_rng(3)
    wav = rng.standard_normal(3210).astype(np.float32) * 0.1
    spec = linear_spectrogram(torch.from_numpy(wav), config).numpy()
    assert spec.shape == (257, 3210 // 160)
    pad = (config.n_fft - config.hop_length) // 2
    padded = np.pad(wav.astype(np.float64), pad, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(config.n_fft) / config.n_fft)  # periodic Hann
    for t in (0, 7, spec.shape[1] - 1):
        frame = padded[t * config.hop_length : t * config.hop_length + config.n_fft] * window
        expected = np.sqrt(np.abs(np.fft.rfft(frame)) ** 2 + 1e-6)
        np.testing.assert_allclose(spec[:, t], expected, rtol=1e-4, atol=1e-5)
    mel = spec_to_mel(torch.from_numpy(spec)[None], config)
    basis = mel_basis(SAMPLE_RATE, 512, 80).numpy()
    np.testing.assert_allclose(mel[0].numpy(), np.log(np.maximum(basis @ spec, 1e-5)), rtol=1e-5, atol=1e-5)
    assert torch.all(spec_to_mel(torch.zeros(1, 257, 4), config) == np.log(np.float32(1e-5)))
    with pytest.raises(ValueError, match="bins"):
        spec_to_mel(torch.zeros(1, 100, 4), config)
    rvc = {sr: SpectrogramConfig.for_sample_rate(sr) for sr in (32000, 40000, 48000)}
    assert [(c.n_fft, c.hop_length, c.n_mels) for c in rvc.values()] == [
        (1024, 320, 80),
        (2048, 400, 125),
        (2048, 480, 128),
    ]


def test_gan_and_kl_losses_have_their_textbook_values() -> None:
    ones, zeros = [torch.ones(2, 5)], [torch.zeros(2, 5)]
    assert float(discriminator_loss(ones, zeros)) == 0.0
    assert float(discriminator_loss(zeros, ones)) == 2.0
    assert float(generator_adversarial_loss([torch.full((3, 4), 0.5)] * 2)) == 0.5
    fmap_r = [[torch.zeros(1, 4), torch.ones(1, 2)]]
    fmap_g = [[torch.full((1, 4), 0.25), torch.zeros(1, 2)]]
    assert float(feature_matching_loss(fmap_r, fmap_g)) == pytest.approx(2 * (0.25 + 1.0))
    m = torch.randn(1, 3, 6)
    mask = torch.ones(1, 1, 6)
    mask[..., 4:] = 0
    zero = torch.zeros(1, 3, 6)
    # Same distributions: KL at z_p = m_p + 1 is (1 - 1) / 2 = 0; at z_p = m_p it is -1/2 per channel.
    assert float(kl_loss(m + 1, zero, m, zero, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_loss(m, zero, m, zero, mask)) == pytest.approx(-0.5 * 3, abs=1e-6)
    # logs_p = log 2, logs_q = 0, z_p = m_p: log 2 - 1/2 per channel.
    log2 = torch.full((1, 3, 6), float(np.log(2.0)))
    assert float(kl_loss(m, zero, m, log2, mask)) == pytest.approx(3 * (np.log(2.0) - 0.5), rel=1e-5)


# --------------------------------------------------------------------------- config and batches


def test_config_presets_validation_and_unknown_keys() -> None:
    assert VitsTrainConfig().segment_samples == 12800
    assert VitsTrainConfig(version="v2", sample_rate=48000).segment_samples == 17280
    assert VitsTrainConfig(version="v1", sample_rate=48000).segment_frames == 24
    default = VitsTrainConfig()
    assert (default.learning_rate, default.betas, default.eps, default.lr_decay) == (
        1e-4,
        (0.8, 0.99),
        1e-9,
        0.999875,
    )
    assert (default.c_mel, default.c_kl) == (45.0, 1.0)
    assert VitsTrainConfig.from_dict(default.to_dict()) == default
    with pytest.raises(ConfigError, match="unknown keys"):
        VitsTrainConfig.from_dict({"learning_rat": 1e-4})
    with pytest.raises(ConfigError, match="multiple of the hop"):
        VitsTrainConfig(segment_size=12801)
    with pytest.raises(ConfigError, match="precision"):
        VitsTrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match="sample_rate"):
        VitsTrainConfig(sample_rate=16000)
    tiny = VitsTrainConfig.tiny()
    assert tiny.synth_config().hop_length == tiny.spectrogram.hop_length == 160
    assert tiny.synth_config().spec_channels == tiny.spectrogram.n_freqs


def test_bucket_batches_are_deterministic_per_epoch_and_sharded_by_rank() -> None:
    lengths = [150] * 7 + [450] * 5 + [890, 2000]
    first = bucket_batches(lengths, 2, seed=5, epoch=1)
    assert first == bucket_batches(lengths, 2, seed=5, epoch=1)
    assert first != bucket_batches(lengths, 2, seed=5, epoch=2)
    assert sorted({i for b in first for i in b}) == list(range(len(lengths)))
    for batch in first:  # one bucket per batch: (0, 100], (100, 200], ..., (800, 900] and longer
        assert len({min(max(-(-lengths[i] // 100) - 1, 0), 8) for i in batch}) == 1
    ranks = [bucket_batches(lengths, 2, seed=5, epoch=3, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 5  # buckets of 7, 5 and 2 items padded to multiples of 4
    assert {i for batches in ranks for b in batches for i in b} == set(range(len(lengths)))


def test_rvc_bucketing_is_rvcs_sampler_and_the_default() -> None:
    """RVC's sampler: buckets (100, 900] of its length estimate, others left out, order by epoch."""
    assert VitsTrainConfig().bucketing == "rvc" and VitsTrainConfig.tiny().bucketing == "exact"
    lengths = [60, 100, 101, 150, 450, 900, 901, 2000]
    rvc = dict(boundaries=RVC_BUCKET_BOUNDARIES_FRAMES, use_outside=False)
    first = bucket_batches(lengths, 1, seed=None, epoch=1, **rvc)
    assert sorted(i for b in first for i in b) == [2, 3, 4, 5]  # (100, 900] only
    assert first == bucket_batches(lengths, 1, seed=None, epoch=1, **rvc)
    # The order depends on the epoch alone: RVC seeds its generator with the epoch.
    generator = torch.Generator().manual_seed(3)
    buckets = [[2, 3], [4], [5]]  # (100, 200], (400, 500], (800, 900]
    expected = [[b[i]] for b in buckets for i in torch.randperm(len(b), generator=generator).tolist()]
    expected = [expected[i] for i in torch.randperm(len(expected), generator=generator).tolist()]
    assert bucket_batches(lengths, 1, seed=None, epoch=3, **rvc) == expected


def test_rvc_bucketing_in_the_trainer_uses_the_file_size_estimate(
    one_clip: Path, two_clips: Path, tmp_path: Path
) -> None:
    kept = _trainer(two_clips, tmp_path / "two", VitsTrainConfig.tiny(bucketing="rvc"))
    # 0.8 s float32 wavs at 16 kHz: (51200 + 44 header bytes) // (3 * 160) = 106 > 100.
    assert kept.dataset.size_lengths == [106, 106]
    assert sorted(i for b in kept._epoch_batches(1) for i in b) == [0, 1]
    with pytest.raises(VitsDataError, match="RVC's sampler leaves out every segment"):
        _trainer(one_clip, tmp_path / "one", VitsTrainConfig.tiny(bucketing="rvc"))  # 0.4 s: 53


# --------------------------------------------------------------------------- training


def test_overfitting_one_clip_drives_the_mel_loss_down(one_clip: Path, tmp_path: Path) -> None:
    steps = 200
    config = VitsTrainConfig.tiny(
        epochs=steps, save_every_epochs=steps, learning_rate=1e-3, discriminator_start_step=steps
    )
    rows: list[dict[str, float]] = []
    trainer = _trainer(one_clip, tmp_path / "run", config, on_metrics=lambda step, row: rows.append(row))
    batch = next(iter(trainer.batches(1)))
    before = trainer.evaluate(batch, seed=7)
    trainer.fit()
    after = trainer.evaluate(batch, seed=7)
    assert trainer.step == steps and len(rows) == steps
    mel = [row["mel_l1"] for row in rows]
    assert all(np.isfinite(mel)) and all(np.isfinite(row["loss_kl"]) for row in rows)
    # The training log: the last 20 steps are far below the first 20 (measured: about 0.5x).
    assert np.mean(mel[-20:]) < 0.6 * np.mean(mel[:20]), (np.mean(mel[:20]), np.mean(mel[-20:]))
    # Same windows and noise before and after training: the error more than halves (about 0.4x).
    assert after["mel_l1"] < 0.5 * before["mel_l1"], (before, after)
    assert rows[-1]["lr"] == pytest.approx(1e-3 * 0.999875 ** (steps - 1))
    assert {"loss_mel", "loss_kl", "grad_norm_g", "lr", "steps_per_s", "eta_s"} <= set(rows[0])


_TRAIN_SCRIPT = """
import json, os, signal, sys, time
import torch
torch.set_num_threads(1)
from train.trainer import CHECKPOINT_FORMAT
from train.vits import VitsTrainConfig, fit_vits
work, run, models, config, sleep_s, die_at = sys.argv[1:7]
die_at = int(die_at)
if die_at:
    real_save = torch.save
    count = [0]
    def dying_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
            count[0] += 1
            if count[0] == die_at:
                f.write(b"PK\\x03\\x04 partial checkpoint bytes")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)
    torch.save = dying_save
fit_vits(work, models, "voice", VitsTrainConfig.from_dict(json.loads(config)), run_dir=run,
         on_metrics=lambda step, row: time.sleep(float(sleep_s)))
print("finished")
"""


def _run_training(
    work: Path, run: Path, models: Path, config: VitsTrainConfig, *, sleep_s: float, die_at: int
):
    args = [str(work), str(run), str(models), json.dumps(config.to_dict()), str(sleep_s), str(die_at)]
    return subprocess.Popen(
        [sys.executable, "-c", _TRAIN_SCRIPT, *args],
        cwd=REPO_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _kill_config(**overrides) -> VitsTrainConfig:
    return VitsTrainConfig.tiny(epochs=4, save_every_epochs=1, keep_last=2, **overrides)


def test_sigkill_mid_run_resumes_with_identical_optimizer_state(two_clips: Path, tmp_path: Path) -> None:
    config = _kill_config()
    run, models = tmp_path / "run", tmp_path / "models"
    proc = _run_training(two_clips, run, models, config, sleep_s=0.3, die_at=0)
    deadline = time.monotonic() + 120
    try:
        while len(list(run.glob("ckpt_*.pt"))) < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"training subprocess ended early: {proc.communicate()[1].decode()[-2000:]}")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    resumed = _trainer(two_clips, run, config, export_dir=models / "voice", name="voice")
    last = resumed.checkpoints()[-1]
    saved = torch.load(last, weights_only=True)
    assert resumed.resume()
    assert resumed.step == saved["step"] >= 4 and resumed.step % 2 == 0 and resumed.step < 8
    for name, optimizer in resumed.optimizers().items():
        restored, on_disk = optimizer.state_dict(), saved["optimizers"][name]
        assert restored["param_groups"] == on_disk["param_groups"]
        assert len(restored["state"]) == len(on_disk["state"]) > 0
        for key, value in on_disk["state"].items():
            for field, tensor in value.items():
                assert torch.equal(restored["state"][key][field], tensor), (name, key, field)
    resumed.fit()
    assert (resumed.epoch, resumed.step) == (4, 8)

    reference = _trainer(two_clips, tmp_path / "ref", config)
    reference.fit()
    for name, module in reference.modules().items():
        for (key, a), b in zip(
            module.state_dict().items(), resumed.modules()[name].state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), (name, key)
    exported = load_voice_model(models / "voice" / "voice.pth")
    assert exported.metadata.steps == 8 and exported.metadata.epochs == 4


def test_kill_while_writing_a_checkpoint_keeps_the_last_good_one(two_clips: Path, tmp_path: Path) -> None:
    config = _kill_config(use_epoch_exports=False)
    run, models = tmp_path / "run", tmp_path / "models"
    proc = _run_training(two_clips, run, models, config, sleep_s=0.0, die_at=3)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    assert sorted(p.name for p in run.glob("ckpt_*.pt")) == ["ckpt_000000002.pt", "ckpt_000000004.pt"]
    assert len([p for p in run.iterdir() if p.name.endswith(".tmp")]) == 1  # never renamed into place
    assert load_voice_model(models / "voice" / "voice.pth").metadata.steps == 4
    trainer = _trainer(two_clips, run, config)
    assert trainer.resume()
    assert (trainer.epoch, trainer.step) == (2, 4)


def test_fit_vits_cancel_then_resume_exports_a_working_model(two_clips: Path, tmp_path: Path) -> None:
    config = VitsTrainConfig.tiny(epochs=3, save_every_epochs=3)
    models = tmp_path / "models"
    calls = {"n": 0}
    messages: list[str] = []

    def stop_after_three() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        fit_vits(
            two_clips,
            models,
            "cancelled",
            config,
            run_dir=tmp_path / "run",
            should_stop=stop_after_three,
            progress=lambda f, m: messages.append(m),
        )
    assert any("from scratch" in m for m in messages)
    assert [p.name for p in (tmp_path / "run").glob("ckpt_*.pt")] == ["ckpt_000000003.pt"]
    early = load_voice_model(models / "cancelled" / "cancelled.pth")
    assert early.metadata.steps == 3
    path = fit_vits(two_clips, models, "cancelled", config, run_dir=tmp_path / "run")
    assert path == models / "cancelled" / "cancelled.pth"
    model = load_voice_model(path)
    assert (model.metadata.epochs, model.metadata.steps, model.metadata.info) == (3, 6, "3epoch")
    assert model.metadata.extra["trained_from"] == "scratch"
    assert "from scratch" in model.metadata.extra["warnings"][0]
    assert model.metadata.extra["dataset_duration_s"] == pytest.approx(2 * CLIP_S)
    assert (models / "cancelled" / "cancelled_e3_s6.pth").is_file()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss_disc"]) and np.isfinite(r["loss_fm"]) for r in rows)


@pytest.mark.parametrize(("version", "use_f0"), [("v1", True), ("v2", False)], ids=["v1-f0", "v2-nof0"])
def test_fed_draws_make_the_step_independent_of_the_rng(
    version: str, use_f0: bool, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Pitch and no-pitch, v1 and v2: with the draws fed, the RNG state changes no number."""
    content_dim = 256 if version == "v1" else 768
    work = _make_work_dir(tmp_path_factory.mktemp(f"draws{version}"), ["004.flac"], content_dim=content_dim)
    config = VitsTrainConfig.tiny(version=version, use_f0=use_f0)
    runs = []
    for seed in (1, 2):
        torch.manual_seed(0)
        trainer = _trainer(work, tmp_path / f"run{seed}", config)
        batch = next(trainer.batches(1))
        assert batch is not None and (batch.pitch is not None) == use_f0
        generator = torch.Generator().manual_seed(5)
        frames, segment = batch.spec.shape[-1], config.segment_samples
        draws = TrainingDraws(
            posterior_noise=torch.randn(1, trainer.synth_config.inter_channels, frames, generator=generator),
            slice_uniform=torch.rand(1, generator=generator),
            sine_noise=torch.randn(1, segment, 1, generator=generator) if use_f0 else None,
        )
        torch.manual_seed(seed)
        trace = StepTrace()
        runs.append((trainer.train_step(batch, draws=draws, trace=trace), trace))
    (first, trace_a), (second, trace_b) = runs
    assert first == second
    assert torch.equal(trace_a.tensors["y_hat"], trace_b.tensors["y_hat"])
    assert set(trace_a.losses["losses_gen"]) and len(trace_a.losses["losses_gen"]) == 2  # scale + period 2
    assert set(trace_a.grads) == {"generator", "discriminator"}


# --------------------------------------------------------------------------- exports


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_real_size_export_layout_equals_rvc_manifests(version: str) -> None:
    config = VitsTrainConfig(version=version, sample_rate=40000, use_f0=True)
    manifest = json.loads((MANIFESTS_DIR / f"synth_{version}_f0_40k.json").read_text())
    with torch.device("meta"):
        net_g, net_d = build_networks(config)
    inference = [
        [k, list(v.shape)]
        for k, v in net_g.state_dict().items()
        if not k.startswith(POSTERIOR_ENCODER_PREFIX)
    ]
    assert inference == [[k, shape] for k, shape, _ in manifest["small_weight"]]
    assert [[k, list(v.shape)] for k, v in net_g.state_dict().items()] == [
        [k, shape] for k, shape, _ in manifest["G_state_dict"]
    ]
    assert export_synth_config(config).to_rvc_config() == manifest["constructor_args_positional"]
    disc_name = "MultiPeriodDiscriminator_v1" if version == "v1" else "MultiPeriodDiscriminatorV2_v2"
    disc = json.loads((MANIFESTS_DIR / f"disc_{disc_name}.json").read_text())
    assert [[k, list(v.shape)] for k, v in net_d.state_dict().items()] == [
        [row[0], row[1]] for row in disc["state_dict"]
    ]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_tiny_export_is_rvc_inference_format_and_runs_in_the_engine(
    version: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    content_dim = 256 if version == "v1" else 768
    work = _make_work_dir(tmp_path_factory.mktemp(f"work{version}"), ["003.flac"], content_dim=content_dim)
    config = VitsTrainConfig.tiny(version=version)
    trainer = _trainer(
        work, tmp_path / "run", config, export_dir=tmp_path / "out", name="tiny", f0_method="pm"
    )
    path = trainer.export()
    raw = torch.load(path, weights_only=True)
    assert list(raw) == ["weight", "config", "info", "sr", "f0", "version", "timbre"]
    assert (raw["info"], raw["sr"], raw["f0"], raw["version"]) == ("0epoch", "16k", 1, version)
    assert len(raw["config"]) == 18 and raw["config"][1] == 32
    expected = {
        k: tuple(v.shape) for k, v in trainer.net_g.state_dict().items() if not k.startswith("enc_q.")
    }
    assert list(raw["weight"]) == list(expected)
    assert {k: tuple(v.shape) for k, v in raw["weight"].items()} == expected
    assert all(v.dtype == torch.float16 for v in raw["weight"].values())
    assert (path.parent / "tiny_e0_s0.pth").is_file()

    model = load_voice_model(path)
    assert (model.metadata.version, model.metadata.sample_rate, model.metadata.extra["f0_method"]) == (
        version,
        16000,
        "pm",
    )
    synth = build_synthesizer(model)
    frames = 40
    phone = torch.randn(1, frames, content_dim)
    pitchf = torch.full((1, frames), 200.0)
    pitch = torch.from_numpy(f0_to_coarse(pitchf.numpy())).long()
    audio = synth.infer(
        phone,
        torch.tensor([frames]),
        pitch,
        pitchf,
        torch.tensor([0]),
        generator=torch.Generator().manual_seed(0),
    )
    assert audio.shape == (1, 1, frames * 160)
    assert torch.isfinite(audio).all() and float(audio.abs().max()) > 0


# --------------------------------------------------------------------------- pretrained and resume failures


def test_pretrained_pair_in_rvc_format_loads_strictly_and_mismatches_fail_clearly(
    two_clips: Path, tmp_path: Path
) -> None:
    donor = _trainer(two_clips, tmp_path / "donor", VitsTrainConfig.tiny(seed=99))
    g_path, d_path = tmp_path / "f0G16k.pth", tmp_path / "f0D16k.pth"
    torch.save({"model": {k: v.half() for k, v in donor.net_g.state_dict().items()}, "iteration": 1}, g_path)
    torch.save({"model": donor.net_d.state_dict(), "iteration": 1}, d_path)

    config = VitsTrainConfig.tiny(pretrained_g=str(g_path), pretrained_d=str(d_path))
    g, d, warning = resolve_pretrained(config)
    assert (g, d, warning) == (g_path, d_path, None)
    trainer = _trainer(two_clips, tmp_path / "run", config)
    trainer.load_pretrained(g, d)
    assert trainer.trained_from == "pretrained"
    for key, value in donor.net_g.state_dict().items():
        assert torch.equal(trainer.net_g.state_dict()[key], value.half().float()), key
    for key, value in donor.net_d.state_dict().items():
        assert torch.equal(trainer.net_d.state_dict()[key], value), key

    with pytest.raises(PretrainedError, match="discriminator file"):
        trainer.load_pretrained(d_path, None)
    other = _trainer(two_clips, tmp_path / "other", VitsTrainConfig.tiny(use_f0=False))
    with pytest.raises(PretrainedError, match=r"does not fit the v1 16000 Hz no-pitch .* unexpected keys"):
        other.load_pretrained(g_path, None)
    torch.save({"weights": 1}, tmp_path / "junk.pth")
    with pytest.raises(PretrainedError, match="not an RVC pretrained generator"):
        trainer.load_pretrained(tmp_path / "junk.pth", None)
    with pytest.raises(PretrainedError, match="does not exist"):
        resolve_pretrained(VitsTrainConfig.tiny(pretrained_g=str(tmp_path / "missing.pth")))


def test_missing_pretrained_files_mean_training_from_scratch_with_a_warning(tmp_path: Path) -> None:
    g, d, warning = resolve_pretrained(VitsTrainConfig(version="v2", sample_rate=40000), tmp_path)
    assert (g, d) == (None, None)
    assert warning is not None and "from scratch" in warning and "f0G40k.pth" in warning


def test_resume_fails_loudly_on_corrupt_or_incompatible_checkpoints(two_clips: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = _trainer(two_clips, run, VitsTrainConfig.tiny(max_steps=1))
    trainer.fit()
    checkpoint = trainer.checkpoints()[-1]
    good = checkpoint.read_bytes()
    with pytest.raises(ResumeError, match=r"other settings.*batch_size"):
        _trainer(two_clips, run, VitsTrainConfig.tiny(batch_size=2)).resume()
    checkpoint.write_bytes(good[: len(good) // 2])
    with pytest.raises(ResumeError, match="cannot resume"):
        _trainer(two_clips, run, VitsTrainConfig.tiny()).resume()
    with pytest.raises(ResumeError, match="cannot resume"):
        fit_vits(two_clips, None, "voice", VitsTrainConfig.tiny(), run_dir=run)
