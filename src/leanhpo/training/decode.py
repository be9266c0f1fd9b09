"""Decode start/end logits into a token span or the null span."""

from __future__ import annotations

import torch

from leanhpo.models.multitask import NULL_INDEX


def decode_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    span_mask: torch.Tensor,
    max_answer_tokens: int,
    null_threshold: float,
) -> list[list[tuple[int, int] | None]]:
    """Best (start, end) per example and output, or None for the null span.

    start/end logits: [B, n_outputs, T]; span_mask: [B, T] (True where a span may lie; the null
    index 0 is excluded from real spans). A span needs start <= end < start + max_answer_tokens.
    The null span wins when its score minus the best span's score exceeds `null_threshold`
    (SQuAD 2.0 convention), so a larger threshold predicts fewer nulls.
    """
    start_logits, end_logits = start_logits.detach(), end_logits.detach()
    n_tokens = start_logits.shape[-1]
    index = torch.arange(n_tokens)
    band = (index[None, :] >= index[:, None]) & (
        index[None, :] < index[:, None] + max_answer_tokens
    )
    results: list[list[tuple[int, int] | None]] = []
    for row in range(start_logits.shape[0]):
        valid = span_mask[row].clone()
        valid[NULL_INDEX] = False
        allowed = band & valid[:, None] & valid[None, :]  # [T, T]
        scores = start_logits[row][:, :, None] + end_logits[row][:, None, :]  # [n_out, T, T]
        scores = scores.masked_fill(~allowed, float("-inf"))
        best, flat = scores.reshape(scores.shape[0], -1).max(dim=-1)
        null = start_logits[row][:, NULL_INDEX] + end_logits[row][:, NULL_INDEX]
        row_spans: list[tuple[int, int] | None] = []
        for out in range(scores.shape[0]):
            if not torch.isfinite(best[out]) or float(null[out] - best[out]) > null_threshold:
                row_spans.append(None)
            else:
                position = int(flat[out])
                row_spans.append((position // n_tokens, position % n_tokens))
        results.append(row_spans)
    return results
