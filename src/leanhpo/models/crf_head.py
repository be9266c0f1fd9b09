"""BIO tagging evidence head with a linear-chain CRF (pytorch-crf), Viterbi-decoded.

Per output, every token gets O, B or I emissions; one CRF (shared transitions) runs over the
whole attended sequence, with B and I forbidden outside the post so that the symptom
description and special tokens are always O. A gold span (s, e) is tagged B at s and I on
s+1..e; the null span is all O. The loss is the CRF negative log-likelihood per token.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchcrf import CRF

from leanhpo.models.evidence import (
    MASK_VALUE,
    NO_SPAN,
    Candidate,
    Candidates,
    EvidenceHead,
    Span,
    allowed_pairs,
    post_tokens,
)
from leanhpo.models.losses import IGNORE_INDEX

TAG_O, TAG_B, TAG_I = 0, 1, 2
N_TAGS = 3


def bio_tags(start: torch.Tensor, end: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """[...] start/end token positions -> [..., T] BIO tags; start 0 (null) is all O."""
    index = torch.arange(n_tokens, device=start.device)
    start, end = start.unsqueeze(-1), end.unsqueeze(-1)
    real = start > 0
    tags = torch.full((*start.shape[:-1], n_tokens), TAG_O, device=start.device)
    tags = torch.where(real & (index > start) & (index <= end), TAG_I, tags)
    return torch.where(real & (index == start), TAG_B, tags)


def segment_scores(emissions: torch.Tensor, transitions: torch.Tensor) -> torch.Tensor:
    """Path score of "one B I..I segment at (s, e), O elsewhere" minus that of "all O".

    emissions [..., T, 3], transitions [3, 3] (from, to) -> [..., T, T] indexed (s, e). Valid
    for 0 < s <= e < T - 1 with the token after e attended, which holds for post tokens (the
    post is always followed by [SEP]); the start/end transitions then cancel out.
    """
    emit_b = emissions[..., TAG_B] - emissions[..., TAG_O]  # [..., T]
    emit_i = (emissions[..., TAG_I] - emissions[..., TAG_O]).cumsum(-1)
    n_tokens = emissions.shape[-2]
    index = torch.arange(n_tokens, device=emissions.device)
    length = (index[None, :] - index[:, None]).clamp(min=0)  # e - s, [T, T]
    stay = transitions[TAG_O, TAG_O]
    single = transitions[TAG_O, TAG_B] + transitions[TAG_B, TAG_O] - 2 * stay
    longer = (
        transitions[TAG_O, TAG_B]
        + transitions[TAG_B, TAG_I]
        + transitions[TAG_I, TAG_O]
        - 3 * stay
        + (length - 1).clamp(min=0) * (transitions[TAG_I, TAG_I] - stay)
    )
    moves = torch.where(length == 0, single, longer)  # [T, T]
    inside = emit_i[..., None, :] - emit_i[..., :, None]  # sum of I over s+1..e
    return emit_b[..., :, None] + inside + moves


def _segments(path: list[int]) -> list[Span]:
    spans: list[Span] = []
    for position, tag in enumerate(path):
        if tag == TAG_B:
            spans.append((position, position))
        elif tag == TAG_I and spans and spans[-1][1] == position - 1:
            spans[-1] = (spans[-1][0], position)
    return spans


class BioCrfHead(EvidenceHead):
    def __init__(
        self, hidden_size: int, n_outputs: int, dropout: float, head_hidden_size: int
    ) -> None:
        super().__init__()
        self.n_outputs = n_outputs
        self.feature_size = N_TAGS * n_outputs
        self.dropout = nn.Dropout(dropout)
        self.emission = nn.Linear(hidden_size, N_TAGS * n_outputs)
        self.crf = CRF(N_TAGS, batch_first=True)

    def forward(
        self,
        hidden: torch.Tensor,
        span_mask: torch.Tensor,
        sentence_spans: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        raw = self.emission(self.dropout(hidden))  # [B, T, 3 * n]
        batch, n_tokens = raw.shape[:2]
        emissions = raw.view(batch, n_tokens, self.n_outputs, N_TAGS).permute(0, 2, 1, 3)
        # B and I only on post tokens: everything else is forced to O
        allowed = torch.ones(batch, 1, n_tokens, N_TAGS, dtype=torch.bool, device=raw.device)
        allowed[..., TAG_B:] = post_tokens(span_mask)[:, None, :, None]
        emissions = emissions.float().masked_fill(~allowed, MASK_VALUE)
        return {"tag_emissions": emissions, "evidence_features": raw}

    def _rows(
        self, emissions: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, n_outputs, n_tokens, _ = emissions.shape
        mask = attention_mask.bool()[:, None, :].expand(batch, n_outputs, n_tokens)
        return emissions.reshape(-1, n_tokens, N_TAGS), mask.reshape(-1, n_tokens)

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """CRF negative log-likelihood per attended token of the pairs that have a target."""
        emissions = outputs["tag_emissions"]
        start, end = batch["start_positions"], batch["end_positions"]
        keep = (start != IGNORE_INDEX).reshape(-1)
        if not bool(keep.any()):
            return emissions.sum() * 0.0
        rows, mask = self._rows(emissions, batch["attention_mask"])
        tags = bio_tags(start.clamp(min=0), end.clamp(min=0), emissions.shape[2]).reshape(
            rows.shape[:2]
        )
        log_likelihood = self.crf(rows[keep], tags[keep], mask=mask[keep], reduction="sum")
        return -log_likelihood / mask[keep].sum()

    def loss_denominator(self, batch: dict[str, Any]) -> int:
        """Attended tokens summed over the (example, output) rows that have a target."""
        keep = batch["start_positions"] != IGNORE_INDEX  # [B, n_outputs]
        tokens = batch["attention_mask"].bool().sum(-1, keepdim=True)  # [B, 1]
        return int((keep * tokens).sum())

    def candidates(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, Any], max_answer_tokens: int
    ) -> Candidates:
        """Viterbi path per output; its best segment (or, with none, the best single segment),
        with the all-O path's score minus that segment path's score as the null margin.

        At threshold 0 this is the plain Viterbi rule "null = no B tag".
        """
        emissions = outputs["tag_emissions"].detach()
        batch_size, n_outputs = emissions.shape[:2]
        rows, mask = self._rows(emissions, batch["attention_mask"].to(emissions.device))
        paths = self.crf.decode(rows, mask=mask)
        deltas = segment_scores(emissions, self.crf.transitions.detach())  # [B, n, T, T]
        allowed = allowed_pairs(batch["span_mask"].to(emissions.device), max_answer_tokens)
        deltas = deltas.masked_fill(~allowed[:, None], float("-inf")).cpu()
        results: Candidates = []
        for row in range(batch_size):
            spans: list[Candidate] = []
            for out in range(n_outputs):
                delta = deltas[row, out]
                found = [s for s in _segments(paths[row * n_outputs + out]) if delta[s] > -1e30]
                if found:
                    best = max(found, key=lambda s: float(delta[s]))
                else:
                    flat = int(delta.argmax())
                    best = (flat // delta.shape[-1], flat % delta.shape[-1])
                score = float(delta[best])
                spans.append(NO_SPAN if score == -float("inf") else (best, -score))
            results.append(spans)
        return results
