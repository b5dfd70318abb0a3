"""One RVC training step, replayed through Timbre's trainer and compared with the reference.

Cases are discovered in ``../shared/fixtures/rvc/train_golden`` (``TIMBRE_TRAIN_FIXTURES_DIR``
points at another directory of the same layout): every ``<case>_config.json`` with its batch,
draws, step, losses, gradients and after-step files (section 7 of the fixtures' README). The
wavs and features are written as a prepared work folder, read by :class:`VitsDataset` and
collated; the step itself runs :meth:`VitsTrainer.train_step` on the recorded batch with the
recorded draws fed, after a strict load of the fp16 ``{'model': ...}`` G/D files.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from infer import rvc
from infer.nn.discriminators import DiscriminatorConfig
from infer.synthesizer import SynthConfig, TrainingDraws
from tests.helpers import RVC_FIXTURES
from train.features import (
    F0_COARSE_DIRNAME,
    F0_HZ_DIRNAME,
    GT_WAVS_DIRNAME,
    feature_dir,
    list_training_examples,
)
from train.mel import linear_spectrogram, mel_spectrogram
from train.vits import (
    STEP_SCALARS,
    StepForward,
    StepTrace,
    VitsBatch,
    VitsTrainConfig,
    VitsTrainer,
    collate,
)

TRAIN_GOLDEN_DIR = Path(os.environ.get("TIMBRE_TRAIN_FIXTURES_DIR", RVC_FIXTURES / "train_golden"))
CASES = sorted(p.name.removesuffix("_config.json") for p in TRAIN_GOLDEN_DIR.glob("*_config.json"))

LOSS_RTOL = 1e-5
GRAD_NORM_RTOL = 1e-4
FORWARD_ATOL = 1e-4
Y_HAT_MEL_ATOL = 2e-3
GRAD_REL_L2 = 1e-3
ZERO_GRAD_ATOL = 1e-6
AFTER_ATOL = 1e-6
AFTER_OUTLIER_ATOL = 2.5e-4
AFTER_OUTLIER_FRACTION = 1e-3
CHECKSUM_RTOL = 1e-6
# A key bias adds the same score to a whole softmax row: its gradient is exactly 0 in exact
# arithmetic, the stored one is rounding noise, and Adam amplifies that noise to +-lr.
ZERO_GRAD_PATTERN = re.compile(r"(^|\.)attn_layers\.\d+\.conv_k\.bias$")
ROLES = {"G": "generator", "D": "discriminator"}


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@dataclass
class Golden:
    """The files of one case."""

    name: str
    config: dict[str, Any]
    batch: dict[str, np.ndarray]
    noise: dict[str, np.ndarray]
    step: dict[str, np.ndarray]
    losses: dict[str, Any]
    grads: dict[str, np.ndarray]
    after: dict[str, np.ndarray]
    checksums: dict[str, Any]

    @classmethod
    def load(cls, name: str, root: Path = TRAIN_GOLDEN_DIR) -> Golden:
        def read_json(suffix: str) -> dict[str, Any]:
            return json.loads((root / f"{name}_{suffix}.json").read_text(encoding="utf-8"))

        return cls(
            name=name,
            config=read_json("config"),
            batch=_load_npz(root / f"{name}_batch.npz"),
            noise=_load_npz(root / f"{name}_noise.npz"),
            step=_load_npz(root / f"{name}_step.npz"),
            losses=read_json("losses"),
            grads=_load_npz(root / f"{name}_grads.npz"),
            after=_load_npz(root / f"{name}_after_step.npz"),
            checksums=read_json("after_step_checksums"),
        )

    @property
    def use_f0(self) -> bool:
        return bool(self.config["f0"])

    def generator_config(self) -> SynthConfig:
        """The generator from the keyword form of the reference constructor call."""
        kw = self.config["G_constructor_kwargs"]
        names = [f.name for f in fields(SynthConfig) if f.name in kw]
        return SynthConfig(
            **{k: kw[k] for k in names},
            sample_rate=self.config["hps_data"]["sampling_rate"],
            content_dim=rvc.content_dim(self.config["version"]),
            use_f0=self.use_f0,
        )

    def train_config(self, **overrides: Any) -> VitsTrainConfig:
        """The run's settings: the case's networks and hyper-parameters."""
        c, hps = self.config, self.config["hps_train"]
        version = c["version"]
        generator = self.generator_config()
        widths = c["D_tiny_widths"]
        period_rows = widths["DiscriminatorP_convs"]
        discriminator = DiscriminatorConfig(
            periods=tuple(c["D_periods"]),
            kernel_size=period_rows[0][2],
            stride=period_rows[0][3],
            scale_channels=tuple(row[1] for row in widths["DiscriminatorS_convs"]),
            scale_groups=tuple(row[4] for row in widths["DiscriminatorS_convs"]),
            period_channels=tuple(row[1] for row in period_rows),
        )
        values: dict[str, Any] = {
            "sample_rate": c["hps_data"]["sampling_rate"],
            "version": version,
            "use_f0": self.use_f0,
            "batch_size": hps["batch_size"],
            "epochs": 1,
            "learning_rate": hps["learning_rate"],
            "betas": tuple(hps["betas"]),
            "eps": hps["eps"],
            "lr_decay": hps["lr_decay"],
            "c_mel": float(hps["c_mel"]),
            "c_kl": float(hps["c_kl"]),
            "segment_size": hps["segment_size"],
            "weight_decay": c["optimizer"]["weight_decay"],
            "seed": hps["seed"],
            "generator": generator,
            "discriminator": discriminator,
            "use_pretrained": False,
            "device": "cpu",
            # The clips are shorter than RVC's sampler keeps; the step does not use the sampler.
            "bucketing": "exact",
        }
        return VitsTrainConfig(**(values | overrides))

    def row_of_loader_index(self, index: int) -> int:
        return int(np.flatnonzero(self.batch["collate_row_to_loader_index"] == index)[0])

    def recorded_batch(self) -> VitsBatch:
        b = {k: torch.from_numpy(v) for k, v in self.batch.items()}
        return VitsBatch(
            phone=b["phone"],
            phone_lengths=b["phone_lengths"],
            pitch=b["pitch"] if self.use_f0 else None,
            pitchf=b["pitchf"] if self.use_f0 else None,
            spec=b["spec"],
            spec_lengths=b["spec_lengths"],
            wav=b["wave"],
            wav_lengths=b["wave_lengths"],
            sid=b["sid"],
        )

    def draws(self) -> TrainingDraws:
        n = self.noise
        return TrainingDraws(
            posterior_noise=torch.from_numpy(n["posterior_noise"]),
            slice_uniform=torch.from_numpy(n["slice_uniform"]),
            sine_noise=torch.from_numpy(n["sine_noise"]) if self.use_f0 else None,
        )

    def write_work_dir(self, work: Path) -> None:
        """The loader's inputs as a prepared folder: wavs, 50 fps features and 100 fps F0 files."""
        version = self.config["version"]
        dirs = [
            work / GT_WAVS_DIRNAME,
            feature_dir(work, version),
            work / F0_COARSE_DIRNAME,
            work / F0_HZ_DIRNAME,
        ]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        rate = self.config["hps_data"]["sampling_rate"]
        for index, entry in enumerate(self.config["loader_input_order"]):
            name = f"0_{index}"
            sf.write(dirs[0] / f"{name}.wav", self.batch[f"loader_wav_{index}"], rate, subtype="FLOAT")
            row = self.row_of_loader_index(index)
            kept = int(self.batch["phone_lengths"][row])
            phone = self.batch["phone"][row, :kept]
            np.testing.assert_array_equal(phone[1::2], phone[::2][: kept // 2])  # rows repeated twice
            features = np.zeros((entry["n_feat_rows_50fps"], phone.shape[1]), np.float32)
            features[: len(phone[::2])] = phone[::2]  # rows past the trim are unknown (and unused)
            np.save(dirs[1] / f"{name}.npy", features)
            if not self.use_f0:
                continue
            pitch_frames = 2 * entry["n_feat_rows_50fps"]
            coarse = np.ones(pitch_frames, np.int64)
            hz = np.zeros(pitch_frames, np.float32)
            coarse[:kept], hz[:kept] = self.batch["pitch"][row, :kept], self.batch["pitchf"][row, :kept]
            np.save(dirs[2] / f"{name}.npy", coarse)
            np.save(dirs[3] / f"{name}.npy", hz)


@dataclass
class Replay:
    """Timbre's run of one case."""

    golden: Golden
    trainer: VitsTrainer
    loaded_batch: VitsBatch
    before: dict[str, dict[str, torch.Tensor]]
    trace: StepTrace
    metrics: dict[str, float]


def _params(trainer: VitsTrainer) -> dict[str, dict[str, torch.Tensor]]:
    return {
        role: {k: p.detach().clone() for k, p in module.named_parameters()}
        for role, module in trainer.modules().items()
    }


def replay(
    golden: Golden, work: Path, trainer_class: type[VitsTrainer] = VitsTrainer, **overrides: Any
) -> Replay:
    """Build the trainer on the case's files, load its G/D strictly and run the recorded step."""
    golden.write_work_dir(work)
    config = golden.train_config(**overrides)
    examples = list_training_examples(work, config.version, use_f0=config.use_f0)
    trainer = trainer_class(config, examples, run_dir=work / "run")
    trainer.load_pretrained(
        TRAIN_GOLDEN_DIR / f"G_{golden.name}.pth", TRAIN_GOLDEN_DIR / f"D_{golden.name}.pth"
    )
    items = [
        replace(trainer.dataset[i], sid=entry["sid"])
        for i, entry in enumerate(golden.config["loader_input_order"])
    ]
    loaded = collate(items, hop_length=trainer.spectrogram.hop_length, min_frames=config.segment_frames)
    before = _params(trainer)
    trace = StepTrace()
    metrics = trainer.train_step(golden.recorded_batch(), draws=golden.draws(), trace=trace)
    return Replay(golden, trainer, loaded, before, trace, metrics)


@pytest.fixture(scope="module", params=CASES)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Replay:
    name = request.param
    return replay(Golden.load(name), tmp_path_factory.mktemp(name))


# --------------------------------------------------------------------------- the checks


def check_losses(losses: dict[str, Any], golden: Golden) -> None:
    """Every scalar and per-sub-discriminator loss of the step, and both gradient norms."""
    expected = golden.losses
    for key in STEP_SCALARS:
        rtol = GRAD_NORM_RTOL if key.startswith("grad_norm") else LOSS_RTOL
        assert losses[key] == pytest.approx(expected[key], rel=rtol), (
            f"{key}: {losses[key]} vs {expected[key]}"
        )
    for key in ("losses_disc_r", "losses_disc_g", "losses_gen"):
        np.testing.assert_allclose(losses[key], expected[key], rtol=LOSS_RTOL, err_msg=key)


def check_gradients(grads: dict[str, dict[str, torch.Tensor]], golden: Golden) -> None:
    """Each parameter gradient by relative L2 (the exactly-zero key biases by an absolute bound)."""
    for key, want in golden.grads.items():
        prefix, name = key.split(".", 1)
        got = grads[ROLES[prefix]][name].numpy()
        assert got.shape == want.shape, key
        if ZERO_GRAD_PATTERN.search(name):
            np.testing.assert_allclose(got, want, atol=ZERO_GRAD_ATOL, rtol=0, err_msg=key)
            continue
        rel = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))
        assert rel <= GRAD_REL_L2, f"{key}: relative L2 error {rel:.2e}"
    for role, named in grads.items():
        prefix = next(p for p, r in ROLES.items() if r == role)
        assert {f"{prefix}.{k}" for k in named} <= set(golden.grads), (
            f"{role} has gradients the reference lacks"
        )


def check_after_step(params: dict[str, dict[str, torch.Tensor]], golden: Golden) -> None:
    """The exactly stored parameters after both optimizer steps, a tiny fraction of outliers allowed."""
    for key, want in golden.after.items():
        prefix, name = key.split(".", 1)
        got = params[ROLES[prefix]][name].numpy()
        error = np.abs(got - want)
        outliers = error > AFTER_ATOL
        assert outliers.mean() <= AFTER_OUTLIER_FRACTION, f"{key}: {int(outliers.sum())} elements off"
        assert error.max() <= AFTER_OUTLIER_ATOL, f"{key}: off by {error.max():.2e}"


# --------------------------------------------------------------------------- tests


def test_train_golden_cases_are_found() -> None:
    assert CASES, f"no <case>_config.json in {TRAIN_GOLDEN_DIR}"


def test_train_golden_defaults_are_rvcs(run: Replay) -> None:
    """Timbre's defaults are the reference's settings: the golden needs no override but the networks."""
    golden, hps = run.golden, run.golden.config["hps_train"]
    default = VitsTrainConfig(
        sample_rate=golden.config["hps_data"]["sampling_rate"], version=golden.config["version"]
    )
    assert default.learning_rate == hps["learning_rate"]
    assert default.betas == tuple(hps["betas"])
    assert default.eps == hps["eps"]
    assert default.lr_decay == hps["lr_decay"]
    assert (default.c_mel, default.c_kl) == (hps["c_mel"], hps["c_kl"])
    assert default.seed == hps["seed"]
    assert default.segment_samples == hps["segment_size"]
    assert default.weight_decay == golden.config["optimizer"]["weight_decay"]
    assert default.grad_clip_norm is None  # RVC's clip_grad_value_(..., None) only measures
    assert default.discriminator_start_step == 0
    assert default.bucketing == "rvc"
    data, spec = golden.config["hps_data"], run.trainer.spectrogram
    assert (spec.n_fft, spec.hop_length, spec.win_length) == (
        data["filter_length"],
        data["hop_length"],
        data["win_length"],
    )
    assert (spec.n_mels, spec.fmin_hz, spec.fmax_hz) == (
        data["n_mel_channels"],
        data["mel_fmin"],
        data["mel_fmax"],
    )
    assert run.trainer.synth_config.segment_size == golden.config["segment_frames"]


def test_train_golden_networks_load_strictly_at_the_recorded_size(run: Replay) -> None:
    config = run.golden.config
    counts = {role: sum(p.numel() for p in params.values()) for role, params in run.before.items()}
    assert counts == {"generator": config["G_param_count"], "discriminator": config["D_param_count"]}
    stored = torch.load(TRAIN_GOLDEN_DIR / f"G_{run.golden.name}.pth", map_location="cpu", weights_only=True)
    first = next(iter(stored["model"]))
    assert torch.equal(run.before["generator"][first], stored["model"][first].float())
    assert run.trainer.trained_from == "pretrained"


def test_train_golden_spectrogram_of_the_loader_wavs(run: Replay) -> None:
    golden = run.golden
    spec_config = run.trainer.spectrogram
    for check in golden.config["spec_check"]:
        row, index = check["row"], check["loader_index"]
        spec = linear_spectrogram(torch.from_numpy(golden.batch[f"loader_wav_{index}"]), spec_config)
        assert spec.shape[-1] == check["full_frames"]
        kept = check["kept_frames"]
        want = golden.batch["spec"][row, :, :kept]
        np.testing.assert_allclose(spec[:, :kept].numpy(), want, rtol=1e-5, atol=FORWARD_ATOL)


def test_train_golden_collated_batch(run: Replay) -> None:
    """The dataset (spectrogram before the trim, trimming) and the collate (longest first)."""
    loaded, golden = run.loaded_batch, run.golden.recorded_batch()
    for name in ("phone_lengths", "spec_lengths", "wav_lengths", "sid", "pitch"):
        if getattr(golden, name) is not None:
            assert torch.equal(getattr(loaded, name), getattr(golden, name)), name
    for name in ("phone", "pitchf", "wav"):
        if getattr(golden, name) is not None:
            assert torch.equal(getattr(loaded, name), getattr(golden, name)), name
    torch.testing.assert_close(loaded.spec, golden.spec, rtol=1e-5, atol=FORWARD_ATOL)


def test_train_golden_generator_forward(run: Replay) -> None:
    got, want = run.trace.tensors, run.golden.step
    assert torch.equal(got["ids_slice"], torch.from_numpy(want["ids_slice"]))
    for name in ("x_mask", "z_mask"):
        assert torch.equal(got[name], torch.from_numpy(want[name])), name
    for name in ("z", "z_p", "m_p", "logs_p", "m_q", "logs_q", "y_hat", "mel", "y_mel", "wave_slice"):
        np.testing.assert_allclose(got[name].numpy(), want[name], atol=FORWARD_ATOL, rtol=0, err_msg=name)
    np.testing.assert_allclose(got["y_hat_mel"].numpy(), want["y_hat_mel"], atol=Y_HAT_MEL_ATOL, rtol=0)


def test_train_golden_discriminator_step_and_second_pass(run: Replay) -> None:
    got, want = run.trace.tensors, run.golden.step
    names = [k for k in want if k.startswith(("dstep_", "gstep_"))]
    assert names and set(names) == {k for k in got if k.startswith(("dstep_", "gstep_"))}
    for name in names:
        np.testing.assert_allclose(got[name].numpy(), want[name], atol=FORWARD_ATOL, rtol=0, err_msg=name)


def test_train_golden_losses_and_grad_norms(run: Replay) -> None:
    check_losses(run.trace.losses, run.golden)
    assert run.metrics["lr"] == run.golden.losses["lr_g"]
    assert run.trainer.optim_d.param_groups[0]["lr"] == run.golden.losses["lr_d"]


def test_train_golden_parameter_gradients(run: Replay) -> None:
    check_gradients(run.trace.grads, run.golden)


def test_train_golden_parameters_after_the_step(run: Replay) -> None:
    check_after_step(_params(run.trainer), run.golden)


def test_train_golden_update_is_adamw_on_our_own_gradients(run: Replay) -> None:
    """First AdamW step: ``p (1 - lr wd) - lr g / (|g| + eps)`` for every parameter."""
    c = run.trainer.vits_config
    after = _params(run.trainer)
    for role, grads in run.trace.grads.items():
        for name, grad in grads.items():
            p = run.before[role][name]
            want = p * (1 - c.learning_rate * c.weight_decay) - c.learning_rate * grad / (grad.abs() + c.eps)
            torch.testing.assert_close(after[role][name], want, rtol=0, atol=1e-8, msg=f"{role}.{name}")


def test_train_golden_after_step_checksums(run: Replay) -> None:
    columns = run.golden.checksums["columns"]
    after = _params(run.trainer)
    for prefix, role in ROLES.items():
        rows = run.golden.checksums[prefix]
        assert list(rows) == list(after[role]), f"{role}: parameter order differs from the reference"
        for name, row in rows.items():
            if ZERO_GRAD_PATTERN.search(name):
                continue
            values = dict(zip(columns, row, strict=True))
            p = after[role][name].double()
            atol = AFTER_OUTLIER_ATOL * max(1.0, AFTER_OUTLIER_FRACTION * p.numel())
            assert float(p.sum()) == pytest.approx(values["sum"], rel=CHECKSUM_RTOL, abs=atol), name
            assert float(p.abs().sum()) == pytest.approx(values["sum_abs"], rel=CHECKSUM_RTOL, abs=atol), name


# --------------------------------------------------------------------------- the test can fail


class _MelOfTheAudioSlice(VitsTrainer):
    """A deliberate mistake: the mel target recomputed from the real audio window."""

    def _generator_forward(self, b: VitsBatch, draws: TrainingDraws | None) -> StepForward:
        fwd = super()._generator_forward(b, draws)
        wrong = mel_spectrogram(fwd.wave.squeeze(1), self.spectrogram)
        return replace(fwd, y_mel=wrong)


@pytest.mark.parametrize("case", CASES)
def test_train_golden_fails_on_a_wrong_mel_target(case: str, tmp_path: Path) -> None:
    golden = Golden.load(case)
    wrong = replay(golden, tmp_path, _MelOfTheAudioSlice)
    with pytest.raises(AssertionError, match="loss_mel"):
        check_losses(wrong.trace.losses, golden)


@pytest.mark.parametrize("case", CASES)
def test_train_golden_fails_without_adamws_weight_decay(case: str, tmp_path: Path) -> None:
    golden = Golden.load(case)
    wrong = replay(golden, tmp_path, weight_decay=0.0)
    check_losses(wrong.trace.losses, golden)  # the step itself is the same...
    with pytest.raises(AssertionError, match="off"):
        check_after_step(_params(wrong.trainer), golden)  # ...the update is not


@pytest.mark.slow
def test_train_golden_runs_unchanged_on_another_directory(tmp_path: Path) -> None:
    """The same tests, pointed at a copy of the cases under another name, discover and pass it."""
    import shutil
    import subprocess
    import sys

    renamed = tmp_path / "other_fixtures"
    renamed.mkdir()
    for case in CASES:
        for path in TRAIN_GOLDEN_DIR.iterdir():
            if case in path.name:
                shutil.copy(path, renamed / path.name.replace(case, f"copy_of_{case}"))
    for path in TRAIN_GOLDEN_DIR.iterdir():
        if not any(case in path.name for case in CASES):
            shutil.copy(path, renamed / path.name)
    env = {**os.environ, "TIMBRE_TRAIN_FIXTURES_DIR": str(renamed)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "train_golden and not another",
         "--collect-only", str(Path(__file__))],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert all(f"copy_of_{case}" in proc.stdout for case in CASES), proc.stdout[-2000:]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "train_golden and not another",
         str(Path(__file__))],
        capture_output=True, text=True, env=env, timeout=900, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
