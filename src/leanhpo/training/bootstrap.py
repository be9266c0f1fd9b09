"""Post-level percentile bootstrap of the test metrics, and the paired baseline comparison.

Pure numpy: no torch, no I/O. The test posts are resampled with replacement; a resample is a
row of counts (how often each post is drawn), so every metric of every resample is a weighted
sum over posts, computed for all resamples at once. The definitions are those of
:mod:`leanhpo.training.metrics` (sklearn's, ``zero_division=0`` for a symptom that occurs but is
never predicted), and a resample's value equals the metric of the resampled posts.

A metric that is undefined in a resample (the F1, precision, recall and PR-AUC of a symptom S
in a resample without a post showing S, the evidence averages without a pair of their kind) is
dropped from that metric's interval, and the number dropped is reported beside it as
``undefined``. The macro averages of a resample cover the symptoms defined in that resample,
exactly as :func:`~leanhpo.training.metrics.criteria_metrics` of the resampled posts would.
Intervals are percentile intervals of the values left: the ``(1 - level) / 2`` and
``1 - (1 - level) / 2`` quantiles.

Written here rather than with scipy.stats.bootstrap, which calls a statistic on each
resampled data set: every one of the ~60 metrics would then be recomputed by sklearn per
resample. One count matrix shared by every metric, the evidence pairs (weighted by their post)
and the baselines is what makes it fast, and what pairs the baseline comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from leanhpo.metric_names import (
    CRITERIA_PER_SYMPTOM,
    CRITERIA_SUMMARY,
    EVIDENCE_SUMMARY,
    JOINT_SUMMARY,
    SYMPTOMS,
    TEN_LABEL_SUMMARY,
)
from leanhpo.training.joint import pair_outcomes
from leanhpo.training.metrics import (
    DEFAULT_THRESHOLD,
    EvidenceExample,
    baseline_criteria_metrics,
    criteria_metrics,
    evidence_metrics,
    threshold_vector,
    with_no_symptoms,
)

# The resamples' stream is SeedSequence([study seed, BOOTSTRAP_STREAM]): reproducible from the
# study seed alone, and apart from every other stream drawn from that seed.
BOOTSTRAP_STREAM = 0xB0075
COMPARED_METRIC = "f1_macro"  # the baseline comparison's metric (the default study metric)
# The flat metric names (as Evaluation.metrics("") has them) that get an interval.
CRITERIA_INTERVAL_KEYS: tuple[str, ...] = (
    *CRITERIA_SUMMARY,
    *(f"ten_label_{metric}" for metric in TEN_LABEL_SUMMARY),
    *(f"{metric}_{symptom}" for symptom in SYMPTOMS for metric in CRITERIA_PER_SYMPTOM),
)
EVIDENCE_INTERVAL_KEYS: tuple[str, ...] = EVIDENCE_SUMMARY
JOINT_INTERVAL_KEYS: tuple[str, ...] = JOINT_SUMMARY

Interval = dict[str, float | int]  # {"low", "high", "undefined"}


@dataclass(frozen=True)
class BootstrapResult:
    """``intervals``: flat metric name (``criteria_f1_macro``, ``evidence_f1``, ...) → interval,
    ``None`` where no resample defines the metric. ``baseline_comparison``: see
    :func:`compare_with_baselines`, with ``samples``, ``level`` and ``seed`` added."""

    samples: int
    level: float
    seed: int
    intervals: dict[str, Interval | None]
    baseline_comparison: dict[str, Any]


def resample_counts(n_posts: int, samples: int, seed: int) -> np.ndarray:
    """[samples, n_posts] int: how often each post is drawn in each resample (each row sums to
    n_posts)."""
    if n_posts < 1 or samples < 1:
        raise ValueError(f"need at least one post and one resample; got {n_posts}, {samples}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, BOOTSTRAP_STREAM]))
    draws = rng.integers(0, n_posts, size=(samples, n_posts))
    # One bincount for all rows: row b's posts are shifted into [b * n_posts, (b + 1) * n_posts).
    shifted = draws + np.arange(samples)[:, None] * n_posts
    return np.bincount(shifted.ravel(), minlength=samples * n_posts).reshape(samples, n_posts)


def _divide(numerator: np.ndarray, denominator: np.ndarray, undefined: float = 0.0) -> np.ndarray:
    out = np.full(np.broadcast(numerator, denominator).shape, undefined, dtype=float)
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


def _nanmean(values: np.ndarray) -> np.ndarray:
    """[B] mean over axis 1 of the defined (non-NaN) entries; NaN where none is defined."""
    defined = ~np.isnan(values)
    return _divide(np.where(defined, values, 0.0).sum(1), defined.sum(1), np.nan)


def _f1_counts(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label (last axis): precision, recall and F1 of weighted counts, NaN where the label
    has no positive in the resample (undefined), else sklearn's zero_division=0."""
    positives = tp + fn
    undefined = np.where(positives > 0, 0.0, np.nan)
    return (
        _divide(tp, tp + fp) + undefined,
        _divide(tp, positives) + undefined,
        _divide(2 * tp, positives + tp + fp) + undefined,  # 2TP / (2TP + FP + FN)
    )


def _average_precision(y_col: np.ndarray, score_col: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[B] average precision of one symptom per resample, NaN without a positive.

    sklearn's step integral, sum over distinct scores (descending) of (R_k - R_{k-1}) P_k, with
    the resample counts as sample weights; tied scores form one threshold, as in sklearn."""
    order = np.argsort(-score_col, kind="stable")
    y_sorted = y_col[order].astype(float)
    sorted_scores = score_col[order]
    group_ends = np.append(np.nonzero(np.diff(sorted_scores))[0], len(order) - 1)
    w = weights[:, order]
    tps = np.cumsum(w * y_sorted, axis=1)[:, group_ends]
    fps = np.cumsum(w * (1.0 - y_sorted), axis=1)[:, group_ends]
    positives = tps[:, -1:]
    precision = _divide(tps, tps + fps)
    recall = _divide(tps, positives)
    gains = np.diff(recall, axis=1, prepend=0.0)
    return np.where(positives[:, 0] > 0, (gains * precision).sum(axis=1), np.nan)


def criteria_resamples(
    y_true: np.ndarray,
    scores: np.ndarray,
    counts: np.ndarray,
    threshold: float | Sequence[float] | np.ndarray = DEFAULT_THRESHOLD,
    names: Sequence[str] = SYMPTOMS,
    pr_auc: bool = True,
) -> dict[str, np.ndarray]:
    """Every key of :func:`~leanhpo.training.metrics.criteria_metrics` but ``support_<S>``, as a
    [B] array per resample (``counts``: [B, N]); NaN where undefined. ``threshold``: one for
    all symptoms or one per symptom. ``pr_auc=False`` skips the average precision (the slow
    part), which the baseline comparison does not need."""
    y = np.asarray(y_true).astype(float)
    probabilities = np.asarray(scores, dtype=float)
    pred = (probabilities >= threshold_vector(threshold, names)).astype(float)
    w = np.asarray(counts, dtype=float)
    tp, fp, fn = w @ (y * pred), w @ ((1 - y) * pred), w @ (y * (1 - pred))  # [B, labels]
    pred_sum, true_sum = tp + fp, tp + fn
    correct = pred == y
    n_drawn = w.sum(axis=1)
    out = {
        "accuracy": (w @ correct.sum(axis=1)) / (n_drawn * y.shape[1]),
        "exact_match_ratio": (w @ correct.all(axis=1)) / n_drawn,
        "precision_micro": _divide(tp.sum(1), pred_sum.sum(1)),
        "recall_micro": _divide(tp.sum(1), true_sum.sum(1)),
        "f1_micro": _divide(2 * tp.sum(1), true_sum.sum(1) + pred_sum.sum(1)),
    }
    precision, recall, f1 = _f1_counts(tp, fp, fn)
    for metric, values in {"precision": precision, "recall": recall, "f1": f1}.items():
        out[f"{metric}_macro"] = _nanmean(values)  # over the symptoms defined in the resample
        out.update({f"{metric}_{name}": values[:, j] for j, name in enumerate(names)})
    out.update(_ten_label_resamples(y, pred, w))
    if pr_auc:
        aps = np.stack(
            [_average_precision(y[:, j], probabilities[:, j], w) for j in range(len(names))], 1
        )
        out.update({f"pr_auc_{name}": aps[:, j] for j, name in enumerate(names)})
        out["pr_auc_macro"] = _nanmean(aps)
    return out


def _ten_label_resamples(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """``ten_label_*`` of :func:`~leanhpo.training.metrics.ten_label_metrics` per resample."""
    y10, pred10 = with_no_symptoms(y).astype(float), with_no_symptoms(pred).astype(float)
    tp, fp, fn = w @ (y10 * pred10), w @ ((1 - y10) * pred10), w @ (y10 * (1 - pred10))
    _, _, f1 = _f1_counts(tp, fp, fn)
    return {
        "ten_label_f1_macro": _nanmean(f1),
        "ten_label_f1_micro": _divide(2 * tp.sum(1), 2 * tp.sum(1) + fp.sum(1) + fn.sum(1)),
        "ten_label_subset_accuracy": (w @ (y10 == pred10).all(axis=1)) / w.sum(axis=1),
        "ten_label_f1_no_symptoms": f1[:, -1],
    }


def evidence_resamples(
    examples: Sequence[EvidenceExample], pair_posts: np.ndarray, counts: np.ndarray
) -> dict[str, np.ndarray]:
    """``exact_match``, ``f1``, ``char_f1``, ``null_span_accuracy`` and ``balanced_f1`` of
    :func:`~leanhpo.training.metrics.evidence_metrics` per resample (NaN where undefined).

    ``pair_posts[i]`` is the post (column of ``counts``) of ``examples[i]``; a pair weighs what
    its post does. Each pair is scored once, by ``evidence_metrics`` itself, so the definitions
    cannot drift apart; excluded pairs are skipped."""
    n_posts = counts.shape[1]
    if len(pair_posts) != len(examples):
        raise ValueError(f"{len(examples)} pairs but {len(pair_posts)} post indices")
    # Per post: sums of exact, token f1, char f1 over its positive pairs, and their number;
    # null hits over its null pairs, and their number.
    positive = np.zeros((4, n_posts))
    null = np.zeros((2, n_posts))
    for example, post in zip(examples, pair_posts, strict=True):
        if example.excluded:
            continue
        scores = evidence_metrics([example])
        if example.gold_spans:
            kept = (scores["exact_match"], scores["f1"], scores["char_f1"], 1.0)
            positive[:, post] += np.array(kept, dtype=float)
        else:
            null[:, post] += np.array((scores["null_span_accuracy"], 1.0), dtype=float)
    w = np.asarray(counts, dtype=float)
    positive_sums, null_sums = w @ positive.T, w @ null.T  # [B, 4], [B, 2]
    out = {
        key: _divide(positive_sums[:, i], positive_sums[:, 3], np.nan)
        for i, key in enumerate(("exact_match", "f1", "char_f1"))
    }
    out["null_span_accuracy"] = _divide(null_sums[:, 0], null_sums[:, 1], np.nan)
    f1, null_accuracy = out["f1"], out["null_span_accuracy"]
    both = ~np.isnan(f1) & ~np.isnan(null_accuracy)  # balanced_f1 needs pairs of both kinds
    harmonic = _divide(2 * f1 * null_accuracy, np.where(both, f1 + null_accuracy, 0.0))
    out["balanced_f1"] = np.where(both, harmonic, np.nan)
    return out


def joint_resamples(
    examples: Sequence[EvidenceExample],
    decided: np.ndarray,
    pair_posts: np.ndarray,
    counts: np.ndarray,
) -> dict[str, np.ndarray]:
    """``accuracy`` and ``f1`` of :func:`~leanhpo.training.joint.joint_metrics` per resample
    (NaN where undefined): per-pair outcomes summed by post, weighted by the counts."""
    outcomes = pair_outcomes(examples, decided)  # right, TP, FP, FN
    scored = np.array([not e.excluded for e in examples], dtype=float)
    per_post = np.zeros((counts.shape[1], 5))
    np.add.at(per_post, np.asarray(pair_posts), np.column_stack([outcomes, scored]))
    right, tp, fp, fn, n = (np.asarray(counts, dtype=float) @ per_post).T  # each [B]
    return {
        "accuracy": _divide(right, n, np.nan),
        "f1": np.where(tp + fn > 0, _divide(2 * tp, 2 * tp + fp + fn), np.nan),
    }


def percentile_interval(values: np.ndarray, level: float) -> Interval | None:
    """The percentile interval of the defined (non-NaN) values; ``None`` if none is defined.
    ``undefined`` counts the resamples dropped."""
    defined = values[~np.isnan(values)]
    if not defined.size:
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(defined, [tail, 100 - tail])
    return {"low": float(low), "high": float(high), "undefined": int(values.size - defined.size)}


def compare_with_baselines(
    model_f1: np.ndarray,
    model_point: float,
    y_true: np.ndarray,
    train_prevalence: np.ndarray,
    counts: np.ndarray,
    level: float,
) -> dict[str, Any]:
    """The model's macro-F1 against the strongest trivial baseline's, on the same resamples.

    The strongest baseline is the one of
    :func:`~leanhpo.training.metrics.baseline_criteria_metrics` with the higher macro-F1 on the
    full test split (the first listed on a tie). ``share_not_better`` is the share of resamples
    in which the model's macro-F1 (``model_f1``: per resample, ``model_point``: on the full
    split) is not above the baseline's. It is a bootstrap proportion, not a p-value: the
    resamples are drawn around the observed test set, not under a null hypothesis, so it says
    how often a test set like this one would have left the model no better than the baseline."""
    points = baseline_criteria_metrics(train_prevalence, y_true)
    name = max(points, key=lambda baseline: points[baseline][COMPARED_METRIC] or 0.0)
    constant = {
        "prevalence": np.broadcast_to(np.asarray(train_prevalence, dtype=float), y_true.shape),
        "all_positive": np.ones(y_true.shape),
    }[name]
    baseline_f1 = criteria_resamples(y_true, constant, counts, pr_auc=False)[COMPARED_METRIC]
    return {
        "baseline": name,
        "model_f1_macro": model_point,
        "baseline_f1_macro": points[name][COMPARED_METRIC],
        "baseline_ci": percentile_interval(baseline_f1, level),
        "share_not_better": _share_not_better(model_f1, baseline_f1),
    }


def _share_not_better(model: np.ndarray, baseline: np.ndarray) -> float:
    """The share of resamples in which the model's value is not above the baseline's, over the
    resamples where both are defined (macro-F1 is undefined only in a resample without any
    symptom, for both alike); 1.0 when there is none."""
    both = ~np.isnan(model) & ~np.isnan(baseline)
    return float(np.mean(model[both] <= baseline[both])) if both.any() else 1.0


def bootstrap_test_metrics(
    y_true: np.ndarray,
    scores: np.ndarray,
    examples: Sequence[EvidenceExample],
    pair_posts: np.ndarray,
    train_prevalence: np.ndarray,
    samples: int,
    level: float,
    seed: int,
    threshold: float | Sequence[float] | np.ndarray = DEFAULT_THRESHOLD,
) -> BootstrapResult | None:
    """Intervals of every test figure and the baseline comparison; ``None`` when ``samples`` is
    0 (the bootstrap is off). ``y_true``/``scores``: [N, 9] per post; ``examples``: the
    evidence pairs as given (decoded, and null where model.evidence_for leaves them out), the
    nine of each post in symptom order, post by post, as Evaluation keeps them; ``pair_posts``
    their post indices; ``threshold``: the model's
    decision threshold(s), one or one per symptom (the trivial baselines keep their own
    definitions at DEFAULT_THRESHOLD)."""
    if samples == 0:
        return None
    if not 0 < level < 1:
        raise ValueError(f"the interval level must lie in (0, 1); got {level}")
    y_true = np.asarray(y_true)
    counts = resample_counts(y_true.shape[0], samples, seed)
    criteria = criteria_resamples(y_true, scores, counts, threshold)
    evidence = evidence_resamples(examples, np.asarray(pair_posts), counts)
    decided = np.asarray(scores, dtype=float) >= threshold_vector(threshold)
    if decided.size != len(examples):
        raise ValueError(f"{len(examples)} pairs for {decided.size} (post, symptom) decisions")
    joint = joint_resamples(examples, decided.reshape(-1), np.asarray(pair_posts), counts)
    intervals = {
        **{
            f"criteria_{k}": percentile_interval(criteria[k], level) for k in CRITERIA_INTERVAL_KEYS
        },
        **{
            f"evidence_{k}": percentile_interval(evidence[k], level) for k in EVIDENCE_INTERVAL_KEYS
        },
        **{f"joint_{k}": percentile_interval(joint[k], level) for k in JOINT_INTERVAL_KEYS},
    }
    point = criteria_metrics(y_true, scores, threshold)[COMPARED_METRIC]
    comparison = compare_with_baselines(
        criteria[COMPARED_METRIC],
        float(point or 0.0),
        y_true,
        np.asarray(train_prevalence),
        counts,
        level,
    )
    comparison.update({"samples": samples, "level": level, "seed": seed})
    return BootstrapResult(samples, level, seed, intervals, comparison)
