"""Criteria losses (BCE family and focal family) and the span cross-entropy of start/end heads.

Every criteria loss takes logits and 0/1 labels of shape [B, n_outputs] and returns the mean over
all entries. Label smoothing moves each target towards 0.5 (y(1-eps) + eps/2) before any loss, so
it applies to every criteria loss alike. The evidence losses of the other heads live beside
their heads (CRF negative log-likelihood, sentence cross-entropy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

CRITERIA_LOSSES = ("bce", "weighted_bce", "focal", "adaptive_focal", "hybrid")
# Losses that take the per-symptom positive weights: weighted_bce, and the focal family as
# Lin et al.'s alpha-balanced focal loss (balanced per symptom instead of one alpha).
CLASS_WEIGHTED_LOSSES = ("weighted_bce", "focal", "adaptive_focal", "hybrid")
MAX_POS_WEIGHT = 50.0
# adaptive_focal reaches its target gamma after this share of the training steps.
ADAPTIVE_FOCAL_RAMP = 0.5


def positive_class_weights(prevalence: torch.Tensor) -> torch.Tensor:
    """BCE pos_weight per symptom: negatives per positive in training, clipped to [1, 50].

    Rare symptoms (a few % of posts) otherwise stay below the 0.5 decision threshold for many
    epochs; the clip keeps a symptom seen once from dominating the loss.
    """
    prevalence = prevalence.clamp(min=1.0 / (1.0 + MAX_POS_WEIGHT), max=1.0)
    return ((1.0 - prevalence) / prevalence).clamp(min=1.0, max=MAX_POS_WEIGHT)


def smooth_labels(labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    return labels * (1.0 - label_smoothing) + 0.5 * label_smoothing


def scheduled_gamma(gamma: float, progress: float) -> float:
    """adaptive_focal's gamma: 0 (plain BCE) at the start, rising linearly to `gamma`.

    A scheduled, not a learnable, gamma: a learned gamma would simply grow, because a larger
    gamma always lowers the focal loss. Early on every example teaches the model (BCE); once it
    is confident on the easy ones, the focus moves to the hard ones. `progress` is the share of
    training steps done (1.0 at evaluation, so validation losses are comparable across epochs).
    """
    return gamma * min(1.0, max(0.0, progress) / ADAPTIVE_FOCAL_RAMP)


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary focal loss (Lin et al., 2017): BCE scaled by (1 - p_t)^gamma.

    With `pos_weight` the BCE term weighs positives by it, the class balancing that Lin et al.
    do with alpha (here per symptom, from its prevalence). Written with soft targets in mind:
    p_t = p*y + (1-p)*(1-y), so label smoothing carries over.
    """
    bce = F.binary_cross_entropy_with_logits(
        logits, targets, reduction="none", pos_weight=pos_weight
    )
    probs = torch.sigmoid(logits)
    p_t = probs * targets + (1.0 - probs) * (1.0 - targets)
    return ((1.0 - p_t).clamp(min=0.0) ** gamma * bce).mean()


def criteria_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    kind: str = "bce",
    pos_weight: torch.Tensor | None = None,
    *,
    gamma: float = 2.0,
    alpha: float = 0.5,
    label_smoothing: float = 0.0,
    progress: float = 1.0,
) -> torch.Tensor:
    """The criteria loss `kind` on [B, n_outputs] logits.

    - `bce` (never weighted); `weighted_bce` with a pos_weight of the logits' shape;
    - `focal` with `gamma`; `adaptive_focal` with `scheduled_gamma(gamma, progress)`;
    - `hybrid` = alpha * BCE + (1 - alpha) * focal(gamma).
    The CLASS_WEIGHTED_LOSSES use `pos_weight` (required by weighted_bce, optional otherwise).
    """
    logits = logits.float()
    targets = smooth_labels(labels.float(), label_smoothing)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets)
    if kind == "weighted_bce":
        if pos_weight is None:
            raise ValueError("weighted_bce needs class weights")
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)
    if kind == "focal":
        return focal_loss(logits, targets, gamma, pos_weight)
    if kind == "adaptive_focal":
        return focal_loss(logits, targets, scheduled_gamma(gamma, progress), pos_weight)
    if kind == "hybrid":
        bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)
        return alpha * bce + (1.0 - alpha) * focal_loss(logits, targets, gamma, pos_weight)
    raise ValueError(f"unknown criteria loss {kind!r}; known: {', '.join(CRITERIA_LOSSES)}")


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
