"""The training stages of the EDM family: the consistency student (``cm``) and ACDD (``acdd``).

Both read the experiment's EDM teacher (``diffusion_teacher.pt`` trained with
``diffusion_parameterisation='edm'``) and its cached latent dataset, train from their own run
folder (resumable) and export their head beside it; :func:`train.pipeline.stage_export` copies
every head of :data:`infer.options.HEADS` into the model folder and the zip.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from infer.diffusion.head import HEAD_FILENAMES, DiffusionHead, load_head
from infer.options import ACDD_HEAD, CM_HEAD, EDM_PARAMETERISATION, TEACHER_HEAD
from infer.progress import ProgressFn, StopFn, sub_progress
from train.trainer import MetricsFn, TrainerConfig

__all__ = ["exportable_heads", "stage_acdd", "stage_cm"]

log = logging.getLogger(__name__)


def _edm_teacher(settings: Any, stage: str) -> DiffusionHead:
    from train.pipeline import StageError

    path = settings.work_dir / HEAD_FILENAMES[TEACHER_HEAD]
    if not path.is_file():
        raise StageError(
            f"the {stage} stage needs the EDM teacher: run `python -m train diffusion "
            "--diffusion-parameterisation edm` first"
        )
    head = load_head(path)
    if head.parameterisation != EDM_PARAMETERISATION:
        raise StageError(
            f"the {stage} stage needs an EDM teacher, but {path.name} is "
            f"{head.parameterisation}-parameterised; "
            "retrain it with `python -m train diffusion --diffusion-parameterisation edm` (or use `distill` "
            "for an LCM student of this teacher)"
        )
    return head


def exportable_heads(work_dir: Path) -> list[Path]:
    """The head files of ``work_dir`` to ship: the teacher, and students distilled from that teacher.

    A student whose ``teacher_sha256`` is not the current teacher's (left over from a teacher of
    the other parameterisation, or from before a retraining) is left out with a warning.
    """
    from train.distill import teacher_fingerprint

    teacher_path = work_dir / HEAD_FILENAMES[TEACHER_HEAD]
    if not teacher_path.is_file():
        return []
    fingerprint = teacher_fingerprint(load_head(teacher_path))
    chosen = [teacher_path]
    for kind, filename in HEAD_FILENAMES.items():
        path = work_dir / filename
        if kind == TEACHER_HEAD or not path.is_file():
            continue
        if load_head(path).metadata.get("teacher_sha256") == fingerprint:
            chosen.append(path)
        else:
            log.warning("%s was distilled from another teacher head: not exported (train it again)", filename)
    return chosen


def _dataset(settings: Any, should_stop: StopFn | None) -> Any:
    from train.diffusion import LatentDataset
    from train.pipeline import latent_dataset

    cache = settings.work_dir / "latents.pt"
    if cache.is_file():
        return LatentDataset.load(cache)
    return latent_dataset(settings, progress=None, should_stop=should_stop)[0]


def _loop(settings: Any, name: str, epochs: int, max_steps: int) -> TrainerConfig:
    return TrainerConfig(
        run_dir=settings.work_dir / name,
        epochs=epochs,
        save_every_epochs=max(1, epochs // 4),
        max_steps=max_steps,
    )


def stage_cm(
    settings: Any,
    *,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    on_metrics: MetricsFn | None = None,
) -> Any:
    """Distil the EDM teacher into a consistency model (1 to 4 steps)."""
    from train.distill_cm import ConsistencyTrainer
    from train.pipeline import StageResult, _device

    teacher = _edm_teacher(settings, "cm")
    head_path = settings.work_dir / HEAD_FILENAMES[CM_HEAD]
    trainer = ConsistencyTrainer(
        _loop(settings, "cm", settings.cm_epochs, settings.cm_max_steps),
        _dataset(settings, should_stop),
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
    return StageResult("cm", f"consistency head after {trainer.step} steps", {"head": str(head_path)})


def voice_discriminator(settings: Any) -> Any:
    """The multi-period discriminator of the experiment's VITS run (its newest checkpoint's weights).

    A fresh one of the run's configuration when the run kept no discriminator state.
    """
    from infer.nn.discriminators import MultiPeriodDiscriminator
    from infer.safeload import load_checkpoint
    from train.pipeline import vits_config
    from train.vits import DEFAULT_RUN_DIRNAME

    discriminator = MultiPeriodDiscriminator(vits_config(settings).discriminator_config())
    checkpoints = sorted((settings.work_dir / DEFAULT_RUN_DIRNAME).glob("ckpt_*.pt"))
    if not checkpoints:
        log.info("no VITS checkpoint: ACDD starts a fresh discriminator")
        return discriminator
    modules = load_checkpoint(checkpoints[-1]).get("modules", {})
    state = modules.get("discriminator")
    if state is None:
        log.info("%s has no discriminator: ACDD starts a fresh one", checkpoints[-1].name)
        return discriminator
    discriminator.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    log.info("ACDD discriminator starts from %s", checkpoints[-1].name)
    return discriminator


def stage_acdd(
    settings: Any,
    *,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    on_metrics: MetricsFn | None = None,
) -> Any:
    """Train the adversarial one-step student (ACDD) of the EDM teacher."""
    from train.distill_acdd import AcddTrainer
    from train.pipeline import StageResult, _device, _trained_synthesizer

    teacher = _edm_teacher(settings, "acdd")
    dataset = _dataset(settings, should_stop)
    head_path = settings.work_dir / HEAD_FILENAMES[ACDD_HEAD]
    trainer = AcddTrainer(
        _loop(settings, "acdd", settings.acdd_epochs, settings.acdd_max_steps),
        dataset,
        teacher,
        synthesizer=_trained_synthesizer(settings),
        discriminator=voice_discriminator(settings),
        device=_device(settings),
        head_path=head_path,
        head_metadata={"model": settings.name},
        progress=sub_progress(progress, 0.0, 1.0),
        should_stop=should_stop,
        on_metrics=on_metrics,
    )
    trainer.resume()
    trainer.fit()
    return StageResult("acdd", f"ACDD head after {trainer.step} steps", {"head": str(head_path)})
