"""The interface every evidence head implements, and the span search the decoders share.

An evidence head turns the encoder's tokens into scores, its own loss and, per example and
output, a TOKEN span or None (the null span: no evidence for this symptom in this post).
Callers (the training loop) never look inside: they call `forward`, `loss` and `decode`.

- `forward(hidden [B, T, H], span_mask [B, T], sentence_spans [B, S, 2] | None)` returns a dict
  of float tensors: the head's scores (its own keys) and `evidence_features` [B, T, feature_size],
  the per-token representation that task coupling pools.
- `loss(outputs, batch)` reads the targets from the batch (`start_positions`, `end_positions`
  [B, n_outputs], IGNORE_INDEX = excluded; `sentence_targets` for the reranker).
- `loss_denominator(batch)`: how many terms `loss` averages over in this batch (0: none, and
  the loss is a zero). Weighting a part of a batch's loss by its share of the batch's
  denominator makes the parts add up to the batch's loss (training micro-batches).
- `candidates(outputs, batch, max_answer_tokens)` -> list (examples) of lists (outputs) of
  (best span, null margin): the best (start_token, end_token) inclusive, or None when no span
  is possible, and the null score minus that span's score (inf when no span is possible).
- `decode(outputs, batch, max_answer_tokens, null_threshold)`: the candidates under a threshold:
  null when the null margin exceeds `null_threshold` (SQuAD 2.0), so a larger threshold
  predicts fewer nulls. Keeping the margin lets the trainer calibrate the threshold after a
  single pass (`leanhpo.training.calibrate`).

`span_mask` is True on the post's tokens and on the null index 0 (CLS); real spans lie on post
tokens only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from leanhpo.models.losses import IGNORE_INDEX

NULL_INDEX = 0
# Large but finite, so that masked logits stay finite under bf16 autocast as well.
MASK_VALUE = -1.0e4

Span = tuple[int, int]
TokenSpans = list[list[Span | None]]
Candidate = tuple[Span | None, float]  # (best span or None, null score - best span score)
Candidates = list[list[Candidate]]
NO_SPAN: Candidate = (None, float("inf"))


class EvidenceHead(nn.Module):
    """Base class: see the module docstring for the contract."""

    feature_size: int

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def loss_denominator(self, batch: dict[str, Any]) -> int:
        raise NotImplementedError

    def candidates(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, Any], max_answer_tokens: int
    ) -> Candidates:
        raise NotImplementedError

    def decode(
        self,
        outputs: dict[str, torch.Tensor],
        batch: dict[str, Any],
        max_answer_tokens: int,
        null_threshold: float,
    ) -> TokenSpans:
        return apply_null_threshold(
            self.candidates(outputs, batch, max_answer_tokens), null_threshold
        )


def apply_null_threshold(candidates: Candidates, null_threshold: float) -> TokenSpans:
    """Each candidate's span, or None (null) where its null margin exceeds the threshold."""
    return [
        [span if span is not None and margin <= null_threshold else None for span, margin in row]
        for row in candidates
    ]


def targeted_outputs(batch: dict[str, Any]) -> int:
    """(example, output) entries with a span target: what the span cross-entropies average
    over (start and end are excluded together, so one count serves both)."""
    return int((batch["start_positions"] != IGNORE_INDEX).sum())


def post_tokens(span_mask: torch.Tensor) -> torch.Tensor:
    """The tokens a real span may use: span_mask without the null index."""
    valid = span_mask.bool().clone()
    valid[:, NULL_INDEX] = False
    return valid


def allowed_pairs(span_mask: torch.Tensor, max_answer_tokens: int | None) -> torch.Tensor:
    """[B, T, T]: (start, end) on post tokens, start <= end (< start + max_answer_tokens)."""
    n_tokens = span_mask.shape[-1]
    index = torch.arange(n_tokens, device=span_mask.device)
    band = index[None, :] >= index[:, None]
    if max_answer_tokens is not None:
        band = band & (index[None, :] < index[:, None] + max_answer_tokens)
    valid = post_tokens(span_mask)
    return band[None] & valid[:, :, None] & valid[:, None, :]


def best_spans(
    pair_scores: torch.Tensor, null_scores: torch.Tensor, allowed: torch.Tensor
) -> Candidates:
    """Best allowed (start, end) per example and output, with its null margin.

    pair_scores [B, n_outputs, T, T]; null_scores [B, n_outputs]; allowed [B, T, T].
    """
    pair_scores, null_scores = pair_scores.detach().float(), null_scores.detach().float()
    n_tokens = pair_scores.shape[-1]
    masked = pair_scores.masked_fill(~allowed[:, None], float("-inf"))
    best, flat = masked.flatten(2).max(dim=-1)
    best_list, flat_list, null_list = best.tolist(), flat.tolist(), null_scores.tolist()
    results: Candidates = []
    for row_best, row_flat, row_null in zip(best_list, flat_list, null_list, strict=True):
        row: list[Candidate] = []
        for score, position, null in zip(row_best, row_flat, row_null, strict=True):
            if score == float("-inf"):
                row.append(NO_SPAN)
            else:
                row.append(((position // n_tokens, position % n_tokens), null - score))
        results.append(row)
    return results
