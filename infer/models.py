"""Voice-model bundle: config + weights + metadata, read from and written to RVC's file layouts.

Size: every RVC / Applio / Timbre file variant is read and checked here, in one place (the
layout tables live in :mod:`infer.rvc`).

Files read by :func:`load_voice_model`:

* RVC inference ``.pth``: an ``OrderedDict`` ``weight, config, info, sr, f0, version`` with
  fp16 weights and no posterior encoder (``f0`` defaults to 1, ``version`` to ``'v1'``).
* RVC training / pretrained generator checkpoints ``{'model': state_dict, ...}`` (``G_*.pth``,
  ``f0G40k.pth``): the config is read off the tensor shapes.
* Timbre's own files: exactly the RVC inference layout (so RVC and Applio load them unchanged)
  plus one extra top-level key ``'timbre'`` holding a plain dict of metadata.

Models trained on the offline ``whisper-tiny-en`` content encoder have 384-dim content. They keep
the v2 layout and key order (``'version'`` is ``'v2'``) and record ``content_encoder:
'whisper-tiny-en'`` in ``'timbre'``; the content width is read off ``enc_p.emb_phone.weight``.
RVC and Applio cannot run them: their loaders build a 768-wide content projection for a v2 file
and reject the 384-wide weights.

:func:`save_voice_model` writes the Timbre format atomically. Nothing outside this module knows
the RVC container layout.
"""

from __future__ import annotations

import logging
import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from infer import rvc
from infer.errors import ModelLoadError, UnsafeFileError
from infer.fsutil import atomic_torch_save
from infer.nn.configs import ConfigError
from infer.nn.weight_norm import norm_except_dim0
from infer.options import DEFAULT_CONTENT_ENCODER, MODEL_SAMPLE_RATES_HZ, OFFLINE_CONTENT_ENCODER
from infer.safeload import load_checkpoint, load_checkpoint_stubbed
from infer.synthesizer import POSTERIOR_ENCODER_PREFIX, WHISPER_CONTENT_DIM, SynthConfig, Synthesizer

__all__ = [
    "ModelMetadata",
    "VoiceModel",
    "build_synthesizer",
    "load_voice_model",
    "save_voice_model",
]

log = logging.getLogger(__name__)

TIMBRE_KEY = "timbre"
TIMBRE_FORMAT_VERSION = 1
RVC_INFERENCE_KEYS = ("weight", "config", "info", "sr", "f0", "version")
_MAX_LISTED_KEYS = 5
# Applio's name for the embedder that RVC ships as hubert_base.pt.
_CONTENT_ENCODER_ALIASES = {"contentvec": DEFAULT_CONTENT_ENCODER, "hubert_base": DEFAULT_CONTENT_ENCODER}
_SUPPORTED_VOCODERS = ("HiFi-GAN",)
_EPOCH_INFO = re.compile(r"^\s*(\d+)\s*epochs?\s*$")


@dataclass(frozen=True)
class ModelMetadata:
    """Descriptive data stored with a voice model.

    Attributes:
        name: display name (defaults to the file stem on load).
        version: ``'v1'`` (256-dim content) or ``'v2'`` (768-dim, or 384-dim whisper-tiny-en content).
        sample_rate: output sample rate in Hz.
        use_f0: whether the model takes pitch.
        info: RVC's free-text ``info`` field (e.g. ``'200epoch'``).
        content_encoder: name of the content encoder the model was trained with.
        epochs: trained epochs, when known.
        steps: trained optimizer steps, when known.
        extra: other plain-data fields (str keys; str/int/float/bool/None/list/dict values).
    """

    name: str
    version: str
    sample_rate: int
    use_f0: bool
    info: str = ""
    content_encoder: str = DEFAULT_CONTENT_ENCODER
    epochs: int | None = None
    steps: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.version not in rvc.LAYOUTS:
            raise ConfigError(f"ModelMetadata.version must be 'v1' or 'v2', got {self.version!r}")
        if (
            isinstance(self.sample_rate, bool)
            or not isinstance(self.sample_rate, int)
            or self.sample_rate <= 0
        ):
            raise ConfigError(
                f"ModelMetadata.sample_rate must be a positive int (Hz), got {self.sample_rate!r}"
            )
        if not isinstance(self.use_f0, bool):
            raise ConfigError(f"ModelMetadata.use_f0 must be a bool, got {self.use_f0!r}")
        for name in ("name", "info", "content_encoder"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"ModelMetadata.{name} must be a str, got {getattr(self, name)!r}")
        for name in ("epochs", "steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"ModelMetadata.{name} must be a non-negative int or None, got {value!r}")
        if not isinstance(self.extra, dict) or not _is_plain_data(self.extra):
            raise ConfigError(
                "ModelMetadata.extra must be a dict of plain data (str keys; str, int, float, bool, None, "
                "list or dict values) so that the file stays loadable as data"
            )


@dataclass(frozen=True)
class VoiceModel:
    """A loaded voice model: config, weights as stored (often fp16), metadata, origin.

    ``state_dict`` holds the generator weights; it may include the training-only posterior
    encoder (``enc_q.*``) when read from a training checkpoint.
    """

    config: SynthConfig
    state_dict: dict[str, Tensor]
    metadata: ModelMetadata
    source_path: Path | None = None


# --------------------------------------------------------------------------- loading


def load_voice_model(path: str | Path, *, config_overrides: Mapping[str, Any] | None = None) -> VoiceModel:
    """Read an RVC inference ``.pth``, an RVC generator checkpoint, or a Timbre model file.

    Args:
        path: the file.
        config_overrides: :class:`SynthConfig` fields to set explicitly, for values a file
            cannot tell (e.g. ``{"sample_rate": 40000}`` for a generator checkpoint whose
            decoder matches several presets, or non-default ``resblock_dilation_sizes``).

    Returns:
        The :class:`VoiceModel`; its weights are checked against the config (keys and shapes).

    Raises:
        UnsafeFileError: the file would run code when unpickled.
        ModelLoadError: not a voice model, or keys/shapes that do not fit its config.
    """
    path = Path(path)
    obj = _read_checkpoint(path)
    name = path.name
    if not isinstance(obj, Mapping):
        raise ModelLoadError(
            f"{name}: not a voice model: the file holds a {type(obj).__name__}, while RVC models are dicts "
            "with 'weight' and 'config' (inference files) or 'model' (training checkpoints)"
        )
    overrides = dict(config_overrides or {})
    if "weight" in obj:
        return _from_inference_file(obj, path, overrides)
    if isinstance(obj.get("model"), Mapping):
        state = _strip_module_prefix(obj["model"])
        _require_generator(state, name, container="['model']")
        config = _infer_config(state, name, overrides)
        iteration = obj.get("iteration")
        epochs = iteration if isinstance(iteration, int) and not isinstance(iteration, bool) else None
        metadata = _metadata_for(config, name=path.stem, info="", epochs=epochs)
        _check_state(config, state, name, allow_posterior=True)
        return VoiceModel(config, dict(state), metadata, path)
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        state = _strip_module_prefix(obj)
        _require_generator(state, name, container="")
        config = _infer_config(state, name, overrides)
        _check_state(config, state, name, allow_posterior=True)
        return VoiceModel(config, dict(state), _metadata_for(config, name=path.stem, info=""), path)
    raise ModelLoadError(
        f"{name}: not a voice model: expected RVC's inference layout (keys {list(RVC_INFERENCE_KEYS)}) or a "
        f"training checkpoint with 'model'; found top-level keys {_few(list(obj))}"
    )


def _read_checkpoint(path: Path) -> Any:
    try:
        return load_checkpoint(path)
    except UnsafeFileError as exc:
        # A legitimate content-encoder file (fairseq pickles foreign classes) is refused by the
        # data-only reader; look at it inertly to give a better answer than "unsafe".
        kind = _identify_foreign_checkpoint(path)
        if kind is not None:
            raise ModelLoadError(f"{path.name}: not a voice model: {kind}") from exc
        raise


def _identify_foreign_checkpoint(path: Path) -> str | None:
    try:
        obj = load_checkpoint_stubbed(path)
    except (ModelLoadError, UnsafeFileError, RuntimeError, KeyError, IndexError):
        return None
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        return _describe_state(obj["model"])
    return None


def _describe_state(state: Mapping[str, Any]) -> str | None:
    """A sentence saying what a non-generator state dict looks like, or None if unrecognised."""
    keys = [k for k in state if isinstance(k, str)]
    if any(k.startswith("discriminators.") for k in keys):
        return (
            f"this is a discriminator checkpoint ({len(keys)} tensors such as {keys[0]!r}), used only for "
            "training. Load the matching generator (G_*.pth / f0G*.pth) or an exported inference .pth "
            "instead."
        )
    if any(k.startswith(("feature_extractor.", "encoder.pos_conv", "encoder.layers.")) for k in keys):
        return (
            "this looks like a HuBERT/ContentVec content-encoder checkpoint (keys such as "
            f"{next(k for k in keys if k.startswith(('feature_extractor.', 'encoder.')))!r}), which Timbre "
            "uses as the content encoder, not as a voice. Pick an RVC voice model (.pth with 'weight' and "
            "'config')."
        )
    if any(k.startswith("unet.") for k in keys):
        return (
            "this looks like an RMVPE pitch-extractor checkpoint (keys such as 'unet.*'), not a voice model. "
            "Pick an RVC voice model (.pth with 'weight' and 'config')."
        )
    return None


def _require_generator(state: Mapping[str, Any], name: str, *, container: str) -> None:
    if "enc_p.emb_phone.weight" in state and "dec.conv_pre.weight" in state:
        return
    description = _describe_state(state)
    if description is not None:
        raise ModelLoadError(f"{name}: not a voice model: {description}")
    raise ModelLoadError(
        f"{name}: not a voice model: the state dict{container} has no RVC generator keys "
        f"('enc_p.emb_phone.weight', 'dec.conv_pre.weight'); its keys start with {_few(list(state))}"
    )


def _strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    keys = list(state)
    if keys and all(isinstance(k, str) and k.startswith("module.") for k in keys):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _from_inference_file(obj: Mapping[str, Any], path: Path, overrides: dict[str, Any]) -> VoiceModel:
    name = path.name
    weight = obj["weight"]
    if not isinstance(weight, Mapping) or not all(isinstance(v, Tensor) for v in weight.values()):
        raise ModelLoadError(f"{name}: 'weight' must be a dict of tensors, got {type(weight).__name__}")
    state = dict(weight)
    _require_generator(state, name, container="['weight']")
    vocoder = obj.get("vocoder")
    if isinstance(vocoder, str) and vocoder not in _SUPPORTED_VOCODERS:
        raise ModelLoadError(
            f"{name}: this model uses the {vocoder!r} vocoder, which Timbre cannot run; only models with the "
            "standard HiFi-GAN (NSF) decoder are supported"
        )
    version = obj.get("version", rvc.DEFAULT_VERSION)
    use_f0 = obj.get("f0", 1)
    if version not in rvc.LAYOUTS:
        raise ModelLoadError(f"{name}: unknown model version {version!r}; expected one of {rvc.versions()}")
    if use_f0 not in (0, 1):
        raise ModelLoadError(f"{name}: 'f0' must be 0 or 1, got {use_f0!r}")
    if "config" in obj:
        try:
            config = SynthConfig.from_rvc_config(
                obj["config"], version=version, use_f0=bool(use_f0), content_dim=_stored_content_dim(state)
            )
            # RVC's loader trusts the speaker table over the stored count.
            emb_shape = tuple(state["emb_g.weight"].shape) if "emb_g.weight" in state else None
            if emb_shape is not None and len(emb_shape) == 2:
                config = replace(config, spk_embed_dim=emb_shape[0])
            if overrides:
                config = SynthConfig.from_dict({**config.to_dict(), **overrides})
        except ConfigError as exc:
            raise ModelLoadError(f"{name}: invalid model config: {exc}") from exc
    else:
        sample_rate_name = obj.get("sr")
        if sample_rate_name in rvc.SAMPLE_RATE_NAMES:
            overrides.setdefault("sample_rate", rvc.SAMPLE_RATE_NAMES[sample_rate_name])
        config = _infer_config(state, name, overrides)
    if config.content_dim not in rvc.allowed_content_dims(version) or config.use_f0 != bool(use_f0):
        raise ModelLoadError(
            f"{name}: the file says version {version!r} and f0={use_f0}, but its weights or the overrides "
            f"give {config.content_dim}-dim content and use_f0={config.use_f0}"
        )
    _check_state(config, state, name, allow_posterior=True)
    info = obj.get("info", "")
    info = info if isinstance(info, str) else str(info)
    timbre = obj.get(TIMBRE_KEY)
    extra = {
        k: v
        for k, v in obj.items()
        if k not in (*RVC_INFERENCE_KEYS, TIMBRE_KEY) and isinstance(k, str) and _is_plain_data(v)
    }
    if isinstance(timbre, Mapping):
        metadata = _metadata_from_timbre(timbre, config, info, path, extra)
    else:
        content_encoder = obj.get("embedder_model", _default_content_encoder(config))
        content_encoder = (
            _CONTENT_ENCODER_ALIASES.get(content_encoder, content_encoder)
            if isinstance(content_encoder, str)
            else _default_content_encoder(config)
        )
        match = _EPOCH_INFO.match(info)
        metadata = _metadata_for(
            config,
            name=path.stem,
            info=info,
            epochs=int(match.group(1)) if match else None,
            content_encoder=content_encoder,
            extra=extra,
        )
    return VoiceModel(config, state, metadata, path)


def _stored_content_dim(state: Mapping[str, Any]) -> int | None:
    """Content width of the weights when it is whisper-tiny-en's (None: the version decides)."""
    emb = state.get("enc_p.emb_phone.weight")
    if isinstance(emb, Tensor) and emb.dim() == 2 and emb.shape[1] == WHISPER_CONTENT_DIM:
        return WHISPER_CONTENT_DIM
    return None


def _file_version(config: SynthConfig) -> str:
    """The RVC ``version`` a config is stored under: v1 for 256-dim content, else v2."""
    return rvc.version_for_content_dim(config.content_dim)


def _default_content_encoder(config: SynthConfig) -> str:
    """The encoder a model without recorded metadata was trained on, judged by its content width."""
    return OFFLINE_CONTENT_ENCODER if config.content_dim == WHISPER_CONTENT_DIM else DEFAULT_CONTENT_ENCODER


def _metadata_for(
    config: SynthConfig,
    *,
    name: str,
    info: str,
    epochs: int | None = None,
    steps: int | None = None,
    content_encoder: str | None = None,
    extra: dict[str, Any] | None = None,
) -> ModelMetadata:
    return ModelMetadata(
        name=name,
        version=_file_version(config),
        sample_rate=config.sample_rate,
        use_f0=config.use_f0,
        info=info,
        content_encoder=content_encoder or _default_content_encoder(config),
        epochs=epochs,
        steps=steps,
        extra=dict(extra or {}),
    )


def _metadata_from_timbre(
    timbre: Mapping[str, Any], config: SynthConfig, info: str, path: Path, extra: dict[str, Any]
) -> ModelMetadata:
    def pick(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = timbre.get(key, default)
        wrong_type = not isinstance(value, kind) or (isinstance(value, bool) and kind is int)
        if value is not None and wrong_type:
            raise ModelLoadError(
                f"{path.name}: the 'timbre' metadata field {key!r} has the wrong type: {value!r}"
            )
        return value

    stored_extra = pick("extra", dict, {}) or {}
    try:
        return _metadata_for(
            config,
            name=pick("name", str, path.stem) or path.stem,
            info=info,
            epochs=pick("epochs", int, None),
            steps=pick("steps", int, None),
            content_encoder=pick("content_encoder", str, None) or None,
            extra={**extra, **stored_extra},
        )
    except ConfigError as exc:
        raise ModelLoadError(f"{path.name}: invalid 'timbre' metadata: {exc}") from exc


def _infer_config(state: Mapping[str, Any], name: str, overrides: dict[str, Any]) -> SynthConfig:
    """Read a :class:`SynthConfig` off generator tensor shapes (+ explicit overrides)."""

    def shape(key: str, ndim: int = 3) -> tuple[int, ...]:
        tensor = state.get(key)
        if not isinstance(tensor, Tensor):
            raise ModelLoadError(
                f"{name}: the generator weights lack {key!r}; the file is incomplete or not RVC's"
            )
        if tensor.dim() != ndim or 0 in tensor.shape:
            raise ModelLoadError(f"{name}: {key!r} has shape {tuple(tensor.shape)}, not an RVC layout")
        return tuple(tensor.shape)

    def wn_weight(prefix: str) -> tuple[int, ...]:
        return shape(f"{prefix}.weight_v" if f"{prefix}.weight_v" in state else f"{prefix}.weight")

    def count(pattern: str) -> int:
        n = 0
        while any(k.startswith(pattern.format(n)) for k in state):
            n += 1
        return n

    hidden, content_dim = shape("enc_p.emb_phone.weight", 2)
    has_pitch_embedding = "enc_p.emb_pitch.weight" in state
    has_source = "dec.m_source.l_linear.weight" in state
    if has_pitch_embedding != has_source:
        raise ModelLoadError(
            f"{name}: inconsistent generator: the text encoder "
            f"{'has' if has_pitch_embedding else 'lacks'} a pitch embedding but the decoder "
            f"{'has' if has_source else 'lacks'} a harmonic source"
        )
    filter_channels, _, kernel_size = shape("enc_p.encoder.ffn_layers.0.conv_1.weight")
    n_ups = count("dec.ups.{}.")
    resblock = "1" if any(k.startswith("dec.resblocks.0.convs1.") for k in state) else "2"
    n_resblocks = count("dec.resblocks.{}.")
    if n_ups == 0 or n_resblocks % n_ups:
        raise ModelLoadError(
            f"{name}: cannot read the decoder layout ({n_ups} upsamples, {n_resblocks} resblocks)"
        )
    first_conv = "convs1.0" if resblock == "1" else "convs.0"
    kernels_per_stage = n_resblocks // n_ups
    upsample_kernels = tuple(wn_weight(f"dec.ups.{i}")[2] for i in range(n_ups))
    spec_channels = shape("enc_q.pre.weight")[1] if "enc_q.pre.weight" in state else None
    trailing = (
        [shape(f"dec.noise_convs.{i}.weight")[2] // 2 for i in range(n_ups - 1)] if has_source else None
    )
    values: dict[str, Any] = {
        "segment_size": 32,
        "inter_channels": shape("enc_p.proj.weight")[0] // 2,
        "hidden_channels": hidden,
        "filter_channels": filter_channels,
        "n_heads": hidden // shape("enc_p.encoder.attn_layers.0.emb_rel_k")[2],
        "n_layers": count("enc_p.encoder.attn_layers.{}."),
        "kernel_size": kernel_size,
        "p_dropout": 0,
        "resblock": resblock,
        "resblock_kernel_sizes": [
            wn_weight(f"dec.resblocks.{j}.{first_conv}")[2] for j in range(kernels_per_stage)
        ],
        "resblock_dilation_sizes": [[1, 3, 5] if resblock == "1" else [1, 3]] * kernels_per_stage,
        "upsample_initial_channel": shape("dec.conv_pre.weight")[0],
        "upsample_kernel_sizes": list(upsample_kernels),
        "spk_embed_dim": shape("emb_g.weight", 2)[0],
        "gin_channels": shape("emb_g.weight", 2)[1],
        "content_dim": content_dim,
        "use_f0": has_source,
    }
    candidates = _match_decoder_presets(
        upsample_kernels, spec_channels, trailing, overrides.get("sample_rate")
    )
    if len(candidates) == 1:
        values["spec_channels"], values["upsample_rates"], values["sample_rate"] = candidates[0]
    elif spec_channels is not None:
        values["spec_channels"] = spec_channels
    values.update(overrides)
    missing = [k for k in ("upsample_rates", "sample_rate", "spec_channels") if k not in values]
    if missing:
        if len(candidates) > 1:
            rates_hz = sorted({c[2] for c in candidates})
            hint = (
                f"its decoder fits the RVC presets at {rates_hz} Hz; pass "
                f"config_overrides={{'sample_rate': {rates_hz[-1]}}} (or the right one)"
            )
        else:
            hint = (
                f"its decoder (upsample kernels {list(upsample_kernels)}) fits no RVC preset; pass them in "
                "config_overrides, e.g. {'sample_rate': 40000, 'upsample_rates': [10, 10, 2, 2], "
                "'spec_channels': 1025}"
            )
        raise ModelLoadError(
            f"{name}: cannot tell {', '.join(missing)} of this generator from its weights: {hint}"
        )
    try:
        return SynthConfig.from_dict(values)
    except ConfigError as exc:
        raise ModelLoadError(f"{name}: the generator's shapes give an invalid config: {exc}") from exc


def _match_decoder_presets(
    upsample_kernels: tuple[int, ...],
    spec_channels: int | None,
    trailing_strides: list[int] | None,
    sample_rate: int | None,
) -> list[tuple[int, list[int], int]]:
    """Distinct (spec_channels, upsample_rates, sample_rate) of the RVC presets fitting the shapes."""
    found: set[tuple[int, tuple[int, ...], int]] = set()
    for version in rvc.versions():
        for rate_hz in MODEL_SAMPLE_RATES_HZ:
            preset = SynthConfig.preset(version, rate_hz, use_f0=True)
            if preset.upsample_kernel_sizes != upsample_kernels:
                continue
            if spec_channels is not None and preset.spec_channels != spec_channels:
                continue
            if sample_rate is not None and preset.sample_rate != sample_rate:
                continue
            rates = preset.upsample_rates
            if trailing_strides is not None and trailing_strides != [
                math.prod(rates[i + 1 :]) for i in range(len(rates) - 1)
            ]:
                continue
            found.add((preset.spec_channels, rates, preset.sample_rate))
    return [(spec, list(rates), rate_hz) for spec, rates, rate_hz in sorted(found)]


@lru_cache(maxsize=16)
def _expected_shapes(config: SynthConfig) -> dict[str, tuple[int, ...]]:
    """Ordered key -> shape of the full (training) generator for ``config``, built on the meta device."""
    with torch.device("meta"):
        synth = Synthesizer(config, use_posterior_encoder=True)
    return {k: tuple(v.shape) for k, v in synth.state_dict().items()}


def _check_state(config: SynthConfig, state: Mapping[str, Any], name: str, *, allow_posterior: bool) -> None:
    """Strict key/shape check; the posterior encoder (``enc_q.*``) is the one expected-absent part."""
    expected = _expected_shapes(config)
    posterior = [k for k in expected if k.startswith(POSTERIOR_ENCODER_PREFIX)]
    present_posterior = [k for k in state if k.startswith(POSTERIOR_ENCODER_PREFIX)]
    required = [k for k in expected if not k.startswith(POSTERIOR_ENCODER_PREFIX)]
    if present_posterior and (not allow_posterior or set(present_posterior) != set(posterior)):
        missing_q = sorted(set(posterior) - set(present_posterior))
        extra_q = sorted(set(present_posterior) - set(posterior))
        raise ModelLoadError(
            f"{name}: the posterior encoder (enc_q) weights do not fit the config: "
            f"missing {_few(missing_q)}, unexpected {_few(extra_q)}"
        )
    missing = [k for k in required if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ModelLoadError(
            f"{name}: the weights do not fit a {_describe_config(config)} model: "
            f"{len(missing)} missing keys {_few(missing)}, "
            f"{len(unexpected)} unexpected keys {_few(unexpected)}. "
            "The file may come from another RVC fork or be damaged."
        )
    wrong = [
        f"{k}: file {tuple(state[k].shape)}, expected {expected[k]}"
        for k in state
        if tuple(state[k].shape) != expected[k]
    ]
    if wrong:
        raise ModelLoadError(
            f"{name}: {len(wrong)} tensors have the wrong shape for a {_describe_config(config)} model: "
            f"{'; '.join(wrong[:_MAX_LISTED_KEYS])}"
        )


def _describe_config(config: SynthConfig) -> str:
    pitch = "pitch" if config.use_f0 else "no-pitch"
    return f"{config.content_dim}-dim {pitch} {config.sample_rate} Hz"


def _few(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_MAX_LISTED_KEYS])
    more = f", ... ({len(keys) - _MAX_LISTED_KEYS} more)" if len(keys) > _MAX_LISTED_KEYS else ""
    return f"[{shown}{more}]"


def _is_plain_data(value: Any, depth: int = 0) -> bool:
    if depth > 16:
        return False
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain_data(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain_data(v, depth + 1) for k, v in value.items())
    return False


# --------------------------------------------------------------------------- building


def build_synthesizer(
    model: VoiceModel,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    fold_weight_norm: bool = True,
) -> Synthesizer:
    """An inference :class:`Synthesizer` (eval mode, no grads) holding ``model``'s weights.

    Loading is strict: every key must be present with its shape; the only exception is the
    training-only posterior encoder (``enc_q.*``), which is dropped when present.
    """
    state = {k: v for k, v in model.state_dict.items() if not k.startswith(POSTERIOR_ENCODER_PREFIX)}
    name = model.source_path.name if model.source_path is not None else model.metadata.name
    _check_state(model.config, state, name, allow_posterior=False)
    with torch.device("meta"):
        synth = Synthesizer(model.config, use_posterior_encoder=False)
    # One converted copy per tensor, assigned in place of the meta parameters (no init, no double copy).
    converted = {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype, copy=True)
        for k, v in state.items()
    }
    synth.load_state_dict(converted, strict=True, assign=True)
    if fold_weight_norm:
        synth.fold_weight_norm()
    synth.eval()
    synth.requires_grad_(False)
    return synth


# --------------------------------------------------------------------------- saving


def save_voice_model(
    path: str | Path,
    synth_or_state_dict: nn.Module | Mapping[str, Tensor],
    config: SynthConfig,
    metadata: ModelMetadata,
) -> Path:
    """Write a voice model in RVC's inference format plus Timbre's ``'timbre'`` metadata key.

    Layout: ``OrderedDict(weight, config, info, sr, f0, version, timbre)`` with fp16 weights in
    RVC's key order, without ``enc_q``, weight norm unfolded (a folded synthesizer is unfolded on
    the fly). The file is written to a temp file in the same folder, fsynced and renamed over
    ``path``, so an existing file survives any failure. A 384-dim (whisper-tiny-en) model is
    stored as ``'v2'``; RVC and Applio cannot run it.

    Raises:
        ValueError: weights or metadata do not fit ``config``.
        OSError: the file could not be written (the previous file, if any, is untouched).
    """
    path = Path(path)
    if isinstance(synth_or_state_dict, nn.Module):
        state: Mapping[str, Tensor] = synth_or_state_dict.state_dict()
    else:
        state = synth_or_state_dict
    expected_version = _file_version(config)
    if config.content_dim == WHISPER_CONTENT_DIM and metadata.content_encoder == DEFAULT_CONTENT_ENCODER:
        raise ValueError(
            f"a {WHISPER_CONTENT_DIM}-dim model was not trained on {DEFAULT_CONTENT_ENCODER}; record its "
            f"content encoder ({OFFLINE_CONTENT_ENCODER}) in the metadata"
        )
    if (metadata.version, metadata.sample_rate, metadata.use_f0) != (
        expected_version,
        config.sample_rate,
        config.use_f0,
    ):
        raise ValueError(
            f"metadata (version {metadata.version!r}, {metadata.sample_rate} Hz, use_f0={metadata.use_f0}) "
            f"does not match the config ({expected_version!r}, {config.sample_rate} Hz, "
            f"use_f0={config.use_f0})"
        )
    weight = _inference_weights(state, config)
    checkpoint: OrderedDict[str, Any] = OrderedDict()
    checkpoint["weight"] = weight
    checkpoint["config"] = config.to_rvc_config()
    checkpoint["info"] = metadata.info
    checkpoint["sr"] = f"{round(config.sample_rate / 1000)}k"
    checkpoint["f0"] = int(config.use_f0)
    checkpoint["version"] = metadata.version
    checkpoint[TIMBRE_KEY] = {
        "format_version": TIMBRE_FORMAT_VERSION,
        "name": metadata.name,
        "content_encoder": metadata.content_encoder,
        "epochs": metadata.epochs,
        "steps": metadata.steps,
        "extra": dict(metadata.extra),
    }
    atomic_torch_save(checkpoint, path)
    log.info("saved voice model %s (%d tensors)", path, len(weight))
    return path


def _inference_weights(state: Mapping[str, Tensor], config: SynthConfig) -> dict[str, Tensor]:
    """fp16 CPU copies of the inference keys in RVC order; folded weight norm is split again."""
    expected = {
        k: s for k, s in _expected_shapes(config).items() if not k.startswith(POSTERIOR_ENCODER_PREFIX)
    }
    weight: dict[str, Tensor] = {}
    missing: list[str] = []
    used: set[str] = set()
    for key in expected:
        tensor = state.get(key)
        if tensor is None and key.endswith((".weight_g", ".weight_v")):
            folded_key = key[: -len("_g")]
            folded = state.get(folded_key)
            if folded is not None:
                used.add(folded_key)
                tensor = norm_except_dim0(folded.detach().float()) if key.endswith("_g") else folded
        if tensor is None:
            missing.append(key)
            continue
        used.add(key)
        weight[key] = tensor.detach().to(device="cpu", dtype=torch.float16, copy=True).contiguous()
    unexpected = [k for k in state if k not in used and not k.startswith(POSTERIOR_ENCODER_PREFIX)]
    if missing or unexpected:
        raise ValueError(
            f"the weights do not fit the config: missing {_few(missing)}, unexpected {_few(unexpected)}"
        )
    wrong = [
        f"{k}: {tuple(t.shape)} vs {expected[k]}" for k, t in weight.items() if tuple(t.shape) != expected[k]
    ]
    if wrong:
        raise ValueError(
            f"tensors with the wrong shape for the config: {'; '.join(wrong[:_MAX_LISTED_KEYS])}"
        )
    return weight
