"""Models: encoder catalog, heads, losses, coupling. Pure torch; no I/O beyond loading."""

from leanhpo.models.encoder import EncoderInfo, ModelLoadError, load_encoder
from leanhpo.models.evidence import Candidates, EvidenceHead, TokenSpans, apply_null_threshold
from leanhpo.models.losses import IGNORE_INDEX, criteria_loss, span_loss
from leanhpo.models.multitask import (
    EVIDENCE_HEADS,
    NULL_INDEX,
    HeadSettings,
    MultiTaskModel,
    architecture_signature,
    compatibility_metadata,
)

__all__ = [
    "EVIDENCE_HEADS",
    "IGNORE_INDEX",
    "NULL_INDEX",
    "Candidates",
    "EncoderInfo",
    "EvidenceHead",
    "HeadSettings",
    "ModelLoadError",
    "MultiTaskModel",
    "TokenSpans",
    "apply_null_threshold",
    "architecture_signature",
    "compatibility_metadata",
    "criteria_loss",
    "load_encoder",
    "span_loss",
]
