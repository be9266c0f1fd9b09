"""Criteria heads: a pooled vector [B, in_size] -> one logit per output [B, n_outputs].

All heads take the same constructor arguments so that the model builds them from a name; the
ones without a hidden layer ignore `hidden_size`, and only multi_sample_dropout uses `samples`.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearCriteriaHead(nn.Module):
    def __init__(
        self, in_size: int, n_outputs: int, dropout: float, hidden_size: int, samples: int
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_size, n_outputs)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.dropout(pooled))
        return logits


class MLPCriteriaHead(nn.Module):
    """Linear -> GELU -> dropout -> linear."""

    def __init__(
        self, in_size: int, n_outputs: int, dropout: float, hidden_size: int, samples: int
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(in_size, hidden_size),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, n_outputs),
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.layers(pooled)
        return logits


class ResidualMLPCriteriaHead(nn.Module):
    """x + MLP(x), layer-normalised, then a linear classifier: the MLP learns a correction."""

    def __init__(
        self, in_size: int, n_outputs: int, dropout: float, hidden_size: int, samples: int
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.block = nn.Sequential(
            nn.Linear(in_size, hidden_size),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, in_size),
        )
        self.norm = nn.LayerNorm(in_size)
        self.classifier = nn.Linear(in_size, n_outputs)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.dropout(pooled)
        logits: torch.Tensor = self.classifier(self.dropout(self.norm(x + self.block(x))))
        return logits


class GatedCriteriaHead(nn.Module):
    """A gated linear unit: value * sigmoid(gate), then a linear classifier."""

    def __init__(
        self, in_size: int, n_outputs: int, dropout: float, hidden_size: int, samples: int
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.value = nn.Linear(in_size, hidden_size)
        self.gate = nn.Linear(in_size, hidden_size)
        self.classifier = nn.Linear(hidden_size, n_outputs)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.dropout(pooled)
        gated = self.value(x) * torch.sigmoid(self.gate(x))
        logits: torch.Tensor = self.classifier(self.dropout(gated))
        return logits


class MultiSampleDropoutHead(nn.Module):
    """One linear classifier, the mean of its logits under `samples` dropout masks (Inoue, 2019).

    In training this averages several dropout draws per step; in evaluation (no dropout) it is
    the linear head.
    """

    def __init__(
        self, in_size: int, n_outputs: int, dropout: float, hidden_size: int, samples: int
    ) -> None:
        super().__init__()
        self.samples = samples
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_size, n_outputs)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if not self.training:
            logits: torch.Tensor = self.classifier(pooled)
            return logits
        draws = [self.classifier(self.dropout(pooled)) for _ in range(self.samples)]
        return torch.stack(draws).mean(0)


CRITERIA_HEADS: dict[str, type[nn.Module]] = {
    "linear": LinearCriteriaHead,
    "mlp": MLPCriteriaHead,
    "mlp_residual": ResidualMLPCriteriaHead,
    "gated": GatedCriteriaHead,
    "multi_sample_dropout": MultiSampleDropoutHead,
}
