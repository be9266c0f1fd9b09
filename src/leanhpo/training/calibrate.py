"""Calibrating on validation: the evidence null threshold (`model.null_threshold: auto`) and
the criteria decision thresholds (`model.decision_threshold: auto`, see
:func:`tune_decision_thresholds`).

Every evidence head gives each (post, symptom) pair its best span and a null margin (null score
minus that span's score); the pair is predicted null when the margin exceeds the threshold.
Heads trained on mostly-null pairs learn large margins everywhere, so at a fixed threshold of 0
they predict null for every pair, the trivial baseline. SQuAD 2.0 evaluation handles this by
choosing the threshold on held-out data; here the chosen threshold maximises the evidence
`balanced_f1`, the harmonic mean of the span F1 on pairs with evidence and the null accuracy
on pairs without. Both "always null" and "never null" score 0 on it, whatever the share of
null pairs, unlike the pooled SQuAD 2.0 F1, which on ReDSM5 (about 8 null pairs in 9) is
maximised by predicting null almost everywhere.

The sweep is exact: the objective only changes where the threshold crosses a pair's margin,
so every cut between two neighbouring margins is tried (O(n log n)). Ties go to the threshold
nearest 0, the heads' own decision rule.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from leanhpo.training.metrics import DEFAULT_THRESHOLD, EvidenceExample, positive_pair_token_f1

FALLBACK_THRESHOLD = 0.0
EDGE_OFFSET = 1.0  # how far beyond the extreme margins the all-span / all-null cuts lie
TIE_TOLERANCE = 1e-12  # objective values this close count as a tie


def calibrate_null_threshold(
    examples: Sequence[EvidenceExample], margins: Sequence[float]
) -> float:
    """The threshold maximising balanced_f1 on `examples`, whose pred_span is each pair's best
    span (None when no span is possible) and `margins` its null margin.

    Without pairs of one kind the objective is the other kind's score alone; without any
    scored pair the threshold is FALLBACK_THRESHOLD.
    """
    positive_f1: list[float] = []
    positive_margin: list[float] = []
    null_margin: list[float] = []
    for example, margin in zip(examples, margins, strict=True):
        if example.excluded:
            continue
        if example.gold_spans:
            positive_f1.append(positive_pair_token_f1(example))
            positive_margin.append(margin)
        else:
            null_margin.append(margin)
    finite = sorted({m for m in (*positive_margin, *null_margin) if math.isfinite(m)})
    if not finite:
        return FALLBACK_THRESHOLD
    cuts = [
        finite[0] - EDGE_OFFSET,
        *((low + high) / 2 for low, high in itertools.pairwise(finite)),
        finite[-1] + EDGE_OFFSET,
    ]
    thresholds = np.array(cuts)
    order = np.argsort(positive_margin, kind="stable")
    sorted_pos = np.asarray(positive_margin, dtype=float)[order]
    gains = np.concatenate([[0.0], np.cumsum(np.asarray(positive_f1, dtype=float)[order])])
    spans_predicted = np.searchsorted(sorted_pos, thresholds, side="right")
    f1 = gains[spans_predicted] / max(len(positive_f1), 1)
    sorted_null = np.sort(np.asarray(null_margin, dtype=float))
    nulls_kept = len(null_margin) - np.searchsorted(sorted_null, thresholds, side="right")
    null_accuracy = nulls_kept / max(len(null_margin), 1)
    objective = _objective(f1, null_accuracy, bool(positive_f1), bool(null_margin))
    best = np.flatnonzero(np.isclose(objective, objective.max(), rtol=0.0, atol=1e-12))
    return float(min(thresholds[best], key=abs))


def _objective(
    f1: np.ndarray, null_accuracy: np.ndarray, has_positive: bool, has_null: bool
) -> np.ndarray:
    if has_positive and has_null:
        total = f1 + null_accuracy
        return np.divide(2 * f1 * null_accuracy, total, out=np.zeros_like(total), where=total > 0)
    return f1 if has_positive else null_accuracy


def tune_decision_thresholds(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Per symptom (column), the decision threshold maximising that symptom's F1 on these
    posts, where a symptom is predicted when its probability is >= the threshold.

    The sweep is exact, as for the null threshold: F1 only changes where the threshold crosses
    a score, so every cut between two neighbouring distinct scores is tried, plus one below the
    lowest score (everything predicted, at half that score, so it stays a probability). No cut
    above the highest score is needed: predicting nothing scores F1 0, and predicting
    everything scores more whenever the symptom occurs. Ties go to the cut nearest
    DEFAULT_THRESHOLD (the lower one when two are equally near). A symptom without a positive
    or without a negative post has no informative cut and keeps DEFAULT_THRESHOLD.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=float)
    if labels.ndim != 2 or labels.shape != probabilities.shape:
        raise ValueError(
            f"labels and probabilities must be [posts, symptoms]; got {labels.shape} and "
            f"{probabilities.shape}"
        )
    return np.array(
        [
            _best_f1_cut(labels[:, j].astype(bool), probabilities[:, j])
            for j in range(labels.shape[1])
        ]
    )


def _best_f1_cut(positive: np.ndarray, scores: np.ndarray) -> float:
    n_positive = int(positive.sum())
    if n_positive == 0 or n_positive == len(positive):
        return DEFAULT_THRESHOLD
    distinct = np.unique(scores)  # sorted
    cuts = np.concatenate([[distinct[0] / 2], (distinct[:-1] + distinct[1:]) / 2])
    # Posts at or above each cut: all of them, and the positives among them.
    predicted = len(scores) - np.searchsorted(np.sort(scores), cuts, side="left")
    true_positive = n_positive - np.searchsorted(np.sort(scores[positive]), cuts, side="left")
    f1 = 2 * true_positive / (n_positive + predicted)  # sklearn's 2TP / (2TP + FP + FN)
    best = cuts[np.isclose(f1, f1.max(), rtol=0.0, atol=TIE_TOLERANCE)]
    return float(min(best, key=lambda cut: (abs(cut - DEFAULT_THRESHOLD), cut)))
