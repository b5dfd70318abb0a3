"""VITS training of RVC voice models (RVC's ``train.py``), on the shared :class:`~train.trainer.Trainer`.

The data are the folders written by :mod:`train.dataset` and :mod:`train.features`: model-rate
audio in ``0_gt_wavs``, 50 fps content features, and (pitch models) coarse and Hz F0 at 100 fps.
One step is RVC's: the generator runs on the whole utterances and decodes a random window of
``segment_size`` samples; the multi-period discriminator is updated on (real window, detached
fake) with the least-squares GAN loss; then the generator is updated with

    loss = adv + fm + c_mel * L1(mel(real window), mel(fake)) + c_kl * KL(posterior || prior)

where ``adv = sum_k mean((1 - D_k(fake))^2)`` and ``fm = 2 * sum mean|fmap_real - fmap_fake|``.
Both use AdamW(lr 1e-4, betas (0.8, 0.99), eps 1e-9) and an ExponentialLR(0.999875) stepped once
per epoch, and AdamW's default weight decay 0.01. The global gradient norms are logged (and
clipped only when ``grad_clip_norm`` is set; RVC only measures them). Batches come from RVC's
length buckets (100..900 frames) in an order fixed by the epoch, which is what lets the base
resume exactly in the middle of an epoch (``bucketing='exact'`` is Timbre's variant). One step
equals RVC's to float32 rounding: ``tests/test_train_golden.py`` replays the reference step.

Training starts from RVC's pretrained pair (``f0G40k.pth`` / ``f0D40k.pth`` and family, read
strictly as ``{'model': state_dict}``) when present, else from scratch with a loud warning. At
every checkpoint (period, end, cancel) the generator is exported in RVC's inference format with
Timbre's metadata: ``<name>_e<epoch>_s<step>.pth`` and ``<name>.pth`` (the latest).

When the caller has initialised ``torch.distributed`` (one process per device), both networks
are wrapped in DistributedDataParallel, the bucket sampler is sharded by rank, and only rank 0
writes checkpoints, exports and the metrics log. Each process checks its own ``should_stop``,
so a cancel request must reach every rank.

Modules: :mod:`~train.vits.config` (settings, networks), :mod:`~train.vits.data` (dataset,
collate, buckets), :mod:`~train.vits.losses` (losses, the step trace),
:mod:`~train.vits.pretrained` (base files), :mod:`~train.vits.trainer` (the trainer) and
:mod:`~train.vits.fit` (``fit_vits``: start or resume a run).
"""

from train.vits.config import (
    RVC_EXPORT_SEGMENT_FRAMES,
    VitsTrainConfig,
    build_networks,
    export_synth_config,
)
from train.vits.data import (
    BUCKET_BOUNDARIES_FRAMES,
    MAX_FRAMES,
    RVC_BUCKET_BOUNDARIES_FRAMES,
    VitsBatch,
    VitsDataError,
    VitsDataset,
    VitsItem,
    bucket_batches,
    collate,
)
from train.vits.fit import RUN_INFO_FILENAME, FitSources, fit_vits
from train.vits.losses import (
    FORWARD_NAMES,
    STEP_SCALARS,
    StepForward,
    StepTrace,
    discriminator_loss,
    discriminator_losses,
    feature_matching_loss,
    generator_adversarial_loss,
    generator_adversarial_losses,
    kl_loss,
)
from train.vits.pretrained import (
    SPEAKER_TABLE_KEY,
    PretrainedError,
    PretrainedLoad,
    load_pretrained_module,
    resolve_pretrained,
)
from train.vits.trainer import (
    DEFAULT_CONTENT_ENCODER,
    DEFAULT_EXPORT_DIRNAME,
    DEFAULT_RUN_DIRNAME,
    VitsTrainer,
)

__all__ = [
    "BUCKET_BOUNDARIES_FRAMES",
    "DEFAULT_CONTENT_ENCODER",
    "DEFAULT_EXPORT_DIRNAME",
    "DEFAULT_RUN_DIRNAME",
    "FORWARD_NAMES",
    "MAX_FRAMES",
    "RUN_INFO_FILENAME",
    "RVC_BUCKET_BOUNDARIES_FRAMES",
    "RVC_EXPORT_SEGMENT_FRAMES",
    "SPEAKER_TABLE_KEY",
    "STEP_SCALARS",
    "FitSources",
    "PretrainedError",
    "PretrainedLoad",
    "StepForward",
    "StepTrace",
    "VitsBatch",
    "VitsDataError",
    "VitsDataset",
    "VitsItem",
    "VitsTrainConfig",
    "VitsTrainer",
    "bucket_batches",
    "build_networks",
    "collate",
    "discriminator_loss",
    "discriminator_losses",
    "export_synth_config",
    "feature_matching_loss",
    "fit_vits",
    "generator_adversarial_loss",
    "generator_adversarial_losses",
    "kl_loss",
    "load_pretrained_module",
    "resolve_pretrained",
]
