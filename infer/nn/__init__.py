"""Neural building blocks of the RVC-compatible synthesizer and its discriminators."""

from infer.nn.attention import FeedForward, LayerNorm, RelativeMultiHeadAttention, RelativeTransformerEncoder
from infer.nn.configs import ConfigError
from infer.nn.discriminators import (
    DiscriminatorConfig,
    MultiPeriodDiscriminator,
    PeriodDiscriminator,
    ScaleDiscriminator,
)
from infer.nn.encoders import PosteriorEncoder, TextEncoder
from infer.nn.flows import Flip, ResidualCouplingBlock, ResidualCouplingLayer
from infer.nn.generator import HiFiGANGenerator, ResBlock1, ResBlock2, SineGenerator, SourceModuleHnNSF
from infer.nn.masks import rand_slice_segments, sequence_mask, slice_segments
from infer.nn.wavenet import WaveNet
from infer.nn.weight_norm import (
    WeightNormConv1d,
    WeightNormConv2d,
    WeightNormConvTranspose1d,
    fold_weight_norm,
    unfold_weight_norm,
)

__all__ = [
    "ConfigError",
    "DiscriminatorConfig",
    "FeedForward",
    "Flip",
    "HiFiGANGenerator",
    "LayerNorm",
    "MultiPeriodDiscriminator",
    "PeriodDiscriminator",
    "PosteriorEncoder",
    "RelativeMultiHeadAttention",
    "RelativeTransformerEncoder",
    "ResBlock1",
    "ResBlock2",
    "ResidualCouplingBlock",
    "ResidualCouplingLayer",
    "ScaleDiscriminator",
    "SineGenerator",
    "SourceModuleHnNSF",
    "TextEncoder",
    "WaveNet",
    "WeightNormConv1d",
    "WeightNormConv2d",
    "WeightNormConvTranspose1d",
    "fold_weight_norm",
    "rand_slice_segments",
    "sequence_mask",
    "slice_segments",
    "unfold_weight_norm",
]
