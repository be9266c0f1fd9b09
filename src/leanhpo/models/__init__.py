"""Models: encoder catalog, heads, losses. Pure torch; no I/O beyond loading an encoder."""

from leanhpo.models.encoder import EncoderInfo, ModelLoadError, load_encoder
from leanhpo.models.losses import IGNORE_INDEX, criteria_loss, span_loss
from leanhpo.models.multitask import (
    NULL_INDEX,
    HeadSettings,
    MultiTaskModel,
    architecture_signature,
    compatibility_metadata,
)

__all__ = [
    "IGNORE_INDEX",
    "NULL_INDEX",
    "EncoderInfo",
    "HeadSettings",
    "ModelLoadError",
    "MultiTaskModel",
    "architecture_signature",
    "compatibility_metadata",
    "criteria_loss",
    "load_encoder",
    "span_loss",
]
