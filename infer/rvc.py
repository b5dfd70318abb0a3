"""The RVC legacy adapter: everything that knows RVC's words "v1"/"v2" and its file conventions.

RVC names a model layout by a version string. Behind it stand a content width, a content layer,
a feature folder name, a pretrained folder on the hub, a discriminator, a state_dict key order
and an 18-item positional config list. This module is the only place that maps between those
words and Timbre's typed configs; everything else asks it. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infer.options import MODEL_SAMPLE_RATES_HZ, MODEL_VERSIONS, names


@dataclass(frozen=True)
class VersionLayout:
    """What an RVC version string stands for.

    Attributes:
        content_dim: HuBERT feature width (256: layer 9 + ``final_proj``; 768: the last layer).
        content_layer: the HuBERT output preset the content encoder is asked for.
        extra_content_dims: other widths stored in this layout by Timbre (384: whisper-tiny-en).
        feature_dirname: RVC's training-feature folder (``3_feature256`` / ``3_feature768``).
        hub_pretrained_folder: folder of the base G/D files on the hub.
        local_pretrained_folder: Timbre's folder for them under the pretrained folder.
        discriminator_periods: periods of the multi-period discriminator.
        text_encoder_last: the v2 classes rebuild ``enc_p`` after ``__init__``, so their
            state_dict lists it last.
    """

    content_dim: int
    content_layer: str
    extra_content_dims: tuple[int, ...]
    feature_dirname: str
    hub_pretrained_folder: str
    local_pretrained_folder: str
    discriminator_periods: tuple[int, ...]
    text_encoder_last: bool


WHISPER_CONTENT_DIM = 384
"""Width of the offline ``whisper-tiny-en`` content features; such models use the v2 layout."""

LAYOUTS: dict[str, VersionLayout] = {
    "v1": VersionLayout(
        content_dim=256,
        content_layer="v1",
        extra_content_dims=(),
        feature_dirname="3_feature256",
        hub_pretrained_folder="pretrained",
        local_pretrained_folder="pretrained_v1",
        discriminator_periods=(2, 3, 5, 7, 11, 17),
        text_encoder_last=False,
    ),
    "v2": VersionLayout(
        content_dim=768,
        content_layer="v2",
        extra_content_dims=(WHISPER_CONTENT_DIM,),
        feature_dirname="3_feature768",
        hub_pretrained_folder="pretrained_v2",
        local_pretrained_folder="pretrained_v2",
        discriminator_periods=(2, 3, 5, 7, 11, 17, 23, 37),
        text_encoder_last=True,
    ),
}

SAMPLE_RATE_NAMES = {"32k": 32000, "40k": 40000, "48k": 48000}
"""RVC's ``sr`` strings."""

DEFAULT_VERSION = "v1"
"""What RVC assumes when a file has no ``version`` key."""

# (version, sample rate) -> (spec_channels, upsample_rates, upsample_kernel_sizes) of RVC's
# configs; v2 at 40 kHz reuses the v1 40 kHz config (there is no configs/v2/40k.json).
DECODER_PRESETS: dict[tuple[str, int], tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    ("v1", 32000): (513, (10, 4, 2, 2, 2), (16, 16, 4, 4, 4)),
    ("v1", 40000): (1025, (10, 10, 2, 2), (16, 16, 4, 4)),
    ("v1", 48000): (1025, (10, 6, 2, 2, 2), (16, 16, 4, 4, 4)),
    ("v2", 32000): (513, (10, 8, 2, 2), (20, 16, 4, 4)),
    ("v2", 40000): (1025, (10, 10, 2, 2), (16, 16, 4, 4)),
    ("v2", 48000): (1025, (12, 10, 2, 2), (24, 20, 4, 4)),
}

CONFIG_FIELDS = (
    "spec_channels",
    "segment_size",
    "inter_channels",
    "hidden_channels",
    "filter_channels",
    "n_heads",
    "n_layers",
    "kernel_size",
    "p_dropout",
    "resblock",
    "resblock_kernel_sizes",
    "resblock_dilation_sizes",
    "upsample_rates",
    "upsample_initial_channel",
    "upsample_kernel_sizes",
    "spk_embed_dim",
    "gin_channels",
    "sample_rate",
)
"""Names of the 18 positional constructor arguments RVC stores as a model's ``config`` list."""


class LayoutError(ValueError):
    """A version string, width or config list RVC's conventions do not allow."""


def versions() -> tuple[str, ...]:
    """The version strings, in order."""
    return names(MODEL_VERSIONS)


def layout(version: str) -> VersionLayout:
    """The layout behind ``version`` (LayoutError naming the choices when unknown)."""
    if version not in LAYOUTS:
        raise LayoutError(f"unknown model version {version!r}; expected one of {', '.join(LAYOUTS)}")
    return LAYOUTS[version]


def content_dim(version: str) -> int:
    """The HuBERT feature width of ``version`` (256 or 768)."""
    return layout(version).content_dim


def allowed_content_dims(version: str) -> tuple[int, ...]:
    """Content widths a file of ``version`` may carry (its HuBERT width first)."""
    spec = layout(version)
    return (spec.content_dim, *spec.extra_content_dims)


def version_for_content_dim(width: int) -> str:
    """The layout a model of ``width``-d content is stored in (384-d whisper models: ``v2``)."""
    for version, spec in LAYOUTS.items():
        if width in (spec.content_dim, *spec.extra_content_dims):
            return version
    raise LayoutError(f"no RVC layout holds {width}-dim content features")


def content_layer_for_dim(width: int) -> str:
    """The content-encoder output preset (``v1``/``v2``) that gives features for a model of ``width``."""
    return layout(version_for_content_dim(width)).content_layer


def content_layers() -> tuple[str, ...]:
    """The content-encoder output presets (one per layout)."""
    return tuple(dict.fromkeys(spec.content_layer for spec in LAYOUTS.values()))


def text_encoder_last(width: int) -> bool:
    """Whether a model of ``width``-d content lists ``enc_p`` last in its state_dict."""
    return layout(version_for_content_dim(width)).text_encoder_last


def parse_sample_rate(value: int | str) -> int:
    """A sample rate in Hz from RVC's ``'40k'`` strings or an int."""
    if isinstance(value, str):
        if value not in SAMPLE_RATE_NAMES:
            known = ", ".join(SAMPLE_RATE_NAMES)
            raise LayoutError(f"unknown sample rate {value!r}; RVC writes one of {known}")
        return SAMPLE_RATE_NAMES[value]
    return int(value)


def sample_rate_name(sample_rate: int) -> str:
    """RVC's ``sr`` string for ``sample_rate`` (``'40k'``)."""
    for name, rate in SAMPLE_RATE_NAMES.items():
        if rate == sample_rate:
            return name
    return f"{sample_rate // 1000}k"


def decoder_preset(version: str, sample_rate: int) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(spec_channels, upsample_rates, upsample_kernel_sizes) of RVC's config for version and rate."""
    key = (version, sample_rate)
    if key not in DECODER_PRESETS:
        raise LayoutError(
            f"RVC has no {version} preset at {sample_rate} Hz; choose version from {', '.join(LAYOUTS)} "
            f"and sample_rate from {', '.join(str(r) for r in MODEL_SAMPLE_RATES_HZ)}"
        )
    return DECODER_PRESETS[key]


def config_values(config_list: Sequence[Any]) -> dict[str, Any]:
    """RVC's 18-item ``config`` list as named values (a ``'40k'`` sample rate becomes 40000)."""
    if isinstance(config_list, (str, bytes)) or not isinstance(config_list, Sequence):
        raise LayoutError(f"an RVC config is a list of 18 values, got {type(config_list).__name__}")
    if len(config_list) != len(CONFIG_FIELDS):
        raise LayoutError(f"an RVC config has {len(CONFIG_FIELDS)} values, this one has {len(config_list)}")
    values = dict(zip(CONFIG_FIELDS, config_list, strict=True))
    values["sample_rate"] = parse_sample_rate(values["sample_rate"])
    return values


def config_list(values: Mapping[str, Any]) -> list[Any]:
    """The named values back as RVC's 18-item list, with the python types RVC writes."""
    p_dropout = float(values["p_dropout"])
    out: list[Any] = []
    for name in CONFIG_FIELDS:
        value = values[name]
        if name == "p_dropout":
            value = int(p_dropout) if p_dropout.is_integer() else p_dropout
        elif name == "resblock_dilation_sizes":
            value = [list(d) for d in value]
        elif isinstance(value, tuple):
            value = list(value)
        out.append(value)
    return out
