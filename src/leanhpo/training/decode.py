"""Evidence decoding: the model's evidence head gives token spans; this maps them to characters.

Each evidence head decodes its own scores (start/end, biaffine pairs, CRF tags, sentence scores)
to TOKEN spans or None (the null span) under `model.max_answer_tokens` and
`model.null_threshold`; see `leanhpo.models.evidence` for the contract.
"""

from __future__ import annotations

from typing import Any

import torch

from leanhpo.config import ModelConfig
from leanhpo.models import MultiTaskModel, TokenSpans
from leanhpo.models.span_heads import decode_spans

__all__ = ["char_span", "decode_batch", "decode_spans"]


def decode_batch(
    model: MultiTaskModel,
    outputs: dict[str, torch.Tensor],
    batch: dict[str, Any],
    model_cfg: ModelConfig,
) -> TokenSpans:
    """Token spans per example and output, whatever the evidence head."""
    return model.decode_evidence(
        outputs, batch, model_cfg.max_answer_tokens, model_cfg.null_threshold
    )


def char_span(
    offsets: list[tuple[int, int]], token_span: tuple[int, int] | None
) -> tuple[int, int] | None:
    """(first char, end char) of an inclusive token span; None stays None (null)."""
    if token_span is None:
        return None
    return offsets[token_span[0]][0], offsets[token_span[1]][1]
