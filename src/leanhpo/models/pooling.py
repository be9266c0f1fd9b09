"""Poolings: encoder tokens -> one vector per example (criteria input and task coupling).

All of them respect a token mask, so padding (and, for coupling, the symptom description of a
binary pair) never leaks into the pooled vector.
"""

from __future__ import annotations

import torch
from torch import nn

POOLINGS = ("cls", "mean", "attention", "last_2_layer_mix")
TOKEN_POOLINGS = ("mean", "max", "attention")
# Large but finite, so that masked scores stay finite under bf16 autocast as well.
MASK_VALUE = -1.0e4


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values [B, T, D], mask [B, T] -> [B, D]; an all-masked row gives zeros."""
    weights = mask.unsqueeze(-1).to(values.dtype)
    return (values * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    filled = values.masked_fill(~mask.bool().unsqueeze(-1), MASK_VALUE)
    return filled.max(dim=1).values


class AttentionPool(nn.Module):
    """A learned score per token, softmax over the kept tokens, weighted sum."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.scorer = nn.Linear(size, 1, bias=False)  # a bias cancels out in the softmax

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.scorer(values).squeeze(-1).float()
        scores = scores.masked_fill(~mask.bool(), MASK_VALUE)
        weights = torch.softmax(scores, dim=-1).to(values.dtype)
        return torch.einsum("bt,btd->bd", weights, values)


class Pooler(nn.Module):
    """Criteria pooling.

    `cls` takes token 0; `mean` averages the kept tokens; `attention` learns a weight per token;
    `last_2_layer_mix` averages the kept tokens of a learned softmax mix of the encoder's last
    two layers (the only pooling that needs the encoder's hidden states).
    """

    def __init__(self, kind: str, hidden_size: int) -> None:
        super().__init__()
        if kind not in POOLINGS:
            raise ValueError(f"unknown pooling {kind!r}; known: {', '.join(POOLINGS)}")
        self.kind = kind
        if kind == "attention":
            self.attention = AttentionPool(hidden_size)
        if kind == "last_2_layer_mix":
            # zeros: an even mix at the start
            self.layer_weights = nn.Parameter(torch.zeros(2))

    @property
    def needs_hidden_states(self) -> bool:
        return self.kind == "last_2_layer_mix"

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        hidden_states: tuple[torch.Tensor, ...] | None = None,
    ) -> torch.Tensor:
        if self.kind == "cls":
            return hidden[:, 0]
        if self.kind == "mean":
            return masked_mean(hidden, attention_mask)
        if self.kind == "attention":
            pooled: torch.Tensor = self.attention(hidden, attention_mask)
            return pooled
        if hidden_states is None or len(hidden_states) < 2:
            raise ValueError("last_2_layer_mix needs the encoder's hidden states")
        weights = torch.softmax(self.layer_weights, dim=0)
        mixed = weights[0] * hidden_states[-2] + weights[1] * hidden_states[-1]
        return masked_mean(mixed, attention_mask)


class TokenPool(nn.Module):
    """Coupling pooling of the evidence head's token features: mean, max or attention."""

    def __init__(self, kind: str, size: int) -> None:
        super().__init__()
        if kind not in TOKEN_POOLINGS:
            raise ValueError(f"unknown coupling pooling {kind!r}; known: {TOKEN_POOLINGS}")
        self.kind = kind
        if kind == "attention":
            self.attention = AttentionPool(size)

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "mean":
            return masked_mean(values, mask)
        if self.kind == "max":
            return masked_max(values, mask)
        pooled: torch.Tensor = self.attention(values, mask)
        return pooled


WINDOW_POOLINGS = ("max", "mean", "attention")


class WindowPool(nn.Module):
    """Pools the windows of each unit (a long post read as overlapping windows) into one vector
    per unit: [W, H] with `owner` [W] (the unit row of each window) -> [n_units, H].

    max (elementwise over windows), mean, or attention (a learned score per window, softmax
    over the unit's windows). A unit of one window comes out unchanged in every kind.
    """

    def __init__(self, kind: str, size: int) -> None:
        super().__init__()
        if kind not in WINDOW_POOLINGS:
            raise ValueError(f"unknown window pooling {kind!r}; known: {WINDOW_POOLINGS}")
        self.kind = kind
        self.score = nn.Linear(size, 1) if kind == "attention" else None

    def forward(self, values: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        n_units = int(owner.max().item()) + 1 if owner.numel() else 0
        if n_units == values.shape[0]:
            return values  # one window per unit (truncate, or short posts): nothing to pool
        index = owner.unsqueeze(-1).expand_as(values)
        if self.kind == "max":
            empty = values.new_full((n_units, values.shape[-1]), float("-inf"))
            return empty.scatter_reduce(0, index, values, reduce="amax", include_self=True)
        if self.kind == "mean":
            total = values.new_zeros((n_units, values.shape[-1])).index_add(0, owner, values)
            counts = torch.bincount(owner, minlength=n_units).to(values.dtype).unsqueeze(-1)
            return total / counts
        assert self.score is not None
        scores = self.score(values).squeeze(-1).float()
        top = scores.new_full((n_units,), float("-inf")).scatter_reduce(
            0, owner, scores, reduce="amax", include_self=True
        )
        weights = torch.exp(scores - top[owner])
        norm = weights.new_zeros(n_units).index_add(0, owner, weights)
        weights = (weights / norm[owner]).to(values.dtype).unsqueeze(-1)
        return values.new_zeros((n_units, values.shape[-1])).index_add(0, owner, weights * values)
