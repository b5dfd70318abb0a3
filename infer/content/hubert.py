"""HuBERT / ContentVec content encoder in plain torch (no fairseq, no transformers).

Size: the fairseq-layout network and its three readers (fairseq, transformers, Timbre), which
must agree key by key.

Module names follow fairseq's ``HubertModel``, so the ``['model']`` state dict of
``hubert_base.pt`` (ContentVec uses the same layout) loads with ``load_state_dict(strict=True)``
after two listed changes: the positional conv's weight norm is folded into one ``weight``
(:data:`FOLDED_WEIGHT_NORM_KEYS`) and the pretraining-only tensors :data:`IGNORED_FAIRSEQ_KEYS`
are dropped. transformers-format folders are renamed to the same names first.

The forward pass, as RVC runs HuBERT base:

1. conv feature extractor: 7 convs without bias, GroupNorm (one group per channel) on conv 0
   only, exact-erf GELU after each; 320x downsampling, ``(L - 400) // 320 + 1`` frames;
2. LayerNorm over the conv channels, then ``post_extract_proj`` to the model width;
3. ``x + GELU(pos_conv(x))``, dropping the last frame of the even-kernel conv, then
   ``encoder.layer_norm`` (post-norm models normalise before the first layer);
4. post-norm transformer layers; no padding mask.

``v2`` features are the last layer's output (768-d); ``v1`` features are layer 9's output
through ``final_proj`` (256-d).
"""

from __future__ import annotations

import ast
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from infer.content.base import (
    CONTENT_SAMPLE_RATE,
    ContentEncoder,
    register_content_encoder,
    register_content_reader,
)
from infer.errors import AssetError, ModelLoadError
from infer.nn.loading import materialize
from infer.safeload import load_checkpoint, load_checkpoint_stubbed

log = logging.getLogger(__name__)

V1_OUTPUT_LAYER = 9
HEAD_DIM = 64
GROUP_NORM_EPS = 1e-5
WEIGHT_NORM_DIM = 2
BASE_CONV_LAYERS: tuple[tuple[int, int, int], ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
IGNORED_FAIRSEQ_KEYS: tuple[str, ...] = ("mask_emb", "label_embs_concat")
FOLDED_WEIGHT_NORM_KEYS: dict[str, tuple[str, str]] = {
    "encoder.pos_conv.0.weight": ("encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.weight_v"),
}
HUBERT_BASE_FILENAMES: tuple[str, ...] = ("hubert_base.pt", "hubert/hubert_base.pt")
_STANDARD_STRIDES: dict[tuple[int, ...], tuple[int, ...]] = {
    (10, 3, 3, 3, 3, 2, 2): (5, 2, 2, 2, 2, 2, 2),
}
_CONV_KEY = "feature_extractor.conv_layers.{}.0.weight"
_TRANSFORMERS_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
        (r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", r"feature_extractor.conv_layers.\1.2."),
        (r"^feature_projection\.layer_norm\.", "layer_norm."),
        (r"^feature_projection\.projection\.", "post_extract_proj."),
        (
            r"^encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0$",
            "encoder.pos_conv.0.weight_g",
        ),
        (
            r"^encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1$",
            "encoder.pos_conv.0.weight_v",
        ),
        (r"^encoder\.pos_conv_embed\.conv\.", "encoder.pos_conv.0."),
        (r"^encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
        (r"^encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
        (r"^encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
        (r"^encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
        (r"^masked_spec_embed$", "mask_emb"),
    )
)


@dataclass(frozen=True)
class HubertConfig:
    """HuBERT architecture.

    Attributes:
        conv_layers: feature-extractor convs as ``(channels, kernel, stride)``.
        conv_bias: whether those convs have a bias.
        extractor_mode: ``"default"`` = GroupNorm on conv 0 only (the only mode supported).
        embed_dim: transformer width.
        ffn_dim: feed-forward width.
        num_heads: attention heads.
        num_layers: transformer layers.
        conv_pos: positional conv kernel size.
        conv_pos_groups: positional conv groups.
        final_dim: ``final_proj`` output size; 0 = the checkpoint has no ``final_proj``.
        layer_norm_first: pre-norm layers (HuBERT large); only False is supported.
        layer_norm_eps: epsilon of every LayerNorm.
        use_input_norm: layer-normalise each waveform first (fairseq ``task.normalize``).
    """

    conv_layers: tuple[tuple[int, int, int], ...] = BASE_CONV_LAYERS
    conv_bias: bool = False
    extractor_mode: str = "default"
    embed_dim: int = 768
    ffn_dim: int = 3072
    num_heads: int = 12
    num_layers: int = 12
    conv_pos: int = 128
    conv_pos_groups: int = 16
    final_dim: int = 256
    layer_norm_first: bool = False
    layer_norm_eps: float = 1e-5
    use_input_norm: bool = False

    def __post_init__(self) -> None:
        if not self.conv_layers or any(
            len(layer) != 3 or min(layer) < 1 or not all(isinstance(n, int) for n in layer)
            for layer in self.conv_layers
        ):
            raise ValueError(
                f"conv_layers must be (channels, kernel, stride) positive ints, got {self.conv_layers}"
            )
        if self.extractor_mode != "default":
            raise ValueError(
                f"extractor_mode {self.extractor_mode!r} (layer-norm feature extractor, HuBERT large style) "
                "is not supported; use a HuBERT-base / ContentVec checkpoint"
            )
        if self.layer_norm_first:
            raise ValueError(
                "pre-norm transformer layers (layer_norm_first=True, HuBERT large style) are not supported; "
                "use a HuBERT-base / ContentVec checkpoint"
            )
        for name in ("embed_dim", "ffn_dim", "num_heads", "num_layers", "conv_pos", "conv_pos_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.embed_dim % self.conv_pos_groups:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by conv_pos_groups {self.conv_pos_groups}"
            )
        if self.final_dim < 0:
            raise ValueError(f"final_dim must be >= 0 (0 = no final_proj), got {self.final_dim}")
        if not 0.0 < self.layer_norm_eps < 1.0:
            raise ValueError(f"layer_norm_eps must be in (0, 1), got {self.layer_norm_eps}")

    @classmethod
    def base(cls) -> HubertConfig:
        """HuBERT base / ContentVec (``hubert_base.pt``): 12 layers, 768 wide, 256-d final_proj."""
        return cls()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HubertConfig:
        """Build from this class's own field names; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown HubertConfig keys {unknown}; known keys: {sorted(known)}")
        values = dict(data)
        if "conv_layers" in values:
            values["conv_layers"] = tuple(tuple(layer) for layer in values["conv_layers"])
        return cls(**values)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], cfg: Any = None) -> HubertConfig:
        """Infer the architecture from fairseq-named tensor shapes.

        Shapes give every size. What shapes cannot tell (conv strides, head count, input
        normalisation) comes from ``cfg`` when it is a plain fairseq cfg dict (``{'model': ...,
        'task': ...}``); otherwise strides follow the standard HuBERT pattern, heads are 64 wide
        and no input normalisation is applied. Anything else in ``cfg`` (a stubbed omegaconf
        object, None) is ignored.

        Raises:
            ModelLoadError: the tensors are not a HuBERT layout this module can run.
        """
        model_cfg, task_cfg = _plain_fairseq_cfg(cfg)
        convs = []
        while _CONV_KEY.format(len(convs)) in state_dict:
            weight = state_dict[_CONV_KEY.format(len(convs))]
            convs.append((int(weight.shape[0]), int(weight.shape[-1])))
        if not convs or "encoder.layer_norm.weight" not in state_dict:
            raise ModelLoadError("the weights are not a HuBERT model (no conv feature extractor or encoder)")
        kernels = tuple(kernel for _, kernel in convs)
        if "conv_feature_layers" in model_cfg:
            spec = _parse_conv_spec(str(model_cfg["conv_feature_layers"]))
            if tuple((c, k) for c, k, _ in spec) != tuple(convs):
                raise ModelLoadError(
                    f"the checkpoint's cfg conv_feature_layers {spec} disagree with its weights {convs}"
                )
            strides = tuple(s for _, _, s in spec)
        elif kernels in _STANDARD_STRIDES:
            strides = _STANDARD_STRIDES[kernels]
        else:
            raise ModelLoadError(
                f"cannot tell the conv strides for kernels {kernels} without the checkpoint's cfg; "
                "only the standard HuBERT feature extractor is recognised from shapes alone"
            )
        embed_dim = int(state_dict["encoder.layer_norm.weight"].shape[0])
        num_layers = 0
        while f"encoder.layers.{num_layers}.fc1.weight" in state_dict:
            num_layers += 1
        if num_layers == 0:
            raise ModelLoadError("the weights are not a HuBERT model (no encoder.layers.*)")
        pos_weight = state_dict.get(
            "encoder.pos_conv.0.weight_v", state_dict.get("encoder.pos_conv.0.weight")
        )
        if pos_weight is None:
            raise ModelLoadError("the weights have no positional conv (encoder.pos_conv.0.*)")
        if "encoder_attention_heads" in model_cfg:
            num_heads = int(model_cfg["encoder_attention_heads"])
        elif embed_dim % HEAD_DIM == 0:
            num_heads = embed_dim // HEAD_DIM
        else:
            raise ModelLoadError(
                f"cannot tell the attention head count for width {embed_dim} without the checkpoint's cfg"
            )
        activation = model_cfg.get("activation_fn", "gelu")
        if activation != "gelu":
            raise ModelLoadError(f"activation_fn {activation!r} is not supported (only 'gelu')")
        if "feature_extractor.conv_layers.0.2.1.weight" in state_dict:
            extractor_mode = "layer_norm"
        else:
            extractor_mode = str(model_cfg.get("extractor_mode", "default"))
        final = state_dict.get("final_proj.weight")
        values: dict[str, Any] = {
            "conv_layers": tuple((c, k, s) for (c, k), s in zip(convs, strides, strict=True)),
            "conv_bias": "feature_extractor.conv_layers.0.0.bias" in state_dict,
            "extractor_mode": extractor_mode,
            "embed_dim": embed_dim,
            "ffn_dim": int(state_dict["encoder.layers.0.fc1.weight"].shape[0]),
            "num_heads": num_heads,
            "num_layers": num_layers,
            "conv_pos": int(pos_weight.shape[2]),
            "conv_pos_groups": embed_dim // int(pos_weight.shape[1]),
            "final_dim": int(final.shape[0]) if final is not None else 0,
            "layer_norm_first": bool(model_cfg.get("layer_norm_first", False)),
            "use_input_norm": bool(task_cfg.get("normalize", False)),
        }
        return _checked(values)

    @classmethod
    def from_transformers(
        cls, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
    ) -> HubertConfig:
        """Build from a transformers ``config.json`` plus the (renamed) weights for ``final_dim``.

        Raises:
            ModelLoadError: the config is not a HuBERT this module can run.
        """
        if config.get("model_type") != "hubert":
            raise ModelLoadError(f"config.json model_type is {config.get('model_type')!r}, expected 'hubert'")
        for key in ("hidden_act", "feat_extract_activation"):
            if config.get(key, "gelu") != "gelu":
                raise ModelLoadError(f"config.json {key}={config[key]!r} is not supported (only 'gelu')")
        if config.get("conv_pos_batch_norm", False):
            raise ModelLoadError("config.json conv_pos_batch_norm=True is not supported")
        try:
            dims, kernels, strides = (
                [int(n) for n in config.get(key, default)]
                for key, default in (
                    ("conv_dim", [c for c, _, _ in BASE_CONV_LAYERS]),
                    ("conv_kernel", [k for _, k, _ in BASE_CONV_LAYERS]),
                    ("conv_stride", [s for _, _, s in BASE_CONV_LAYERS]),
                )
            )
            norm = config.get("feat_extract_norm", "group")
            final = state_dict.get("final_proj.weight")
            values: dict[str, Any] = {
                "conv_layers": tuple(zip(dims, kernels, strides, strict=True)),
                "conv_bias": bool(config.get("conv_bias", False)),
                "extractor_mode": "default" if norm == "group" else "layer_norm",
                "embed_dim": int(config.get("hidden_size", 768)),
                "ffn_dim": int(config.get("intermediate_size", 3072)),
                "num_heads": int(config.get("num_attention_heads", 12)),
                "num_layers": int(config.get("num_hidden_layers", 12)),
                "conv_pos": int(config.get("num_conv_pos_embeddings", 128)),
                "conv_pos_groups": int(config.get("num_conv_pos_embedding_groups", 16)),
                "final_dim": int(final.shape[0]) if final is not None else 0,
                "layer_norm_first": bool(config.get("do_stable_layer_norm", False)),
                "layer_norm_eps": float(config.get("layer_norm_eps", 1e-5)),
            }
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"config.json has malformed HuBERT settings ({exc})") from exc
        return _checked(values)

    @property
    def conv_dim(self) -> int:
        """Channels out of the conv feature extractor."""
        return self.conv_layers[-1][0]

    @property
    def hop_length(self) -> int:
        """Input samples per output frame (320 for HuBERT base)."""
        return math.prod(stride for _, _, stride in self.conv_layers)

    @property
    def receptive_field(self) -> int:
        """Input samples seen by one output frame (400 for HuBERT base)."""
        size = 1
        for _, kernel, stride in reversed(self.conv_layers):
            size = (size - 1) * stride + kernel
        return size

    @property
    def has_post_extract_proj(self) -> bool:
        """fairseq adds ``post_extract_proj`` only when the conv and model widths differ."""
        return self.conv_dim != self.embed_dim

    def num_frames(self, num_samples: int) -> int:
        """Output frames for an input of ``num_samples`` (0 when too short)."""
        length = num_samples
        for _, kernel, stride in self.conv_layers:
            if length < kernel:
                return 0
            length = (length - kernel) // stride + 1
        return length


@dataclass(frozen=True)
class HubertOutputs:
    """Every intermediate that the golden tests compare.

    Attributes:
        conv_features: (B, T, conv_dim) conv feature-extractor output, before ``layer_norm``.
        hidden_states: num_layers + 1 tensors (B, T, embed_dim): index 0 is after
            ``encoder.layer_norm``, index i after layer i.
    """

    conv_features: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...]


class _Fp32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype, as fairseq does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


class _ConvFeatureExtractor(nn.Module):
    def __init__(self, config: HubertConfig) -> None:
        super().__init__()
        blocks = []
        in_channels = 1
        for index, (channels, kernel, stride) in enumerate(config.conv_layers):
            conv = nn.Conv1d(in_channels, channels, kernel, stride=stride, bias=config.conv_bias)
            # Index 1 is fairseq's dropout slot, kept so that the norm is named conv_layers.0.2.
            if index == 0:
                norm = _Fp32GroupNorm(channels, channels, eps=GROUP_NORM_EPS)
                blocks.append(nn.Sequential(conv, nn.Identity(), norm, nn.GELU()))
            else:
                blocks.append(nn.Sequential(conv, nn.Identity(), nn.GELU()))
            in_channels = channels
        self.conv_layers = nn.ModuleList(blocks)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """wav: (B, L) -> (B, conv_dim, T)."""
        x = wav.unsqueeze(1)
        for index, block in enumerate(self.conv_layers):
            conv, *rest = block
            # The one-input-channel first conv runs ~6x faster channels-last on the CPU.
            x = conv_channels_last(conv, x).contiguous() if index == 0 else conv(x)
            for module in rest:
                x = module(x)
        return x


def conv_channels_last(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for ``x: (B, C, T)``; on the CPU as a ``(1, k)`` 2-D conv on channels-last input.

    oneDNN's channels-last kernels are much faster for HuBERT's first conv (one input channel,
    stride 5) and its grouped positional conv; the numbers are the same up to float rounding.
    Returns a ``(B, C_out, T_out)`` view whose memory is time-major (channels innermost).
    """
    if x.device.type != "cpu":
        return conv(x)
    x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    y = F.conv2d(
        x4,
        conv.weight.unsqueeze(2),
        conv.bias,
        (1, conv.stride[0]),
        (0, conv.padding[0]),
        (1, conv.dilation[0]),
        conv.groups,
    )
    return y.squeeze(2)


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        # Registration order k, v, q, out matches fairseq's state-dict order.
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C); full attention, no mask."""
        batch, frames, channels = x.shape
        heads_shape = (batch, frames, self.num_heads, channels // self.num_heads)
        q = self.q_proj(x).view(heads_shape).transpose(1, 2)
        k = self.k_proj(x).view(heads_shape).transpose(1, 2)
        v = self.v_proj(x).view(heads_shape).transpose(1, 2)
        if q.dtype == torch.bfloat16 and q.device.type == "cpu":
            # torch's CPU attention kernel is slower in bfloat16 (e.g. under autocast) than in float32.
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        else:
            y = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(batch, frames, channels))


class _EncoderLayer(nn.Module):
    def __init__(self, config: HubertConfig) -> None:
        super().__init__()
        self.self_attn = _SelfAttention(config.embed_dim, config.num_heads)
        self.self_attn_layer_norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(config.embed_dim, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.embed_dim)
        self.final_layer_norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Post-norm layer: x: (B, T, C) -> (B, T, C)."""
        x = self.self_attn_layer_norm(x + self.self_attn(x))
        return self.final_layer_norm(x + self.fc2(F.gelu(self.fc1(x))))


class _TransformerEncoder(nn.Module):
    def __init__(self, config: HubertConfig) -> None:
        super().__init__()
        dim, kernel = config.embed_dim, config.conv_pos
        self.pos_conv = nn.Sequential(
            nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=config.conv_pos_groups)
        )
        self.layers = nn.ModuleList(_EncoderLayer(config) for _ in range(config.num_layers))
        self.layer_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.drop_last_frame = kernel % 2 == 0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x + GELU(pos_conv(x)), then LayerNorm: (B, T, C) -> (B, T, C)."""
        pos = conv_channels_last(self.pos_conv[0], x.transpose(1, 2))
        if self.drop_last_frame:
            pos = pos[:, :, :-1]
        return self.layer_norm(x + F.gelu(pos).transpose(1, 2))


class HubertModel(nn.Module):
    """HuBERT with fairseq module names (see the module docstring for the semantics)."""

    def __init__(self, config: HubertConfig) -> None:
        super().__init__()
        self.config = config
        self.feature_extractor = _ConvFeatureExtractor(config)
        self.post_extract_proj: nn.Linear | None = (
            nn.Linear(config.conv_dim, config.embed_dim) if config.has_post_extract_proj else None
        )
        self.encoder = _TransformerEncoder(config)
        self.layer_norm = nn.LayerNorm(config.conv_dim, eps=config.layer_norm_eps)
        self.final_proj: nn.Linear | None = (
            nn.Linear(config.embed_dim, config.final_dim) if config.final_dim else None
        )

    def forward(self, wav: torch.Tensor, output_layer: int | None = None) -> torch.Tensor:
        """Run up to ``output_layer`` (1-based; None = last).

        Args:
            wav: (B, L) audio at 16 kHz, L >= ``config.receptive_field``.

        Returns:
            (B, T, embed_dim) output of layer ``output_layer``.
        """
        last = self.config.num_layers if output_layer is None else output_layer
        if not 1 <= last <= self.config.num_layers:
            raise ValueError(f"output_layer must be in 1..{self.config.num_layers}, got {output_layer}")
        x = self._embed(self.feature_extractor(self._normalise(wav)).transpose(1, 2))
        for layer in self.encoder.layers[:last]:
            x = layer(x)
        return x

    def forward_all(self, wav: torch.Tensor) -> HubertOutputs:
        """All intermediates for ``wav: (B, L)``; see :class:`HubertOutputs`."""
        conv_features = self.feature_extractor(self._normalise(wav)).transpose(1, 2)
        states = [self._embed(conv_features)]
        for layer in self.encoder.layers:
            states.append(layer(states[-1]))
        return HubertOutputs(conv_features=conv_features, hidden_states=tuple(states))

    def _normalise(self, wav: torch.Tensor) -> torch.Tensor:
        if self.config.use_input_norm:
            return F.layer_norm(wav, wav.shape[-1:])
        return wav

    def _embed(self, conv_features: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(conv_features)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.encoder.embed(x)


class HubertEncoder(ContentEncoder):
    """A :class:`HubertModel` behind the :class:`ContentEncoder` interface.

    Args:
        model: loaded weights (put in eval mode, gradients off).
        name: label for logs and metadata.
        output_layer: layer whose output is returned (1-based; None = last).
        use_final_proj: pass that output through ``final_proj``.
    """

    sample_rate = CONTENT_SAMPLE_RATE

    def __init__(
        self,
        model: HubertModel,
        *,
        name: str = "hubert",
        output_layer: int | None = None,
        use_final_proj: bool = False,
    ) -> None:
        config = model.config
        layer = config.num_layers if output_layer is None else output_layer
        if not 1 <= layer <= config.num_layers:
            raise ModelLoadError(
                f"{name}: output layer {layer} requested but the model has {config.num_layers} layers"
            )
        if use_final_proj and model.final_proj is None:
            raise ModelLoadError(
                f"{name}: the checkpoint has no final_proj, so it cannot give projected features"
            )
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.output_layer = layer
        self.use_final_proj = use_final_proj
        self.dim = config.final_dim if use_final_proj else config.embed_dim
        self.hop_length = config.hop_length

    @classmethod
    def from_preset(cls, model: HubertModel, output: str, *, name: str = "hubert") -> HubertEncoder:
        """``output="v1"``: layer 9 then ``final_proj``; ``output="v2"``: last layer, no projection."""
        if output == "v1":
            return cls(model, name=name, output_layer=V1_OUTPUT_LAYER, use_final_proj=True)
        if output == "v2":
            return cls(model, name=name, output_layer=None, use_final_proj=False)
        raise ValueError(f"output must be 'v1' or 'v2', got {output!r}")

    @property
    def config(self) -> HubertConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.layer_norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.layer_norm.weight.dtype

    def num_frames(self, num_samples: int) -> int:
        """Frames ``encode`` returns for ``num_samples`` input samples."""
        return self.config.num_frames(num_samples)

    def encode(self, wav_16k: torch.Tensor) -> torch.Tensor:
        """wav_16k: (B, L) float audio at 16 kHz -> (B, T, dim) float32, T = num_frames(L)."""
        with torch.inference_mode():
            feats = self.model(self._prepare(wav_16k), output_layer=self.output_layer)
            if self.use_final_proj:
                feats = self.model.final_proj(feats)
            feats = feats.float()
        # Inference tensors refuse in-place edits outside inference mode; callers get a plain tensor.
        return feats if torch.is_inference_mode_enabled() else feats.clone()

    @torch.inference_mode()
    def hidden_states(self, wav_16k: torch.Tensor) -> HubertOutputs:
        """Conv features and every layer's output for ``wav_16k: (B, L)``, in the model dtype."""
        return self.model.forward_all(self._prepare(wav_16k))

    def _prepare(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.ndim != 2 or not wav.is_floating_point():
            raise ValueError(f"expected float audio of shape (B, L), got {tuple(wav.shape)} {wav.dtype}")
        if wav.shape[1] < self.config.receptive_field:
            raise ValueError(
                f"audio too short for {self.name}: {wav.shape[1]} samples, need at least "
                f"{self.config.receptive_field} samples at {self.sample_rate} Hz"
            )
        return wav.to(device=self.device, dtype=self.dtype)


def convert_fairseq_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fairseq HubertModel tensors -> :class:`HubertModel` tensors.

    Drops :data:`IGNORED_FAIRSEQ_KEYS` and folds the weight norm of
    :data:`FOLDED_WEIGHT_NORM_KEYS` (``w = g * v / ||v||``, norm over every dim but 2); the
    folded weight is float32. Order is kept. Works on meta tensors.
    """
    parts = {part: folded for folded, pair in FOLDED_WEIGHT_NORM_KEYS.items() for part in pair}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in IGNORED_FAIRSEQ_KEYS:
            continue
        folded = parts.get(key)
        if folded is None:
            out[key] = value
        elif folded not in out:
            g_key, v_key = FOLDED_WEIGHT_NORM_KEYS[folded]
            if g_key not in state_dict or v_key not in state_dict:
                raise ModelLoadError(f"weight norm of {folded} needs both {g_key} and {v_key}")
            out[folded] = fold_weight_norm(state_dict[g_key], state_dict[v_key], WEIGHT_NORM_DIM)
    return out


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor, dim: int) -> torch.Tensor:
    """``g * v / ||v||`` with the norm over every dim except ``dim``, in float32."""
    v = v.float()
    reduce_dims = tuple(d for d in range(v.ndim) if d != dim)
    return v * (g.float() / torch.linalg.vector_norm(v, dim=reduce_dims, keepdim=True))


def convert_transformers_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``HubertModel`` key names -> fairseq key names (tensors unchanged).

    Handles a ``hubert.`` prefix (task heads), and the positional conv's weight norm stored
    as ``weight_g``/``weight_v`` or as ``parametrizations.weight.original0``/``original1``.
    Keys that need no rename (``encoder.layer_norm``, ``final_layer_norm``, ``final_proj``)
    pass through.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = key.removeprefix("hubert.")
        for pattern, replacement in _TRANSFORMERS_RULES:
            renamed, count = pattern.subn(replacement, name)
            if count:
                name = renamed
                break
        if name in out:
            raise ModelLoadError(f"two tensors map to {name!r} (second one: {key!r})")
        out[name] = value
    return out


def read_hubert_checkpoint(path: str | Path) -> tuple[HubertConfig, dict[str, torch.Tensor]]:
    """Read a fairseq checkpoint file or a transformers folder into (config, model tensors).

    The tensors are already converted (:func:`convert_fairseq_state_dict`), in their file dtype.

    Raises:
        ModelLoadError: unreadable, or not a HuBERT checkpoint.
        UnsafeFileError: a ``pytorch_model.bin`` whose pickle asks for code.
    """
    path = Path(path)
    if path.is_dir():
        config, fairseq_named = _read_transformers_folder(path)
    else:
        config, fairseq_named = _read_fairseq_file(path)
    return config, convert_fairseq_state_dict(fairseq_named)


def build_hubert(
    config: HubertConfig,
    state_dict: Mapping[str, torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    source: str = "checkpoint",
) -> HubertModel:
    """Make a :class:`HubertModel` holding exactly ``state_dict`` (strict; no random init).

    Raises:
        ModelLoadError: missing, unexpected or mis-shaped tensors (the message lists them).
    """
    return materialize(
        lambda: HubertModel(config),
        state_dict,
        device=device,
        dtype=dtype,
        what="a HuBERT model",
        source=source,
        hint="; is this a HuBERT-base / ContentVec checkpoint?",
    )


def load_hubert(
    path: str | Path,
    *,
    output: str = "v2",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    name: str | None = None,
) -> HubertEncoder:
    """Load ``hubert_base.pt`` / ContentVec (fairseq file) or a transformers HuBERT folder.

    Args:
        path: checkpoint file or transformers folder.
        output: ``"v1"`` (layer 9 + final_proj) or ``"v2"`` (last layer).
        device: where to compute.
        dtype: weight dtype.
        name: encoder label; defaults to the file or folder name.
    """
    path = Path(path)
    config, state_dict = read_hubert_checkpoint(path)
    model = build_hubert(config, state_dict, device=device, dtype=dtype, source=path.name)
    log.info(
        "loaded HuBERT %s: %d layers, width %d, output %s",
        path.name,
        config.num_layers,
        config.embed_dim,
        output,
    )
    return HubertEncoder.from_preset(model, output, name=name or path.stem)


def register_builtins() -> None:
    """Register ``hubert_base`` and the readers for torch files and transformers HuBERT folders."""
    register_content_encoder("hubert_base", _load_hubert_base)
    register_content_reader("torch", _read_any)
    register_content_reader("hubert", _read_any)


def _load_hubert_base(
    source: Path, *, output: str, device: torch.device, dtype: torch.dtype
) -> HubertEncoder:
    for relative in HUBERT_BASE_FILENAMES:
        candidate = source / relative
        if candidate.is_file():
            return load_hubert(candidate, output=output, device=device, dtype=dtype, name="hubert_base")
    raise AssetError(
        f"hubert_base.pt not found in {source} (looked for {', '.join(HUBERT_BASE_FILENAMES)}); "
        "download it with `python -m infer assets download hubert_base.pt`, or pass the checkpoint's path"
    )


def _read_any(source: Path, *, output: str, device: torch.device, dtype: torch.dtype) -> HubertEncoder:
    return load_hubert(source, output=output, device=device, dtype=dtype)


def _checked(values: dict[str, Any]) -> HubertConfig:
    try:
        return HubertConfig(**values)
    except ValueError as exc:
        raise ModelLoadError(f"unsupported HuBERT checkpoint: {exc}") from exc


def _plain_fairseq_cfg(cfg: Any) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """(model section, task section) of a plain-dict fairseq cfg; empty for anything else."""
    if not isinstance(cfg, Mapping):
        return {}, {}
    model_cfg = cfg.get("model")
    task_cfg = cfg.get("task")
    return (
        model_cfg if isinstance(model_cfg, Mapping) else {},
        task_cfg if isinstance(task_cfg, Mapping) else {},
    )


def _parse_conv_spec(spec: str) -> list[tuple[int, int, int]]:
    """Parse fairseq's ``"[(512,10,5)] + [(512,3,2)] * 4"`` without evaluating code."""
    layers: list[tuple[int, int, int]] = []
    try:
        for term in spec.split("+"):
            match = re.fullmatch(r"\s*(\[.*\])\s*(?:\*\s*(\d+))?\s*", term)
            if match is None:
                raise ValueError(f"unexpected term {term!r}")
            items = ast.literal_eval(match.group(1))
            repeat = int(match.group(2) or 1)
            for _ in range(repeat):
                layers.extend((int(c), int(k), int(s)) for c, k, s in items)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise ModelLoadError(f"cannot parse conv_feature_layers {spec!r} ({exc})") from exc
    return layers


def _read_fairseq_file(path: Path) -> tuple[HubertConfig, dict[str, torch.Tensor]]:
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    obj = load_checkpoint_stubbed(path)
    cfg: Any = None
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        state_dict, cfg = obj["model"], obj.get("cfg")
    elif isinstance(obj, Mapping) and _CONV_KEY.format(0) in obj:
        state_dict = obj
    elif isinstance(obj, Mapping) and "weight" in obj and "config" in obj:
        raise ModelLoadError(
            f"{path.name} is an RVC voice model, not a content encoder; pass hubert_base.pt "
            "(or a ContentVec checkpoint) as the content encoder and this file as the voice model"
        )
    else:
        raise ModelLoadError(
            f"{path.name}: not a HuBERT checkpoint (expected a fairseq file with a 'model' state dict); "
            "pass hubert_base.pt or a ContentVec checkpoint"
        )
    tensors = {key: value for key, value in state_dict.items() if isinstance(value, torch.Tensor)}
    if len(tensors) != len(state_dict) or _CONV_KEY.format(0) not in tensors:
        raise ModelLoadError(
            f"{path.name}: its 'model' entry is not a HuBERT state dict; "
            "pass hubert_base.pt or a ContentVec checkpoint"
        )
    try:
        config = HubertConfig.from_state_dict(tensors, cfg=cfg)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path.name}: {exc}") from exc
    return config, tensors


def _read_transformers_folder(folder: Path) -> tuple[HubertConfig, dict[str, torch.Tensor]]:
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{folder.name}: cannot read config.json ({exc})") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_path}: expected a JSON object")
    safetensors_path = folder / "model.safetensors"
    bin_path = folder / "pytorch_model.bin"
    if safetensors_path.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(safetensors_path))
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{safetensors_path}: not a readable safetensors file ({exc})") from exc
    elif bin_path.is_file():
        raw = load_checkpoint(bin_path)
    else:
        raise ModelLoadError(
            f"{folder.name}: no model.safetensors or pytorch_model.bin "
            "(sharded checkpoints are not supported)"
        )
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ModelLoadError(f"{folder.name}: the weights file is not a plain state dict")
    state_dict = convert_transformers_state_dict(raw)
    if _CONV_KEY.format(0) not in state_dict:
        raise ModelLoadError(f"{folder.name}: the weights are not a transformers HuBERT model")
    try:
        hubert_config = HubertConfig.from_transformers(config, state_dict)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{folder.name}: {exc}") from exc
    return hubert_config, state_dict
