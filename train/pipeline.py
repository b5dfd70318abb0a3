"""The training chain as stages: prepare, extract, fit, index, [optional students], [report], export.

Size: one short function per stage and the chain that runs them, all on one settings record.

Every stage reads and writes one experiment folder (``work_dir``) and is resumable on its own:
running a stage again skips what is already done (prepare and extract by source keys, fit and
the diffusion stages from their checkpoints). The studio's job worker and ``python -m train``
both call :func:`run_stage`.

With ``use_report`` (the default), a few segments of the dataset are held out before training
(``heldout.json``, see :mod:`train.report`): fit, index and diffusion leave them out, and the
report stage converts them and the probe phrases with every saved checkpoint; export then ships
``report.json`` and its A/B previews with the model.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infer import rvc
from infer.devices import resolve_device
from infer.errors import TimbreError
from infer.fsutil import atomic_write_text
from infer.options import (
    EDM_PARAMETERISATION,
    OFFLINE_CONTENT_ENCODER,
    TRAIN_STAGES,
    names,
)
from infer.progress import ProgressFn, StopFn, check_stop, report, sub_progress
from train.diffusion_stages import exportable_heads, stage_acdd, stage_cm
from train.settings import StageError, TrainSettings

log = logging.getLogger(__name__)

STAGES = names(TRAIN_STAGES)
TEACHER_HEAD = "diffusion_teacher.pt"
# Denoiser size for full models: LCM-4 at this size adds about a fifth to a conversion's time
# (bench/diffusion_quality.py); 256 channels x 20 layers added half.
FULL_DENOISER_CHANNELS = 128
FULL_DENOISER_LAYERS = 12
LCM_HEAD = "diffusion_lcm.pt"
WHISPER_ENCODER = OFFLINE_CONTENT_ENCODER
MetricsCallback = Callable[[int, dict[str, float]], None]
LogCallback = Callable[[str], None]


@dataclass
class StageResult:
    """What a stage produced: a one-line summary and the paths/values worth showing."""

    stage: str
    summary: str
    outputs: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0


def offline_encoder_hint(pretrained_dir: Path | None = None) -> str | None:
    """A note offering ``whisper-tiny-en`` when HuBERT's weights are missing (None when they are there).

    For the CLI's error and the studio's training tab.
    """
    from infer.assets import default_pretrained_dir
    from infer.content.hubert import HUBERT_BASE_FILENAMES
    from infer.content.whisper import ENGLISH_NOTE, INSTALL_HINT, has_whisper_package

    root = Path(pretrained_dir) if pretrained_dir is not None else default_pretrained_dir()
    if any((root / relative).is_file() for relative in HUBERT_BASE_FILENAMES):
        return None
    hint = (
        f"No HuBERT weights in {root}. Without downloading, train with the offline content encoder: "
        f"--content-encoder {WHISPER_ENCODER} ({ENGLISH_NOTE})"
    )
    return hint if has_whisper_package() else f"{hint}; it needs {INSTALL_HINT}"


def _f0_method(settings: TrainSettings) -> str:
    from infer.pitch import default_method

    return settings.f0_method or default_method(settings.pretrained_dir)


def stage_prepare(
    settings: TrainSettings, *, progress: ProgressFn | None, should_stop: StopFn | None
) -> StageResult:
    """Collect and check the dataset, then slice it into training segments."""
    from train.dataset import collect_dataset, prepare_dataset

    if not settings.dataset:
        raise StageError("no dataset given: upload files or a zip, or name a folder")
    manifest = collect_dataset(
        list(settings.dataset),
        settings.work_dir,
        config=settings.slice,
        progress=sub_progress(progress, 0.0, 0.4),
        should_stop=should_stop,
    )
    prepared = prepare_dataset(
        manifest,
        settings.work_dir,
        sample_rate=settings.sample_rate,
        config=settings.slice,
        workers=settings.workers,
        progress=sub_progress(progress, 0.4, 1.0),
        should_stop=should_stop,
    )
    report_dict = manifest.report.to_dict()
    for warning in manifest.report.warnings:
        log.warning("dataset: %s", warning)
    return StageResult(
        "prepare",
        f"{len(prepared.segment_names)} segments, {prepared.duration_s:.1f} s of audio",
        {"report": report_dict, "segments": len(prepared.segment_names), "duration_s": prepared.duration_s},
    )


def stage_extract(
    settings: TrainSettings, *, progress: ProgressFn | None, should_stop: StopFn | None
) -> StageResult:
    """F0 and content features for every segment (cached)."""
    from train.features import extract_features

    device = str(resolve_device(settings.device))
    summary = extract_features(
        settings.work_dir,
        version=settings.version,
        use_f0=settings.use_f0,
        f0_method=_f0_method(settings),
        content_encoder=settings.content_encoder,
        pretrained_dir=settings.pretrained_dir,
        device="cpu" if device == "auto" else device,
        workers=settings.workers,
        progress=progress,
        should_stop=should_stop,
    )
    if summary.failed and not summary.done + summary.skipped:
        raise StageError(f"feature extraction failed for every segment: {summary.failures[0]}")
    return StageResult(
        "extract",
        f"{summary.done} segments extracted, {summary.skipped} cached, {summary.failed} failed",
        {"done": summary.done, "skipped": summary.skipped, "failed": summary.failed},
    )


def _feature_dim(settings: TrainSettings) -> int | None:
    """Width of the extracted content features when it is not the version's HuBERT width."""
    from train.features import feature_dir

    folder = feature_dir(settings.work_dir, settings.version)
    first = next((p for p in sorted(folder.glob("*.npy")) if not p.name.startswith(".")), None)
    if first is None:
        return None
    shape = np.load(first, mmap_mode="r").shape
    width = int(shape[1]) if len(shape) == 2 else None
    return None if width in (None, rvc.content_dim(settings.version)) else width


def _heldout(settings: TrainSettings) -> tuple[str, ...]:
    """Segments set aside for the report card (none without ``use_report``)."""
    from train.report import heldout_names

    return heldout_names(settings.work_dir) if settings.use_report else ()


def vits_config(settings: TrainSettings) -> Any:
    """The VITS trainer's settings for this run.

    Features of another width than the version's (384-d whisper-tiny-en) train from scratch:
    RVC's base files have a 768-wide content projection.
    """
    from train.vits import VitsTrainConfig

    feature_dim = _feature_dim(settings)
    if feature_dim is not None and settings.use_pretrained:
        log.info("%d-dim content features: RVC's base files do not fit, training from scratch", feature_dim)
    return VitsTrainConfig(
        sample_rate=settings.sample_rate,
        version=settings.version,
        use_f0=settings.use_f0,
        size=settings.size,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        save_every_epochs=min(settings.save_every_epochs, settings.epochs),
        max_steps=settings.max_steps,
        use_pretrained=settings.use_pretrained and feature_dim is None,
        feature_dim=feature_dim,
        device=settings.device,
    )


def stage_fit(
    settings: TrainSettings,
    *,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    on_metrics: MetricsCallback | None = None,
) -> StageResult:
    """Train (or resume) the VITS synthesizer; exports land in ``work_dir/weights``."""
    from train.report import ensure_heldout
    from train.vits import FitSources, fit_vits

    heldout = ensure_heldout(settings.work_dir) if settings.use_report else ()
    pth = fit_vits(
        settings.work_dir,
        None,
        settings.name,
        vits_config(settings),
        sources=FitSources(
            pretrained_dir=settings.pretrained_dir,
            content_encoder=settings.content_encoder,
            f0_method=_f0_method(settings) if settings.use_f0 else None,
            exclude_names=heldout,
        ),
        progress=progress,
        should_stop=should_stop,
        on_metrics=on_metrics,
    )
    return StageResult("fit", f"trained model {pth.name}", {"pth": str(pth)})


def index_path(settings: TrainSettings) -> Path | None:
    """The experiment's ``added_*.index``, if built."""
    found = sorted(
        settings.work_dir.glob(f"added_IVF*_Flat_nprobe_1_{settings.name}_{settings.version}.index")
    )
    return found[-1] if found else None


def stage_index(
    settings: TrainSettings, *, progress: ProgressFn | None, should_stop: StopFn | None
) -> StageResult:
    """RVC's IVF-Flat index over every content feature of the training set (held-out clips left out)."""
    from infer.retrieval import index_file_name, index_ivf_count
    from train.features import feature_dir, load_training_features
    from train.index import build_index, write_index

    heldout = set(_heldout(settings))
    if heldout:
        folder = feature_dir(settings.work_dir, settings.version)
        kept = [
            p for p in sorted(folder.glob("*.npy")) if p.stem not in heldout and not p.name.startswith(".")
        ]
        if not kept:
            raise StageError(f"no content features of training segments in {folder}: run `extract` first")
        features = np.concatenate([np.load(p).astype(np.float32, copy=False) for p in kept], axis=0)
    else:
        features = load_training_features(settings.work_dir, settings.version)
    index = build_index(features, progress=progress, should_stop=should_stop)
    n_ivf = index_ivf_count(index)
    for old in settings.work_dir.glob(f"added_IVF*_Flat_nprobe_1_{settings.name}_{settings.version}.index"):
        old.unlink()
    path = settings.work_dir / index_file_name(n_ivf, settings.name, settings.version)
    write_index(index, path)
    return StageResult("index", f"{path.name}: {len(features)} vectors", {"index": str(path)})


def _trained_synthesizer(settings: TrainSettings) -> Any:
    """The full generator (with its posterior encoder) from the newest VITS checkpoint."""
    from infer.safeload import load_checkpoint
    from infer.synthesizer import Synthesizer
    from train.vits import DEFAULT_RUN_DIRNAME, export_synth_config

    run_dir = settings.work_dir / DEFAULT_RUN_DIRNAME
    checkpoints = sorted(run_dir.glob("ckpt_*.pt"))
    if not checkpoints:
        raise StageError("the diffusion stage needs a trained VITS model: run `fit` first")
    state = load_checkpoint(checkpoints[-1])["modules"]["generator"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    synth = Synthesizer(export_synth_config(vits_config(settings)))
    synth.load_state_dict(state, strict=True)
    return synth.eval()


def latent_dataset(
    settings: TrainSettings, *, progress: ProgressFn | None, should_stop: StopFn | None
) -> Any:
    """Posterior latents z0 of every training segment, with content, F0 and speaker conditions."""
    from infer.audio import load_audio
    from train.diffusion import UtteranceFeatures, build_latent_dataset, synthesizer_encoder
    from train.features import list_training_examples
    from train.mel import SpectrogramConfig, linear_spectrogram

    cache = settings.work_dir / "latents.pt"
    synth = _trained_synthesizer(settings)
    heldout = set(_heldout(settings))
    examples = [
        e
        for e in list_training_examples(settings.work_dir, settings.version, use_f0=settings.use_f0)
        if e.name not in heldout
    ]
    spec_config = SpectrogramConfig.for_sample_rate(settings.sample_rate)

    def utterances() -> Any:
        for example in examples:
            wav = torch.from_numpy(load_audio(example.gt_wav_path, settings.sample_rate))
            with torch.no_grad():
                spec = linear_spectrogram(wav.unsqueeze(0), spec_config)[0]
            content = np.repeat(np.load(example.feature_path), 2, axis=0)
            frames = spec.shape[-1]
            f0 = (
                np.load(example.f0_hz_path)
                if example.f0_hz_path is not None
                else np.zeros(frames, np.float32)
            )
            yield UtteranceFeatures(
                name=example.name,
                spec=spec,
                content=torch.from_numpy(content.astype(np.float32)),
                f0_hz=torch.from_numpy(f0.astype(np.float32)),
            )

    encode_fn, speaker = synthesizer_encoder(synth)
    dataset = build_latent_dataset(
        utterances(), encode_fn, speaker, total=len(examples), progress=progress, should_stop=should_stop
    )
    dataset.save(cache)
    return dataset, synth.config


def _denoiser_config(settings: TrainSettings, synth_config: Any, *, use_w: bool) -> Any:
    from infer.diffusion.denoiser import DenoiserConfig

    small = settings.size == "tiny"
    return DenoiserConfig(
        latent_channels=synth_config.inter_channels,
        content_dim=synth_config.content_dim,
        gin_channels=synth_config.gin_channels,
        residual_channels=32 if small else FULL_DENOISER_CHANNELS,
        n_layers=4 if small else FULL_DENOISER_LAYERS,
        use_w_embedding=use_w,
    )


def stage_diffusion(
    settings: TrainSettings,
    *,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    on_metrics: MetricsCallback | None = None,
) -> StageResult:
    """Train the teacher latent diffusion model on the trained voice's posterior latents."""
    from train.diffusion import DiffusionTrainer
    from train.diffusion_edm import EDMTrainer
    from train.trainer import TrainerConfig

    dataset, synth_config = latent_dataset(
        settings, progress=sub_progress(progress, 0.0, 0.1), should_stop=should_stop
    )
    head_path = settings.work_dir / TEACHER_HEAD
    is_edm = settings.diffusion_parameterisation == EDM_PARAMETERISATION
    trainer = (EDMTrainer if is_edm else DiffusionTrainer)(
        TrainerConfig(
            run_dir=settings.work_dir / ("diffusion_edm" if is_edm else "diffusion"),
            epochs=settings.diffusion_epochs,
            save_every_epochs=max(1, settings.diffusion_epochs // 4),
            max_steps=settings.diffusion_max_steps,
        ),
        dataset,
        denoiser_config=_denoiser_config(settings, synth_config, use_w=False),
        device=_device(settings),
        head_path=head_path,
        head_metadata={"model": settings.name},
        progress=sub_progress(progress, 0.1, 1.0),
        should_stop=should_stop,
        on_metrics=on_metrics,
    )
    trainer.resume()
    trainer.fit()
    trainer.export_head().save(head_path)  # also when a finished run is resumed
    kind = settings.diffusion_parameterisation
    return StageResult(
        "diffusion", f"{kind} teacher head after {trainer.step} steps", {"head": str(head_path)}
    )


def stage_distill(
    settings: TrainSettings,
    *,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    on_metrics: MetricsCallback | None = None,
) -> StageResult:
    """Distil the teacher into a latent consistency model (1 to 4 steps)."""
    from infer.diffusion.head import load_head
    from train.diffusion import LatentDataset
    from train.distill import DistillTrainer
    from train.trainer import TrainerConfig

    teacher_path = settings.work_dir / TEACHER_HEAD
    if not teacher_path.is_file():
        raise StageError("distillation needs the teacher head: run the `diffusion` stage first")
    teacher = load_head(teacher_path)
    if teacher.parameterisation == EDM_PARAMETERISATION:
        raise StageError(
            "LCM distillation needs an eps teacher, but this experiment's teacher is EDM: use the cm or "
            "acdd stage, or retrain it with `python -m train diffusion --diffusion-parameterisation eps`"
        )
    cache = settings.work_dir / "latents.pt"
    if cache.is_file():
        dataset = LatentDataset.load(cache)
    else:
        dataset, _ = latent_dataset(settings, progress=None, should_stop=should_stop)
    head_path = settings.work_dir / LCM_HEAD
    trainer = DistillTrainer(
        TrainerConfig(
            run_dir=settings.work_dir / "distill",
            epochs=settings.distill_epochs,
            save_every_epochs=max(1, settings.distill_epochs // 4),
            max_steps=settings.distill_max_steps,
        ),
        dataset,
        teacher,
        device=_device(settings),
        head_path=head_path,
        head_metadata={"model": settings.name},
        progress=progress,
        should_stop=should_stop,
        on_metrics=on_metrics,
    )
    trainer.resume()
    trainer.fit()
    return StageResult("distill", f"LCM head after {trainer.step} steps", {"head": str(head_path)})


def _device(settings: TrainSettings) -> str:
    return str(resolve_device(settings.device))


def stage_report(
    settings: TrainSettings,
    *,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    config: Any | None = None,
) -> StageResult:
    """The report card: probe clips converted by every saved checkpoint and measured (``report.json``).

    ``config`` is a :class:`train.report.ReportConfig` (None = its defaults); it runs on the run's device.
    Without any probe clip (a dataset of under 10 segments and no probe-phrase corpus) the stage
    is skipped with a warning, and an older card is removed, so that export is not blocked.
    """
    from train.dataset import load_manifest
    from train.report import PREVIEW_DIRNAME, REPORT_FILENAME, NoProbeError, ReportConfig, build_report

    try:
        duration_s = load_manifest(settings.work_dir).report.duration_s
    except (TimbreError, OSError, KeyError, AttributeError):
        duration_s = None
    budget = {
        "dataset_duration_s": duration_s,
        "size": settings.size,
        "sample_rate": settings.sample_rate,
        "epochs": settings.epochs,
        "max_steps": settings.max_steps,
        "batch_size": settings.batch_size,
        "use_pretrained": settings.use_pretrained,
        "device": _device(settings),
    }
    try:
        result = build_report(
            settings.work_dir,
            settings.name,
            config=replace(config or ReportConfig(), device=_device(settings)),
            pretrained_dir=settings.pretrained_dir,
            f0_method=_f0_method(settings) if settings.use_f0 else None,
            budget=budget,
            progress=progress,
            should_stop=should_stop,
        )
    except NoProbeError as exc:
        log.warning("no report card: %s", exc)
        (settings.work_dir / REPORT_FILENAME).unlink(missing_ok=True)
        shutil.rmtree(settings.work_dir / PREVIEW_DIRNAME, ignore_errors=True)
        return StageResult("report", f"skipped: {exc}", {})
    best = result["best"]
    similarity = best["mean"]["similarity_to_target"]
    shown = "n/a" if similarity is None else f"{similarity:.3f}"
    return StageResult(
        "report",
        f"{len(result['per_checkpoint'])} checkpoints x {len(result['probes'])} probes; best "
        f"{best['checkpoint']} (similarity to target {shown})",
        {"report": str(settings.work_dir / "report.json"), "best": best["checkpoint"]},
    )


def stage_export(
    settings: TrainSettings, *, progress: ProgressFn | None, should_stop: StopFn | None
) -> StageResult:
    """Install the model into ``models_dir/<name>/`` and write the shareable zip."""
    from infer.catalog import validate_model_name
    from infer.library import build_model_metadata, export_model_zip
    from infer.models import load_voice_model
    from train.dataset import load_manifest
    from train.vits import DEFAULT_EXPORT_DIRNAME

    name = validate_model_name(settings.name)
    trained = settings.work_dir / DEFAULT_EXPORT_DIRNAME / f"{name}.pth"
    if not trained.is_file():
        raise StageError(f"no trained model at {trained}: run `fit` first")
    check_stop(should_stop)
    report(progress, 0.1, "installing the model")
    model = load_voice_model(trained)
    target = settings.models_dir / name
    staging = settings.models_dir / f".export-{name}-{time.time_ns()}"
    staging.mkdir(parents=True)
    try:
        shutil.copy2(trained, staging / f"{name}.pth")
        index = index_path(settings)
        if index is not None:
            shutil.copy2(index, staging / index.name)
        for head in exportable_heads(settings.work_dir):
            shutil.copy2(head, staging / head.name)
        student = exportable_student(settings)
        if student is not None:
            shutil.copy2(student, staging / student.name)
        if (settings.work_dir / "report.json").is_file():
            shutil.copy2(settings.work_dir / "report.json", staging / "report.json")
            from train.report import PREVIEW_DIRNAME

            if (settings.work_dir / PREVIEW_DIRNAME).is_dir():
                shutil.copytree(settings.work_dir / PREVIEW_DIRNAME, staging / PREVIEW_DIRNAME)
        duration = None
        try:
            duration = load_manifest(settings.work_dir).report.duration_s
        except (TimbreError, OSError, KeyError, AttributeError):
            log.info(
                "no dataset manifest in %s; the model's metadata will lack the dataset duration",
                settings.work_dir,
            )
        metadata = build_model_metadata(model, name=name)
        metadata.update(
            {
                "f0_method": _f0_method(settings) if settings.use_f0 else None,
                "content_encoder": settings.content_encoder,
                "dataset_duration_s": duration,
                "has_diffusion": (staging / TEACHER_HEAD).is_file(),
                "has_live_student": student is not None,
            }
        )
        atomic_write_text(staging / "timbre.json", json.dumps(metadata, indent=2))
        if target.exists():
            backup = settings.models_dir / f".replaced-{name}-{time.time_ns()}"
            target.rename(backup)
            staging.rename(target)
            shutil.rmtree(backup)
        else:
            staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    report(progress, 0.6, "writing the model zip")
    zip_path = export_model_zip(settings.models_dir, name, dest=settings.work_dir)
    report(progress, 1.0, "exported")
    return StageResult(
        "export",
        f"installed {target} and wrote {zip_path.name}",
        {"model_dir": str(target), "zip": str(zip_path)},
    )


def _stage_live_student(
    settings: TrainSettings,
    *,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    on_metrics: MetricsCallback | None = None,
) -> StageResult:
    """The live student (see :mod:`train.live_student`)."""
    from train.live_student import stage_live_student

    return stage_live_student(settings, progress=progress, should_stop=should_stop, on_metrics=on_metrics)


def exportable_student(settings: TrainSettings) -> Path | None:
    """``<work>/live_student.pt`` when it was distilled from the current voice (else None, with a warning)."""
    from infer.student import STUDENT_FILENAME, load_student
    from train.live_student import voice_fingerprint

    path = settings.work_dir / STUDENT_FILENAME
    if not path.is_file():
        return None
    if load_student(path).metadata.get("teacher_sha256") != voice_fingerprint(settings):
        log.warning("%s was distilled from another version of the voice: not exported", path.name)
        return None
    return path


_STAGE_FUNCTIONS: dict[str, Callable[..., StageResult]] = {
    "prepare": stage_prepare,
    "extract": stage_extract,
    "fit": stage_fit,
    "index": stage_index,
    "diffusion": stage_diffusion,
    "distill": stage_distill,
    "cm": stage_cm,
    "acdd": stage_acdd,
    "live-student": _stage_live_student,
    "report": stage_report,
    "export": stage_export,
}
_WITH_METRICS = frozenset({"fit", "diffusion", "distill", "cm", "acdd", "live-student"})


def _prefixed_metrics(on_metrics: MetricsCallback | None, stage: str) -> MetricsCallback | None:
    """The diffusion stages count steps from 1 again: name their metrics ``<stage>/<key>``."""
    if on_metrics is None or stage == "fit":
        return on_metrics

    def forward(step: int, row: dict[str, float]) -> None:
        on_metrics(step, {f"{stage}/{key}": value for key, value in row.items()})

    return forward


def stages_for_run(settings: TrainSettings) -> list[str]:
    """The stages ``run`` executes for these settings, in order."""
    chosen = ["prepare", "extract", "fit", "index"]
    if settings.use_diffusion:
        chosen.append("diffusion")
    if settings.use_distillation:
        chosen.append("distill")
    if settings.use_cm:
        chosen.append("cm")
    if settings.use_acdd:
        chosen.append("acdd")
    if settings.use_live_student:
        chosen.append("live-student")
    if settings.use_report:
        chosen.append("report")
    chosen.append("export")
    return chosen


def run_stages(
    settings: TrainSettings,
    stages: Sequence[str],
    *,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_metrics: MetricsCallback | None = None,
    on_log: LogCallback | None = None,
) -> list[StageResult]:
    """Run ``stages`` in order; each reports progress on its share of the whole."""
    unknown = [s for s in stages if s not in _STAGE_FUNCTIONS]
    if unknown:
        raise StageError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    settings.save()
    weights = {
        "prepare": 1.0,
        "extract": 2.0,
        "fit": 10.0,
        "index": 0.5,
        "diffusion": 4.0,
        "distill": 3.0,
        "cm": 3.0,
        "acdd": 3.0,
        "live-student": 4.0,
        "report": 2.0,
        "export": 0.3,
    }
    total = sum(weights[s] for s in stages)
    done = 0.0
    results = []
    for stage in stages:
        share = weights[stage] / total
        stage_progress = sub_progress(progress, done, done + share)

        def labelled(
            fraction: float, message: str, stage: str = stage, inner: ProgressFn | None = stage_progress
        ) -> None:
            report(inner, fraction, f"{stage}: {message}")

        started = time.perf_counter()
        kwargs: dict[str, Any] = {"progress": labelled if progress else None, "should_stop": should_stop}
        if stage in _WITH_METRICS:
            kwargs["on_metrics"] = _prefixed_metrics(on_metrics, stage)
        result = _STAGE_FUNCTIONS[stage](settings, **kwargs)
        result.elapsed_s = time.perf_counter() - started
        message = f"{stage}: {result.summary} ({result.elapsed_s:.1f} s)"
        log.info(message)
        if on_log is not None:
            on_log(message)
        results.append(result)
        done += share
    report(progress, 1.0, "all stages done")
    return results


def run_stage(
    params: dict[str, Any],
    progress: ProgressFn,
    should_stop: StopFn,
    log_line: LogCallback,
    metrics: MetricsCallback,
) -> dict[str, Any]:
    """The studio's job-worker entry point (see :mod:`ui.jobs`): ``params['stage']`` names the stage(s)."""
    params = dict(params)
    stage = params.pop("stage", "run_all")
    params.pop("resume", None)
    experiment = params.pop("experiment", None)
    if experiment is not None:
        params.setdefault("name", experiment)
    settings = TrainSettings.from_dict(params)
    stages = stages_for_run(settings) if stage == "run_all" else [stage]
    results = run_stages(
        settings, stages, progress=progress, should_stop=should_stop, on_metrics=metrics, on_log=log_line
    )
    return {r.stage: {"summary": r.summary, **r.outputs} for r in results}


def with_overrides(settings: TrainSettings, **overrides: Any) -> TrainSettings:
    """A copy of ``settings`` with some fields replaced (validated again)."""
    return replace(settings, **overrides)
