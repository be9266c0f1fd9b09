"""Sentence reranker evidence head: score the post's sentences, pick the best one or none.

Sentence boundaries come from the features (`sentence_spans` [B, S, 2], inclusive token spans,
padding rows have end < start). A sentence is the mean of its projected tokens; the null
candidate is scored from the CLS token. Per output the candidates are [null, sentence 1..S]
and the loss is their cross-entropy against `sentence_targets` [B, n_outputs] (0 = null,
k = sentence k, IGNORE_INDEX = excluded).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanhpo.models.evidence import (
    MASK_VALUE,
    NO_SPAN,
    NULL_INDEX,
    Candidate,
    Candidates,
    EvidenceHead,
)
from leanhpo.models.losses import IGNORE_INDEX


def sentence_membership(sentence_spans: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """[B, S, 2] inclusive token spans -> [B, S, T] 0/1 membership (padding rows are empty)."""
    index = torch.arange(n_tokens, device=sentence_spans.device)
    starts, ends = sentence_spans[..., 0:1], sentence_spans[..., 1:2]
    return ((index >= starts) & (index <= ends)).float()


class SentenceRerankerHead(EvidenceHead):
    def __init__(
        self, hidden_size: int, n_outputs: int, dropout: float, head_hidden_size: int
    ) -> None:
        super().__init__()
        self.feature_size = head_hidden_size
        self.tokens = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(hidden_size, head_hidden_size), nn.GELU()
        )
        self.dropout = nn.Dropout(dropout)
        self.sentence_scorer = nn.Linear(head_hidden_size, n_outputs)
        self.null_scorer = nn.Linear(hidden_size, n_outputs)

    def forward(
        self,
        hidden: torch.Tensor,
        span_mask: torch.Tensor,
        sentence_spans: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if sentence_spans is None:
            raise ValueError("the sentence_reranker head needs the batch's sentence_spans")
        tokens = self.tokens(hidden)  # [B, T, d]
        membership = sentence_membership(sentence_spans, hidden.shape[1]).to(tokens.dtype)
        counts = membership.sum(-1, keepdim=True)  # [B, S, 1]
        sentences = (membership @ tokens) / counts.clamp(min=1.0)  # [B, S, d]
        sentence_logits = self.sentence_scorer(self.dropout(sentences)).transpose(1, 2)
        null_logits = self.null_scorer(self.dropout(hidden[:, NULL_INDEX]))  # [B, n]
        logits = torch.cat([null_logits.unsqueeze(-1), sentence_logits], dim=-1).float()
        present = torch.cat([counts.new_ones(counts.shape[0], 1), counts.squeeze(-1)], -1) > 0
        return {
            "sentence_logits": logits.masked_fill(~present[:, None, :], MASK_VALUE),
            "evidence_features": tokens,
        }

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        logits = outputs["sentence_logits"]
        targets = batch["sentence_targets"]
        if not bool((targets != IGNORE_INDEX).any()):
            return logits.sum() * 0.0
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )

    def loss_denominator(self, batch: dict[str, Any]) -> int:
        return int((batch["sentence_targets"] != IGNORE_INDEX).sum())

    def candidates(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, Any], max_answer_tokens: int
    ) -> Candidates:
        """The best sentence's token span and the null score minus its score.

        Sentences are the unit here, so `max_answer_tokens` does not cut them.
        """
        logits = outputs["sentence_logits"].detach().float().cpu()
        spans = batch["sentence_spans"].cpu().tolist()  # collate pads to >= 1 sentence
        margin = logits[..., 0] - logits[..., 1:].max(dim=-1).values
        index = logits[..., 1:].argmax(dim=-1)
        results: Candidates = []
        for row in range(logits.shape[0]):
            row_spans: list[Candidate] = []
            for out in range(logits.shape[1]):
                start, end = spans[row][int(index[row, out])]
                padding = end < start
                candidate = ((int(start), int(end)), float(margin[row, out]))
                row_spans.append(NO_SPAN if padding else candidate)
            results.append(row_spans)
        return results
