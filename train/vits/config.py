"""Settings of a VITS run: :class:`VitsTrainConfig` and the networks it describes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from infer import rvc
from infer.devices import DeviceError, parse_device_name
from infer.nn.configs import ConfigError, check_config_keys
from infer.nn.discriminators import DiscriminatorConfig, MultiPeriodDiscriminator
from infer.options import (
    BUCKETINGS,
    MODEL_SAMPLE_RATES_HZ,
    MODEL_SIZES,
    TRAIN_PRECISIONS,
    TRAIN_SAMPLE_RATES_HZ,
    names,
)
from infer.synthesizer import SynthConfig, Synthesizer
from train.mel import SpectrogramConfig

RVC_EXPORT_SEGMENT_FRAMES = 32
"""RVC writes 32 into the inference file's config whatever the training window was."""
# RVC's train.segment_size (samples) per (version, rate); v2 at 40 kHz uses the v1 config.
_SEGMENT_SAMPLES: dict[tuple[str, int], int] = {
    ("v1", 32000): 12800,
    ("v1", 40000): 12800,
    ("v1", 48000): 11520,
    ("v2", 32000): 12800,
    ("v2", 40000): 12800,
    ("v2", 48000): 17280,
}
TINY_SEGMENT_FRAMES = 12
# Tiny decoder at 16 kHz (10 ms hop): rates multiply to 160 and keep every trailing product even.
_TINY_16K_DECODER = ((10, 4, 4), (20, 8, 8))
TINY_DISCRIMINATOR_PERIODS = (2,)
TINY_DISCRIMINATOR_KERNEL = 1
TINY_DISCRIMINATOR_WIDTH_DIVISOR = 16


@dataclass(frozen=True)
class VitsTrainConfig:
    """Settings of a VITS training run (RVC's defaults unless noted).

    Attributes:
        sample_rate: model rate in Hz (32000, 40000, 48000; 16000 only for ``size='tiny'``).
        version: ``'v1'`` (256-dim content) or ``'v2'`` (768-dim content).
        use_f0: train a pitch model (NSF decoder, coarse-pitch embedding).
        size: ``'full'`` (RVC's real networks) or ``'tiny'`` (small networks for tests/benchmarks).
        batch_size: utterances per step (per process under DDP).
        epochs: epochs to reach.
        save_every_epochs: checkpoint + export period (also at the end and on cancel).
        keep_last: training checkpoints kept.
        log_every_steps: metrics period.
        max_steps: stop after this many steps in total (0 = no limit).
        learning_rate: AdamW learning rate of both networks.
        betas: AdamW betas.
        eps: AdamW epsilon.
        lr_decay: ExponentialLR gamma, stepped once per epoch.
        c_mel: weight of the mel L1 loss.
        c_kl: weight of the KL loss.
        segment_size: training window in samples (a multiple of the hop); None = RVC's value
            for the version and rate (12800 at 40 kHz), or 12 frames for ``tiny``.
        weight_decay: AdamW's decoupled weight decay of both networks. RVC does not set it, so
            torch's default 0.01 applies there; that is the default here too.
        grad_clip_norm: global L2 norm both networks' gradients are clipped to; None (the
            default, as RVC, whose ``clip_grad_value_(..., None)`` only measures the norm) = no
            clipping. A value such as 1000, far above the norms of healthy steps (tens to a few
            hundred), only stops rare blow-ups. The norms are logged either way.
        discriminator_start_step: steps trained on the mel and KL losses alone before the
            discriminator and the adversarial/feature-matching losses start (0 = from the first
            step, as RVC; a warm-up helps runs from scratch and makes quick overfit checks cheap).
        precision: ``'fp32'``, ``'fp16'`` (autocast + GradScaler) or ``'bf16'`` (autocast);
            mixed precision applies on CUDA only, CPU runs in fp32.
        device: ``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
        pretrained_g: base generator file; None = look up RVC's file for the preset.
        pretrained_d: base discriminator file; None = look up RVC's file for the preset.
        use_pretrained: look up RVC's base files when the paths are None (False = from scratch).
        use_epoch_exports: also keep ``<name>_e<epoch>_s<step>.pth`` at every save point.
        feature_dim: content-feature width when it is not the version's HuBERT width (384 for
            whisper-tiny-en, stored in the v2 layout); None = 256 (v1) or 768 (v2).
        generator: explicit generator hyper-parameters instead of the ``size`` preset (e.g. the
            narrow networks of the training goldens); its sample rate, content width and pitch
            setting must be the run's, its ``segment_size`` is replaced by the training window.
        discriminator: explicit discriminator periods and widths instead of the preset.
        speakers: rows of the generator's speaker table; None = the preset's (RVC's 109 for
            full size). With another count the base file's table is not used (it is reported).
        bucketing: how batches are grouped and ordered (both resume exactly mid-epoch):
            ``'rvc'`` (default) is RVC's ``DistributedBucketSampler``: an item's length is its
            wav file size // (3 * hop), items outside the (100, 900] buckets are left out, and
            the order depends on the epoch alone (RVC's loader also shuffles its file list, which
            is not reproducible, and multiplies the batch by the GPU count). ``'exact'`` is
            Timbre's: exact frame counts, every item at least one window long is used (longer
            than 900 frames in the last bucket), and the order depends on (seed, epoch), so
            other seeds see other orders.
        seed: seeds initialisation and noise (and the batch order with ``bucketing='exact'``).
        num_workers: data-loading worker processes (0 = load in the training process).
    """

    sample_rate: int = 40000
    version: str = "v2"
    use_f0: bool = True
    size: str = "full"
    batch_size: int = 4
    epochs: int = 20
    save_every_epochs: int = 5
    keep_last: int = 2
    log_every_steps: int = 1
    max_steps: int = 0
    learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.8, 0.99)
    eps: float = 1e-9
    lr_decay: float = 0.999875
    c_mel: float = 45.0
    c_kl: float = 1.0
    segment_size: int | None = None
    weight_decay: float = 0.01
    grad_clip_norm: float | None = None
    discriminator_start_step: int = 0
    precision: str = "fp32"
    device: str = "auto"
    pretrained_g: str | None = None
    pretrained_d: str | None = None
    use_pretrained: bool = True
    use_epoch_exports: bool = True
    feature_dim: int | None = None
    generator: SynthConfig | None = None
    discriminator: DiscriminatorConfig | None = None
    speakers: int | None = None
    bucketing: str = "rvc"
    seed: int = 1234
    num_workers: int = 0

    def __post_init__(self) -> None:
        def bad(message: str) -> ConfigError:
            return ConfigError(f"VitsTrainConfig: {message}")

        if self.version not in rvc.LAYOUTS:
            raise bad(f"version must be one of {rvc.versions()}, got {self.version!r}")
        if self.size not in MODEL_SIZES:
            raise bad(f"size must be one of {names(MODEL_SIZES)}, got {self.size!r}")
        allowed_rates = TRAIN_SAMPLE_RATES_HZ if self.size == "tiny" else MODEL_SAMPLE_RATES_HZ
        if self.sample_rate not in allowed_rates:
            raise bad(
                f"sample_rate must be one of {allowed_rates} for size {self.size!r}, got {self.sample_rate}"
            )
        for name in ("use_f0", "use_pretrained", "use_epoch_exports"):
            if not isinstance(getattr(self, name), bool):
                raise bad(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("batch_size", "epochs", "save_every_epochs", "keep_last", "log_every_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(f"{name} must be a positive int, got {value!r}")
        for name in ("max_steps", "num_workers", "seed", "discriminator_start_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(f"{name} must be an int >= 0, got {value!r}")
        if self.speakers is not None and (
            isinstance(self.speakers, bool) or not isinstance(self.speakers, int) or self.speakers < 1
        ):
            raise bad(f"speakers must be a positive int or None, got {self.speakers!r}")
        dim = self.feature_dim
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise bad(f"feature_dim must be a positive int or None, got {self.feature_dim!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise bad(f"betas must be two numbers in [0, 1), got {self.betas}")
        for name in ("learning_rate", "eps", "c_mel", "c_kl", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(f"{name} must be a finite number, got {value!r}")
            if value < 0 or (name in ("learning_rate", "eps") and value == 0):
                raise bad(
                    f"{name} must be {'> 0' if name in ('learning_rate', 'eps') else '>= 0'}, got {value}"
                )
        if not 0.0 < self.lr_decay <= 1.0:
            raise bad(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.grad_clip_norm is not None and not (
            isinstance(self.grad_clip_norm, (int, float)) and self.grad_clip_norm > 0
        ):
            raise bad(f"grad_clip_norm must be > 0 or None, got {self.grad_clip_norm!r}")
        if self.bucketing not in BUCKETINGS:
            raise bad(f"bucketing must be one of {names(BUCKETINGS)}, got {self.bucketing!r}")
        if self.precision not in TRAIN_PRECISIONS:
            raise bad(f"precision must be one of {names(TRAIN_PRECISIONS)}, got {self.precision!r}")
        try:
            parse_device_name(self.device)
        except DeviceError as exc:
            raise bad(f"device: {exc}") from exc
        hop = self.spectrogram.hop_length
        if self.segment_size is not None:
            if isinstance(self.segment_size, bool) or not isinstance(self.segment_size, int):
                raise bad(f"segment_size must be an int (samples) or None, got {self.segment_size!r}")
            if self.segment_size < hop or self.segment_size % hop:
                raise bad(
                    f"segment_size ({self.segment_size}) must be a positive multiple of the hop ({hop})"
                )
        self._check_networks()

    def _check_networks(self) -> None:
        net = self.generator
        if isinstance(net, Mapping):
            object.__setattr__(self, "generator", net := SynthConfig.from_dict(net))
        if isinstance(self.discriminator, Mapping):
            object.__setattr__(self, "discriminator", DiscriminatorConfig.from_dict(self.discriminator))
        if net is not None and not isinstance(net, SynthConfig):
            raise ConfigError(f"VitsTrainConfig: generator must be a SynthConfig or None, got {net!r}")
        if self.discriminator is not None and not isinstance(self.discriminator, DiscriminatorConfig):
            raise ConfigError("VitsTrainConfig: discriminator must be a DiscriminatorConfig or None")
        if net is None:
            return
        expected = {
            "sample_rate": self.sample_rate,
            "content_dim": self.content_dim,
            "use_f0": self.use_f0,
            "spec_channels": self.spectrogram.n_freqs,
            "hop_length": self.spectrogram.hop_length,
        }
        wrong = [f"{k} {getattr(net, k)} (needs {v})" for k, v in expected.items() if getattr(net, k) != v]
        if wrong:
            raise ConfigError(f"VitsTrainConfig: the generator does not fit the run: {', '.join(wrong)}")

    @property
    def content_dim(self) -> int:
        """Content-feature width: ``feature_dim``, else the version's (256 or 768)."""
        return self.feature_dim or rvc.content_dim(self.version)

    @property
    def spectrogram(self) -> SpectrogramConfig:
        """STFT/mel settings of the sample rate."""
        return SpectrogramConfig.for_sample_rate(self.sample_rate)

    @property
    def segment_samples(self) -> int:
        """Training window in samples."""
        if self.segment_size is not None:
            return self.segment_size
        if self.size == "tiny":
            return TINY_SEGMENT_FRAMES * self.spectrogram.hop_length
        return _SEGMENT_SAMPLES[(self.version, self.sample_rate)]

    @property
    def segment_frames(self) -> int:
        """Training window in frames."""
        return self.segment_samples // self.spectrogram.hop_length

    def synth_config(self) -> SynthConfig:
        """The generator's config (``segment_size`` in frames is the training window)."""
        net = self._base_synth_config()
        if self.speakers is not None:
            net = replace(net, spk_embed_dim=self.speakers)
        return net

    def _base_synth_config(self) -> SynthConfig:
        if self.generator is not None:
            return replace(self.generator, segment_size=self.segment_frames)
        if self.size == "full":
            base = SynthConfig.preset(self.version, self.sample_rate, self.use_f0)
            return replace(base, segment_size=self.segment_frames, content_dim=self.content_dim)
        if self.sample_rate == 16000:
            rates, kernels = _TINY_16K_DECODER
        else:
            preset = SynthConfig.preset(self.version, self.sample_rate, self.use_f0)
            rates, kernels = preset.upsample_rates, preset.upsample_kernel_sizes
        return SynthConfig(
            spec_channels=self.spectrogram.n_freqs,
            segment_size=self.segment_frames,
            inter_channels=16,
            hidden_channels=32,
            filter_channels=64,
            n_heads=2,
            n_layers=2,
            kernel_size=3,
            p_dropout=0.0,
            resblock="1",
            resblock_kernel_sizes=(3, 7),
            resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)),
            upsample_rates=rates,
            upsample_initial_channel=64,
            upsample_kernel_sizes=kernels,
            spk_embed_dim=1,
            gin_channels=16,
            sample_rate=self.sample_rate,
            content_dim=self.content_dim,
            use_f0=self.use_f0,
        )

    def discriminator_config(self) -> DiscriminatorConfig:
        """RVC's v1/v2 discriminator; for ``tiny`` one period, 1-tap kernels and 1/16 of the widths."""
        if self.discriminator is not None:
            return self.discriminator
        if self.size == "tiny":
            return DiscriminatorConfig(
                periods=TINY_DISCRIMINATOR_PERIODS,
                kernel_size=TINY_DISCRIMINATOR_KERNEL,
                width_divisor=TINY_DISCRIMINATOR_WIDTH_DIVISOR,
            )
        return DiscriminatorConfig.preset(self.version)

    @classmethod
    def tiny(cls, **overrides: Any) -> VitsTrainConfig:
        """A small 16 kHz pitch model for tests and benchmarks (no pretrained files, exact buckets)."""
        values: dict[str, Any] = {
            "sample_rate": 16000,
            "version": "v1",
            "size": "tiny",
            "batch_size": 1,
            "epochs": 2,
            "save_every_epochs": 1,
            "use_pretrained": False,
            "bucketing": "exact",
        }
        values.update(overrides)
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VitsTrainConfig:
        """Build from a plain dict; unknown keys are a :class:`ConfigError`."""
        check_config_keys(cls, data, require_all=False)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict."""
        out = asdict(self)
        out["betas"] = list(self.betas)
        for name in ("generator", "discriminator"):
            net = getattr(self, name)
            out[name] = None if net is None else net.to_dict()
        return out


def export_synth_config(config: VitsTrainConfig) -> SynthConfig:
    """The config written into the inference file (RVC stores segment_size 32)."""
    return replace(config.synth_config(), segment_size=RVC_EXPORT_SEGMENT_FRAMES)


def build_networks(config: VitsTrainConfig) -> tuple[Synthesizer, MultiPeriodDiscriminator]:
    """The training generator (with its posterior encoder) and discriminator.

    Built on the current default device, so ``with torch.device('meta'):`` gives shapes only.
    """
    return Synthesizer(config.synth_config(), use_posterior_encoder=True), MultiPeriodDiscriminator(
        config.discriminator_config()
    )
