"""Distil a trained voice into its live student (LLVC, Sadov et al. 2023): data, GAN training, the stage.

Synthetic parallel data: a pool of source utterances, each converted by the trained voice (the
teacher) through the pipeline's own :class:`~infer.pipeline.Converter` at 16 kHz. The pool is
the voice's own dataset segments (held-out report clips left out) made into other "speakers" by
a resampling shift (playing a clip ``2^(s/12)`` times faster moves its pitch *and* formants by
``s`` semitones; the teacher gets ``-s`` semitones of pitch shift so that its output stays in
the voice's range), plus, when named, a folder of any speech (converted unshifted). Pairs are
cached as ``.npz`` files (written atomically) in ``<work>/live_student/pairs`` under the
teacher's fingerprint; a second run converts only what is missing, and a retrained voice starts
the cache over.

Training: the student's output against the teacher's, with a multi-resolution STFT loss
(spectral convergence + log magnitude), a log-mel L1 loss, and the HiFi-GAN multi-period
discriminator (:class:`infer.nn.discriminators.MultiPeriodDiscriminator`, LSGAN) with feature
matching; on :class:`train.trainer.Trainer` (exact resume, atomic checkpoints, cancel). Every
checkpoint also writes ``<work>/live_student.pt``, which export copies into the model folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from infer.errors import Cancelled, TimbreError
from infer.fsutil import atomic_write, atomic_write_text
from infer.nn.configs import ConfigError, check_config_keys
from infer.nn.discriminators import DiscriminatorConfig, MultiPeriodDiscriminator
from infer.progress import ProgressFn, StopFn, check_stop, report
from infer.student import STUDENT_FILENAME, STUDENT_SAMPLE_RATE_HZ, LiveStudent, StudentConfig, save_student
from train.mel import SpectrogramConfig, mel_spectrogram
from train.trainer import MetricsFn, ResumeError, Trainer, TrainerConfig
from train.vits.losses import discriminator_loss, feature_matching_loss, generator_adversarial_loss

__all__ = [
    "PAIRS_DIRNAME",
    "RUN_DIRNAME",
    "PairDataset",
    "SourceClip",
    "StudentTrainConfig",
    "StudentTrainer",
    "build_pairs",
    "multi_resolution_stft_loss",
    "speaker_shift",
    "stage_live_student",
    "teacher_fingerprint",
    "voice_fingerprint",
]

log = logging.getLogger(__name__)

RUN_DIRNAME = "live_student"
PAIRS_DIRNAME = "pairs"
TEACHER_FILENAME = "teacher.json"
STFT_RESOLUTIONS = ((512, 128, 512), (1024, 256, 1024), (256, 64, 256))
"""(n_fft, hop, window) of the multi-resolution STFT loss (Parallel WaveGAN's set, at 16 kHz)."""
MAX_POOL_FILES = 500


@dataclass(frozen=True)
class StudentTrainConfig:
    """Settings of the student's GAN training.

    Attributes:
        batch_size: windows per step.
        segment_samples: window length at 16 kHz (a multiple of the student's frame).
        learning_rate: AdamW rate of the student and the discriminator.
        adam_betas: AdamW betas (HiFi-GAN's).
        mel_weight, stft_weight, adversarial_weight, feature_weight: loss weights.
        adversarial_start_step: the discriminator joins after this many steps (spectral warm-up).
        periods: the multi-period discriminator's periods (HiFi-GAN's).
        discriminator_width_divisor: narrows every discriminator width (1 = HiFi-GAN's, 4 for CPU).
        speaker_shifts_semitones: shifts of the voice's own clips that make the pool's "speakers".
    """

    batch_size: int = 8
    segment_samples: int = 8192
    learning_rate: float = 2e-4
    adam_betas: tuple[float, float] = (0.8, 0.99)
    mel_weight: float = 45.0
    stft_weight: float = 2.5
    adversarial_weight: float = 1.0
    feature_weight: float = 2.0
    adversarial_start_step: int = 0
    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    discriminator_width_divisor: int = 4
    speaker_shifts_semitones: tuple[float, ...] = (-5.0, -2.5, 0.0, 2.5, 5.0)

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.batch_size < 1 or self.segment_samples < 256:
            raise ConfigError(f"{name}: batch_size must be >= 1 and segment_samples >= 256")
        if not self.learning_rate > 0 or self.adversarial_start_step < 0:
            raise ConfigError(f"{name}: learning_rate must be > 0 and adversarial_start_step >= 0")
        if min(self.mel_weight, self.stft_weight, self.adversarial_weight, self.feature_weight) < 0:
            raise ConfigError(f"{name}: loss weights must be >= 0")
        if not self.speaker_shifts_semitones or any(abs(s) > 12 for s in self.speaker_shifts_semitones):
            raise ConfigError(f"{name}: speaker shifts must be a non-empty list within +-12 semitones")
        object.__setattr__(self, "periods", tuple(int(p) for p in self.periods))
        object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))
        shifts = tuple(float(s) for s in self.speaker_shifts_semitones)
        object.__setattr__(self, "speaker_shifts_semitones", shifts)

    @classmethod
    def tiny(cls) -> StudentTrainConfig:
        """Small windows, a narrow discriminator and two shifts: tests and quick trials."""
        return cls(
            batch_size=2, segment_samples=2048, discriminator_width_divisor=16, periods=(2, 3),
            speaker_shifts_semitones=(-4.0, 0.0),
        )  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudentTrainConfig:
        """Build from a plain dict; unknown keys are a :class:`ConfigError`."""
        check_config_keys(cls, data, require_all=False)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field."""
        out = asdict(self)
        for key in ("adam_betas", "periods", "speaker_shifts_semitones"):
            out[key] = list(out[key])
        return out


# --------------------------------------------------------------------------- parallel data


@dataclass(frozen=True)
class SourceClip:
    """One source utterance of the pool: a name (for the cache), 16 kHz audio, its speaker shift."""

    name: str
    audio_16k: np.ndarray
    shift_semitones: float = 0.0


def speaker_shift(audio_16k: np.ndarray, semitones: float) -> np.ndarray:
    """Pitch and formants moved by ``semitones`` together (resampled, so the clip is shorter or longer)."""
    from infer.audio import resample

    if semitones == 0:
        return np.asarray(audio_16k, dtype=np.float32)
    factor = 2.0 ** (semitones / 12.0)
    return resample(np.asarray(audio_16k, dtype=np.float32), STUDENT_SAMPLE_RATE_HZ, round(16000 / factor))


def teacher_fingerprint(paths: Sequence[Path | None], settings: Mapping[str, Any]) -> str:
    """SHA-256 over the teacher's files (voice model, index) and the conversion settings used."""
    digest = hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode())
    for path in paths:
        if path is None:
            continue
        with open(path, "rb") as handle:
            for block in iter(lambda handle=handle: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _pair_name(clip: SourceClip) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in clip.name)[:80]
    return f"{safe}_{clip.shift_semitones:+.2f}.npz"


def _save_pair(path: Path, source: np.ndarray, target: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, source=source.astype(np.float32), target=target.astype(np.float32))
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def build_pairs(
    clips: Sequence[SourceClip],
    convert: Callable[[np.ndarray, float], np.ndarray],
    pairs_dir: Path,
    fingerprint: str,
    *,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> list[Path]:
    """Convert every clip with the teacher (``convert(audio_16k, pitch_shift) -> 16 kHz``), cached.

    Cached pairs of the same teacher (``fingerprint``) are kept; pairs of another are removed first.
    Progress reports the ETA. Returns the pair files in clip order.
    """
    pairs_dir.mkdir(parents=True, exist_ok=True)
    stamp = pairs_dir / TEACHER_FILENAME
    if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")).get("teacher_sha256") != fingerprint:
        removed = list(pairs_dir.glob("*.npz"))
        for old in removed:
            old.unlink()
        log.info(
            "the voice changed since the student's pairs were made: %d cached pairs removed", len(removed)
        )
    atomic_write_text(stamp, json.dumps({"teacher_sha256": fingerprint}))
    paths = [pairs_dir / _pair_name(clip) for clip in clips]
    todo = [i for i, path in enumerate(paths) if not path.is_file()]
    started = time.perf_counter()
    for done, i in enumerate(todo, start=1):
        check_stop(should_stop)
        clip = clips[i]
        source = speaker_shift(clip.audio_16k, clip.shift_semitones)
        target = np.asarray(convert(source, -clip.shift_semitones), dtype=np.float32)
        length = min(source.shape[0], target.shape[0])
        _save_pair(paths[i], source[:length], target[:length])
        elapsed = time.perf_counter() - started
        eta = elapsed / done * (len(todo) - done)
        report(progress, done / len(todo), f"teacher pairs {done}/{len(todo)}, ETA {eta:.0f} s")
    log.info("%d teacher pairs (%d converted now, %d cached)", len(paths), len(todo), len(paths) - len(todo))
    return paths


class PairDataset:
    """Source/teacher pairs in memory (16 kHz float32), windowed deterministically."""

    def __init__(self, sources: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> None:
        if not sources or len(sources) != len(targets):
            raise TimbreError("the live student needs at least one source/teacher pair")
        self.sources = [np.asarray(s, dtype=np.float32) for s in sources]
        self.targets = [np.asarray(t, dtype=np.float32) for t in targets]

    @classmethod
    def load(cls, paths: Sequence[Path]) -> PairDataset:
        """Read pair files written by :func:`build_pairs`."""
        sources, targets = [], []
        for path in paths:
            with np.load(path, allow_pickle=False) as data:
                sources.append(data["source"])
                targets.append(data["target"])
        return cls(sources, targets)

    def __len__(self) -> int:
        return len(self.sources)

    def batch(
        self, indices: Sequence[int], segment: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Random windows of ``segment`` samples (zero-padded when a pair is shorter): (B, 1, S) twice."""
        xs, ys = [], []
        for i in indices:
            source, target = self.sources[i], self.targets[i]
            start = 0
            if source.shape[0] > segment:
                start = int(torch.randint(0, source.shape[0] - segment + 1, (1,), generator=generator))
            x = np.zeros(segment, np.float32)
            y = np.zeros(segment, np.float32)
            piece = source[start : start + segment]
            x[: piece.shape[0]] = piece
            y[: piece.shape[0]] = target[start : start + piece.shape[0]]
            xs.append(x)
            ys.append(y)
        return torch.from_numpy(np.stack(xs)).unsqueeze(1), torch.from_numpy(np.stack(ys)).unsqueeze(1)


# --------------------------------------------------------------------------- losses and trainer


def multi_resolution_stft_loss(y_hat: Tensor, y: Tensor) -> Tensor:
    """Sum over :data:`STFT_RESOLUTIONS` of spectral convergence + L1 of log magnitudes.

    ``||Y| - |Y_hat||_F / ||Y||_F + mean|log|Y| - log|Y_hat||`` (Yamamoto et al. 2020, eqs. 1-3);
    y_hat, y: (B, 1, S).
    """
    total = y.new_zeros(())
    for n_fft, hop, win in STFT_RESOLUTIONS:
        window = torch.hann_window(win, device=y.device)
        spectra = [
            torch.stft(s[:, 0], n_fft, hop, win, window, return_complex=True).abs().clamp(min=1e-7)
            for s in (y_hat, y)
        ]
        fake, real = spectra
        convergence = torch.linalg.norm(real - fake) / torch.linalg.norm(real).clamp(min=1e-7)
        total = total + convergence + F.l1_loss(torch.log(fake), torch.log(real))
    return total


class StudentTrainer(Trainer):
    """GAN distillation of the teacher's pairs into a :class:`~infer.student.LiveStudent`.

    Args:
        config: loop settings.
        dataset: the source/teacher pairs.
        student_config: the student's size.
        train_config: losses, windows, discriminator.
        fingerprint: the teacher's (a checkpoint of another teacher is not resumed).
        student_path: where each checkpoint also writes the student (``<work>/live_student.pt``).
        metadata: plain data added to the student file's metadata.
        progress, should_stop, on_metrics: see :class:`~train.trainer.Trainer`.
    """

    def __init__(
        self,
        config: TrainerConfig,
        dataset: PairDataset,
        *,
        student_config: StudentConfig,
        train_config: StudentTrainConfig,
        fingerprint: str,
        student_path: Path | None = None,
        metadata: Mapping[str, Any] | None = None,
        device: torch.device | str = "cpu",
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
        on_metrics: MetricsFn | None = None,
    ) -> None:
        super().__init__(config, progress=progress, should_stop=should_stop, on_metrics=on_metrics)
        tc = train_config
        self.device = torch.device(device)
        if tc.segment_samples % student_config.frame_samples:
            raise ConfigError(f"segment_samples must be a multiple of {student_config.frame_samples}")
        self.dataset = dataset
        self.train_config = tc
        self.fingerprint = fingerprint
        self.student_path = student_path
        self.metadata = dict(metadata or {})
        self.student = LiveStudent(student_config).to(self.device).train()
        self.discriminator = (
            MultiPeriodDiscriminator(
                DiscriminatorConfig(periods=tc.periods, width_divisor=tc.discriminator_width_divisor)
            )
            .to(self.device)
            .train()
        )
        self.opt_g = torch.optim.AdamW(self.student.parameters(), lr=tc.learning_rate, betas=tc.adam_betas)
        self.opt_d = torch.optim.AdamW(
            self.discriminator.parameters(), lr=tc.learning_rate, betas=tc.adam_betas
        )
        self.mel_config = SpectrogramConfig.for_sample_rate(STUDENT_SAMPLE_RATE_HZ)

    def modules(self) -> dict[str, nn.Module]:
        """The student and its discriminator."""
        return {"student": self.student, "discriminator": self.discriminator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One AdamW each."""
        return {"student": self.opt_g, "discriminator": self.opt_d}

    def extra_state(self) -> dict[str, Any]:
        """The teacher's fingerprint and the student's config."""
        return {"teacher_sha256": self.fingerprint, "student_config": self.student.config.to_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint of another teacher or another student size."""
        if state.get("teacher_sha256") != self.fingerprint:
            raise ResumeError(
                "this live-student checkpoint was distilled from another version of the voice; delete "
                f"the {RUN_DIRNAME} run folder to start over"
            )
        if state.get("student_config") != self.student.config.to_dict():
            raise ResumeError(
                "this live-student checkpoint is of another student size; delete its run folder"
            )

    def batches_per_epoch(self) -> int:
        """Pairs / batch size, rounded up."""
        return math.ceil(len(self.dataset) / self.train_config.batch_size)

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Shuffled windows, deterministic for (seed, epoch)."""
        tc = self.train_config
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        for start in range(0, len(order), tc.batch_size):
            group = order[start : start + tc.batch_size]
            while len(group) < tc.batch_size:  # a full last batch: wrap around
                group.append(order[len(group) % len(order)])
            yield self.dataset.batch(group, tc.segment_samples, generator)

    def train_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, float]:
        """One discriminator step (once adversarial), then one student step."""
        tc = self.train_config
        x, y = (t.to(self.device) for t in batch)
        y_hat = self.student(x)
        metrics: dict[str, float] = {}
        use_gan = self.step >= tc.adversarial_start_step and tc.adversarial_weight + tc.feature_weight > 0
        if use_gan:
            real, fake, _, _ = self.discriminator(y, y_hat.detach())
            loss_d = discriminator_loss(real, fake)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
            metrics["loss_disc"] = float(loss_d.detach())
        loss_mel = F.l1_loss(
            mel_spectrogram(y_hat[:, 0], self.mel_config), mel_spectrogram(y[:, 0], self.mel_config)
        )
        loss_stft = multi_resolution_stft_loss(y_hat, y)
        loss = tc.mel_weight * loss_mel + tc.stft_weight * loss_stft
        if use_gan:
            _, fake, fmap_real, fmap_fake = self.discriminator(y, y_hat)
            loss_adv = generator_adversarial_loss(fake)
            loss_fm = feature_matching_loss(fmap_real, fmap_fake)
            loss = loss + tc.adversarial_weight * loss_adv + tc.feature_weight * loss_fm
            metrics |= {"loss_gen": float(loss_adv.detach()), "loss_fm": float(loss_fm.detach())}
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        return metrics | {
            "loss_mel": float(loss_mel.detach()),
            "loss_stft": float(loss_stft.detach()),
            "loss_student": float(loss.detach()),
        }

    def on_checkpoint(self, path: Path) -> None:
        """Write the student file beside the experiment when ``student_path`` is set."""
        if self.student_path is not None:
            self.export(self.student_path)

    def export(self, path: Path) -> None:
        """Write the student (eval copy of the current weights) with its metadata."""
        save_student(
            self.student.to("cpu"),
            path,
            {
                **self.metadata,
                "steps": self.step,
                "teacher_sha256": self.fingerprint,
                "train_config": self.train_config.to_dict(),
            },
        )
        self.student.to(self.device)


# --------------------------------------------------------------------------- the stage


def voice_fingerprint(settings: Any) -> str:
    """The fingerprint of the experiment's trained voice as the student's teacher (its files, F0, encoder)."""
    from train.pipeline import _f0_method, index_path
    from train.vits import DEFAULT_EXPORT_DIRNAME

    pth = settings.work_dir / DEFAULT_EXPORT_DIRNAME / f"{settings.name}.pth"
    f0_method = _f0_method(settings) if settings.use_f0 else None
    conversion = {"f0_method": f0_method, "content_encoder": settings.content_encoder, "seed": 0}
    return teacher_fingerprint([pth, index_path(settings)], conversion)


def _pool(settings: Any, shifts: Sequence[float]) -> list[SourceClip]:
    """The voice's training segments at every shift, plus the user's folder unshifted."""
    from infer.audio import load_audio
    from infer.batch import collect_inputs
    from train.dataset import WAVS_16K_DIRNAME
    from train.report import heldout_names

    heldout = set(heldout_names(settings.work_dir)) if settings.use_report else set()
    segments = [
        p for p in sorted((settings.work_dir / WAVS_16K_DIRNAME).glob("*.wav")) if p.stem not in heldout
    ]
    clips = [
        SourceClip(p.stem, load_audio(p, STUDENT_SAMPLE_RATE_HZ), shift) for p in segments for shift in shifts
    ]
    if settings.live_student_pool:
        files = collect_inputs([Path(settings.live_student_pool)])[:MAX_POOL_FILES]
        clips += [
            SourceClip(f"pool-{i:04d}-{f.stem}", load_audio(f, STUDENT_SAMPLE_RATE_HZ))
            for i, f in enumerate(files)
        ]
    return clips


def stage_live_student(
    settings: Any,
    *,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    on_metrics: MetricsFn | None = None,
    train_config: StudentTrainConfig | None = None,
    train_budget_s: float | None = None,
    student_config: StudentConfig | None = None,
) -> Any:
    """Make the teacher's pairs (cached) and train the live student; writes ``<work>/live_student.pt``.

    ``train_budget_s`` (benchmarks) stops training, not pair making, after that many seconds; the
    student of the last step is written and the stage returns normally. ``student_config``
    (benchmarks) overrides the network's size, which otherwise follows the voice's (tiny or not).
    """
    from infer.params import ConvertParams
    from infer.pipeline import Converter, Resources, load_voice
    from infer.progress import sub_progress
    from train.pipeline import StageResult, _device, _f0_method, index_path
    from train.settings import StageError
    from train.vits import DEFAULT_EXPORT_DIRNAME

    pth = settings.work_dir / DEFAULT_EXPORT_DIRNAME / f"{settings.name}.pth"
    if not pth.is_file():
        raise StageError(f"the live student needs the trained voice {pth}: run `fit` first")
    is_tiny = settings.size == "tiny"
    tc = train_config or (StudentTrainConfig.tiny() if is_tiny else StudentTrainConfig())
    student_config = student_config or (StudentConfig.tiny() if is_tiny else StudentConfig())
    index = index_path(settings)
    f0_method = _f0_method(settings) if settings.use_f0 else None
    fingerprint = voice_fingerprint(settings)
    device = _device(settings)
    resources = Resources(
        pretrained_dir=settings.pretrained_dir or Resources().pretrained_dir,
        content_encoder=settings.content_encoder,
        device=device,
    )
    converter = Converter(load_voice(pth, index, device=device), resources)

    def convert(audio_16k: np.ndarray, semitones: float) -> np.ndarray:
        params = ConvertParams(
            pitch_shift_semitones=semitones,
            f0_method=f0_method,
            output_sample_rate=STUDENT_SAMPLE_RATE_HZ,
            seed=0,
        )
        return converter.convert(audio_16k, params, should_stop=should_stop).audio

    run_dir = settings.work_dir / RUN_DIRNAME
    paths = build_pairs(
        _pool(settings, tc.speaker_shifts_semitones),
        convert,
        run_dir / PAIRS_DIRNAME,
        fingerprint,
        progress=sub_progress(progress, 0.0, 0.3),
        should_stop=should_stop,
    )
    dataset = PairDataset.load(paths)
    steps = settings.live_student_steps
    per_epoch = math.ceil(len(dataset) / tc.batch_size)
    epochs = max(1, math.ceil(steps / per_epoch))
    student_file = settings.work_dir / STUDENT_FILENAME
    trainer = StudentTrainer(
        TrainerConfig(run_dir=run_dir, epochs=epochs, save_every_epochs=max(1, epochs // 4), max_steps=steps),
        dataset,
        student_config=student_config,
        train_config=tc,
        fingerprint=fingerprint,
        student_path=student_file,
        metadata={"model": settings.name, "pairs": len(dataset)},
        device=device,
        progress=sub_progress(progress, 0.3, 1.0),
        should_stop=should_stop,
        on_metrics=on_metrics,
    )
    if train_budget_s is not None:
        deadline = time.monotonic() + train_budget_s
        trainer.should_stop = lambda: (
            (should_stop is not None and should_stop()) or time.monotonic() > deadline
        )
    trainer.resume()
    try:
        trainer.fit()
    except Cancelled:
        if train_budget_s is None or (should_stop is not None and should_stop()):
            raise
        log.info("live student: the %.0f s training budget is spent at step %d", train_budget_s, trainer.step)
    trainer.export(student_file)  # also when a finished run is resumed
    return StageResult(
        "live-student",
        f"live student after {trainer.step} steps on {len(dataset)} teacher pairs",
        {"student": str(student_file), "pairs": len(dataset)},
    )
