"""Span evidence heads: start/end (linear or MLP) and biaffine (start, end) pair scoring.

Start/end heads give, per output, a start and an end logit for every token ([B, n_outputs, T]);
the null span is (0, 0) and scores start[0] + end[0]. The biaffine head scores every (start,
end) pair directly ([B, n_outputs, T, T]); the null span is the pair (0, 0).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanhpo.models.evidence import (
    MASK_VALUE,
    NULL_INDEX,
    Candidates,
    EvidenceHead,
    TokenSpans,
    allowed_pairs,
    apply_null_threshold,
    best_spans,
    targeted_outputs,
)
from leanhpo.models.losses import IGNORE_INDEX, span_loss


def span_candidates(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    span_mask: torch.Tensor,
    max_answer_tokens: int,
) -> Candidates:
    """Best (start, end) per example and output, and its null margin.

    start/end logits: [B, n_outputs, T]; span_mask: [B, T]. A span needs start <= end < start +
    max_answer_tokens on post tokens; the margin is start[0] + end[0] minus its score.
    """
    start_logits, end_logits = start_logits.detach(), end_logits.detach()
    pair_scores = start_logits[..., :, None] + end_logits[..., None, :]
    null_scores = start_logits[..., NULL_INDEX] + end_logits[..., NULL_INDEX]
    allowed = allowed_pairs(span_mask.to(start_logits.device), max_answer_tokens)
    return best_spans(pair_scores, null_scores, allowed)


def decode_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    span_mask: torch.Tensor,
    max_answer_tokens: int,
    null_threshold: float,
) -> TokenSpans:
    """Best (start, end) per example and output, or None where null wins by > threshold."""
    return apply_null_threshold(
        span_candidates(start_logits, end_logits, span_mask, max_answer_tokens), null_threshold
    )


class _StartEndHead(EvidenceHead):
    """Shared loss (start and end cross-entropy) and decoding of the start/end heads."""

    n_outputs: int

    def _outputs(
        self, logits: torch.Tensor, span_mask: torch.Tensor, features: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        start, end = logits.split(self.n_outputs, dim=-1)  # [B, T, n_outputs] each
        allowed = span_mask.bool().unsqueeze(1)  # [B, 1, T]; the null index is always allowed
        return {
            "start_logits": start.transpose(1, 2).float().masked_fill(~allowed, MASK_VALUE),
            "end_logits": end.transpose(1, 2).float().masked_fill(~allowed, MASK_VALUE),
            "evidence_features": features,
        }

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        return span_loss(
            outputs["start_logits"],
            outputs["end_logits"],
            batch["start_positions"],
            batch["end_positions"],
        )

    def loss_denominator(self, batch: dict[str, Any]) -> int:
        return targeted_outputs(batch)

    def candidates(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, Any], max_answer_tokens: int
    ) -> Candidates:
        return span_candidates(
            outputs["start_logits"], outputs["end_logits"], batch["span_mask"], max_answer_tokens
        )


class StartEndLinearHead(_StartEndHead):
    """Per output, one start and one end logit for every token, from a linear layer."""

    def __init__(
        self, hidden_size: int, n_outputs: int, dropout: float, head_hidden_size: int
    ) -> None:
        super().__init__()
        self.n_outputs = n_outputs
        self.feature_size = 2 * n_outputs
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(hidden_size, 2 * n_outputs)

    def forward(
        self,
        hidden: torch.Tensor,
        span_mask: torch.Tensor,
        sentence_spans: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        logits = self.projection(self.dropout(hidden))  # [B, T, 2 * n_outputs]
        return self._outputs(logits, span_mask, logits)


class StartEndMLPHead(_StartEndHead):
    """As start_end_linear, through a hidden GELU layer of `head_hidden_size` units."""

    def __init__(
        self, hidden_size: int, n_outputs: int, dropout: float, head_hidden_size: int
    ) -> None:
        super().__init__()
        self.n_outputs = n_outputs
        self.feature_size = head_hidden_size
        self.hidden = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(hidden_size, head_hidden_size), nn.GELU()
        )
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(head_hidden_size, 2 * n_outputs)

    def forward(
        self,
        hidden: torch.Tensor,
        span_mask: torch.Tensor,
        sentence_spans: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        features = self.hidden(hidden)
        return self._outputs(self.projection(self.dropout(features)), span_mask, features)


class BiaffineHead(EvidenceHead):
    """Dozat & Manning's biaffine scorer over (start, end) token pairs, one matrix per output.

    score(i, j) = [s_i; 1]^T U [e_j; 1], with s and e start and end token representations, so
    the bilinear, both linear terms and a bias are all in U. Training scores every pair with
    start <= end on post tokens (a gold span is never impossible); decoding also keeps
    end < start + max_answer_tokens.
    """

    def __init__(
        self, hidden_size: int, n_outputs: int, dropout: float, head_hidden_size: int
    ) -> None:
        super().__init__()
        self.feature_size = 2 * head_hidden_size
        self.start = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(hidden_size, head_hidden_size), nn.GELU()
        )
        self.end = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(hidden_size, head_hidden_size), nn.GELU()
        )
        size = head_hidden_size + 1
        self.bilinear = nn.Parameter(torch.empty(n_outputs, size, size))
        nn.init.xavier_uniform_(self.bilinear.view(n_outputs * size, size))

    def forward(
        self,
        hidden: torch.Tensor,
        span_mask: torch.Tensor,
        sentence_spans: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        starts, ends = self.start(hidden), self.end(hidden)  # [B, T, d]
        ones = starts.new_ones(*starts.shape[:2], 1)
        start_aug, end_aug = torch.cat([starts, ones], -1), torch.cat([ends, ones], -1)
        left = torch.einsum("bid,ode->boie", start_aug, self.bilinear)  # [B, n, T, d+1]
        scores = left @ end_aug.transpose(1, 2).unsqueeze(1)  # [B, n, T, T]
        allowed = allowed_pairs(span_mask, None)
        allowed[:, NULL_INDEX, NULL_INDEX] = True
        return {
            "span_scores": scores.float().masked_fill(~allowed[:, None], MASK_VALUE),
            "evidence_features": torch.cat([starts, ends], -1),
        }

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        scores = outputs["span_scores"]
        n_tokens = scores.shape[-1]
        start, end = batch["start_positions"], batch["end_positions"]
        target = torch.where(start == IGNORE_INDEX, IGNORE_INDEX, start * n_tokens + end)
        if not bool((target != IGNORE_INDEX).any()):
            return scores.sum() * 0.0
        return F.cross_entropy(
            scores.reshape(-1, n_tokens * n_tokens), target.reshape(-1), ignore_index=IGNORE_INDEX
        )

    def loss_denominator(self, batch: dict[str, Any]) -> int:
        return targeted_outputs(batch)

    def candidates(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, Any], max_answer_tokens: int
    ) -> Candidates:
        scores = outputs["span_scores"]
        allowed = allowed_pairs(batch["span_mask"].to(scores.device), max_answer_tokens)
        return best_spans(scores, scores[..., NULL_INDEX, NULL_INDEX], allowed)
