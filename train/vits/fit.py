"""Training a voice model on a prepared work folder: :func:`fit_vits` (start or resume, run info)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from infer.progress import ProgressFn, StopFn, report
from train.features import list_training_examples
from train.trainer import MetricsFn
from train.vits.config import VitsTrainConfig
from train.vits.data import VitsDataError
from train.vits.pretrained import resolve_pretrained
from train.vits.trainer import (
    DEFAULT_CONTENT_ENCODER,
    DEFAULT_EXPORT_DIRNAME,
    DEFAULT_RUN_DIRNAME,
    VitsTrainer,
)

RUN_INFO_FILENAME = "vits_run.json"
"""Written into the run folder: the settings, the base files and what they gave, the dataset."""
FEATURES_STATE_FILENAME = "features_state.json"


def _features_settings(work_dir: Path) -> tuple[str | None, str | None]:
    """(content encoder, F0 method) recorded by the feature extraction, when readable."""
    try:
        state = json.loads((work_dir / FEATURES_STATE_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    encoder = (state.get("content") or {}).get("encoder") if isinstance(state, dict) else None
    method = (state.get("f0") or {}).get("method") if isinstance(state, dict) else None
    if isinstance(encoder, str):
        kind, _, rest = encoder.partition(":")
        encoder = rest if kind == "name" else Path(rest.split(":")[0]).stem
    return (encoder if isinstance(encoder, str) else None), (method if isinstance(method, str) else None)


@dataclass(frozen=True)
class FitSources:
    """What a fit reads besides the work folder.

    Attributes:
        pretrained_dir: where RVC's base files are looked up; None = the default folder.
        content_encoder: recorded in the metadata; None = what the feature extraction recorded.
        f0_method: recorded in the metadata; None = what the feature extraction recorded.
        exclude_names: segments left out of training (e.g. the report card's held-out clips).
    """

    pretrained_dir: str | os.PathLike[str] | None = None
    content_encoder: str | None = None
    f0_method: str | None = None
    exclude_names: Sequence[str] = ()


def fit_vits(
    work_dir: str | os.PathLike[str],
    models_dir: str | os.PathLike[str] | None = None,
    name: str = "model",
    config: VitsTrainConfig | None = None,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    sources: FitSources | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_metrics: MetricsFn | None = None,
) -> Path:
    """Train (or resume training) a voice model on a prepared work folder.

    Args:
        work_dir: folder with ``0_gt_wavs`` and the features (:mod:`train.features`).
        models_dir: exports go to ``models_dir/<name>/``; None = ``work_dir/weights``.
        name: the model's name.
        config: training settings (defaults: RVC's v2 40 kHz pitch model).
        run_dir: checkpoints and metrics; None = ``work_dir/vits``. An existing run there is
            resumed exactly; a checkpoint that cannot be restored raises ResumeError.
        sources: the base files' folder, what to record in the metadata, held-out segments.
        progress: receives (fraction, message), ETA included.
        should_stop: cancel request; a checkpoint and an export are written before Cancelled is raised.
        on_metrics: receives (step, metrics) per logged step.

    Returns:
        Path of the final ``<name>.pth``.

    Raises:
        FeatureError / VitsDataError: missing or unusable data.
        PretrainedError / AssetError: base files that do not fit or are damaged.
        ResumeError: the existing run cannot be continued.
        Cancelled: ``should_stop`` returned True.
    """
    from infer.catalog import validate_model_name

    config = config or VitsTrainConfig()
    sources = sources or FitSources()
    exclude_names, pretrained_dir = sources.exclude_names, sources.pretrained_dir
    name = validate_model_name(name)
    work = Path(work_dir)
    report(progress, 0.0, "reading the training data")
    examples = list_training_examples(work, config.version, use_f0=config.use_f0)
    if exclude_names:
        excluded = set(exclude_names)
        examples = [e for e in examples if e.name not in excluded]
        if not examples:
            raise VitsDataError("every training segment is held out; use a larger dataset")
    recorded_encoder, recorded_f0 = _features_settings(work)
    export_dir = Path(models_dir) / name if models_dir is not None else work / DEFAULT_EXPORT_DIRNAME
    trainer = VitsTrainer(
        config,
        examples,
        run_dir=Path(run_dir) if run_dir is not None else work / DEFAULT_RUN_DIRNAME,
        export_dir=export_dir,
        name=name,
        content_encoder=sources.content_encoder or recorded_encoder or DEFAULT_CONTENT_ENCODER,
        f0_method=sources.f0_method or recorded_f0,
        progress=progress,
        should_stop=should_stop,
        on_metrics=on_metrics,
    )
    if trainer.resume():
        report(progress, 0.0, f"resumed at epoch {trainer.epoch}, step {trainer.step}")
    else:
        g_path, d_path, warning = resolve_pretrained(config, pretrained_dir)
        trainer.load_pretrained(g_path, d_path)
        if warning:
            trainer.warn(warning)
    if trainer.rank == 0:
        _write_run_info(trainer)
    trainer.fit()
    latest = trainer.finish()
    return latest if latest is not None else export_dir / f"{name}.pth"


def _write_run_info(trainer: VitsTrainer) -> None:
    from infer.fsutil import atomic_write_text

    info = {
        "name": trainer.name,
        "config": trainer.vits_config.to_dict(),
        "export_dir": str(trainer.export_dir),
        "trained_from": trainer.trained_from,
        "pretrained": [
            {"role": p.role, "path": str(p.path), "loaded": len(p.loaded), "new": list(p.new)}
            for p in trainer.pretrained_loads
        ],
        "warnings": trainer.warnings,
        "segments": len(trainer.dataset),
        "dataset_duration_s": trainer.dataset.duration_s,
        "batches_per_epoch": trainer.batches_per_epoch(),
    }
    trainer.config.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(trainer.config.run_dir / RUN_INFO_FILENAME, json.dumps(info, indent=1))
