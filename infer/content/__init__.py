"""Content encoders: audio at 16 kHz in, content features out (HuBERT / ContentVec, others later)."""

from infer.content.base import (
    ContentEncoder,
    ContentEncoderFactory,
    available_content_encoders,
    clear_content_encoder_cache,
    load_content_encoder,
    register_content_encoder,
    register_content_reader,
)
from infer.content.hubert import (
    HubertConfig,
    HubertEncoder,
    HubertModel,
    HubertOutputs,
    load_hubert,
)

__all__ = [
    "ContentEncoder",
    "ContentEncoderFactory",
    "HubertConfig",
    "HubertEncoder",
    "HubertModel",
    "HubertOutputs",
    "available_content_encoders",
    "clear_content_encoder_cache",
    "load_content_encoder",
    "load_hubert",
    "register_content_encoder",
    "register_content_reader",
]
