"""Evidence decoding: the model's evidence head gives token spans; this maps them to characters.

Each evidence head decodes its own scores (start/end, biaffine pairs, CRF tags, sentence scores)
to TOKEN span candidates (best span and null margin) under `model.max_answer_tokens`; the null
threshold (`model.null_threshold`, or calibrated on validation) is applied to the margins. See
`leanhpo.models.evidence` for the contract and `leanhpo.training.calibrate` for calibration.
"""

from __future__ import annotations

from leanhpo.models.span_heads import decode_spans

__all__ = ["char_span", "decode_spans"]


def char_span(
    offsets: list[tuple[int, int]], token_span: tuple[int, int] | None
) -> tuple[int, int] | None:
    """(first char, end char) of an inclusive token span; None stays None (null)."""
    if token_span is None:
        return None
    return offsets[token_span[0]][0], offsets[token_span[1]][1]
