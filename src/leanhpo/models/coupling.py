"""Task coupling: feed the evidence head's view of the post into the criteria head.

The evidence head's per-token features are pooled (mean, max or attention over the post
tokens), projected to the encoder width and combined with the criteria pooling:

- `concat`: [pooled; evidence] (the criteria head sees twice the width);
- `add`: pooled + evidence; `mean`: (pooled + evidence) / 2;
- `weighted_sum`: w1 * pooled + w2 * evidence, w learned (starts at 1, 1: `add`);
- `weighted_mean`: softmax(w) weighted, a learned convex mix (starts at 1/2, 1/2: `mean`).

Gradients flow both ways: the criteria loss also trains the evidence head's features.
"""

from __future__ import annotations

import torch
from torch import nn

from leanhpo.models.pooling import TokenPool

COUPLINGS = ("independent", "coupled")
COUPLING_METHODS = ("concat", "add", "mean", "weighted_sum", "weighted_mean")


class Coupling(nn.Module):
    def __init__(self, method: str, pooling: str, feature_size: int, hidden_size: int) -> None:
        super().__init__()
        if method not in COUPLING_METHODS:
            raise ValueError(f"unknown coupling method {method!r}; known: {COUPLING_METHODS}")
        self.method = method
        self.pool = TokenPool(pooling, feature_size)
        self.projection = nn.Linear(feature_size, hidden_size)
        self.output_size = 2 * hidden_size if method == "concat" else hidden_size
        if method == "weighted_sum":
            self.weights = nn.Parameter(torch.ones(2))
        elif method == "weighted_mean":
            self.weights = nn.Parameter(torch.zeros(2))

    def forward(
        self, pooled: torch.Tensor, features: torch.Tensor, token_mask: torch.Tensor
    ) -> torch.Tensor:
        evidence = self.projection(self.pool(features, token_mask)).to(pooled.dtype)
        if self.method == "concat":
            return torch.cat([pooled, evidence], dim=-1)
        if self.method == "add":
            return pooled + evidence
        if self.method == "mean":
            return (pooled + evidence) / 2
        weights = self.weights if self.method == "weighted_sum" else self.weights.softmax(0)
        return weights[0] * pooled + weights[1] * evidence
