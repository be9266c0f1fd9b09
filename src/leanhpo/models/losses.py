"""Losses: BCE for the criteria head and span cross-entropy for the evidence head."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


CRITERIA_LOSSES = ("bce", "weighted_bce")
MAX_POS_WEIGHT = 50.0


def positive_class_weights(prevalence: torch.Tensor) -> torch.Tensor:
    """BCE pos_weight per symptom: negatives per positive in training, clipped to [1, 50].

    Rare symptoms (a few % of posts) otherwise stay below the 0.5 decision threshold for many
    epochs; the clip keeps a symptom seen once from dominating the loss.
    """
    prevalence = prevalence.clamp(min=1.0 / (1.0 + MAX_POS_WEIGHT), max=1.0)
    return ((1.0 - prevalence) / prevalence).clamp(min=1.0, max=MAX_POS_WEIGHT)


def criteria_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    kind: str = "bce",
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """`bce`, or `weighted_bce` with a pos_weight of the logits' shape ([B, n_outputs])."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, labels)
    if kind == "weighted_bce":
        if pos_weight is None:
            raise ValueError("weighted_bce needs class weights")
        return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)
    raise ValueError(f"unknown criteria loss {kind!r}")


def span_loss(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    start_positions: torch.Tensor,
    end_positions: torch.Tensor,
) -> torch.Tensor:
    """Mean of start and end cross-entropy over [B, n_outputs] targets.

    Targets equal to IGNORE_INDEX (evidence unknown or outside the window) add nothing; a batch
    with no usable target gives a zero that still belongs to the graph.
    """
    n_tokens = start_logits.shape[-1]
    start_flat = start_logits.reshape(-1, n_tokens)
    end_flat = end_logits.reshape(-1, n_tokens)
    start_target = start_positions.reshape(-1)
    end_target = end_positions.reshape(-1)
    if not bool((start_target != IGNORE_INDEX).any()):
        return start_logits.sum() * 0.0
    start_loss = F.cross_entropy(start_flat, start_target, ignore_index=IGNORE_INDEX)
    end_loss = F.cross_entropy(end_flat, end_target, ignore_index=IGNORE_INDEX)
    return (start_loss + end_loss) / 2
