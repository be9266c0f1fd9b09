"""Metrics for the two tasks: criteria matching (multi-label) and evidence binding (spans).

Pure functions on numpy arrays and strings: no torch, no I/O. Every average over an empty set
is ``None`` (never 0 or NaN), because a 0 would read as a bad model and NaN breaks JSON and
MLflow; :func:`flatten_for_logging` drops the ``None`` values before logging. The same holds for
a symptom that no post of the split shows: its F1, precision and recall are undefined (``None``),
and the macro averages are taken over the symptoms that are defined.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_fscore_support

from leanhpo.metric_names import SYMPTOMS

DEFAULT_THRESHOLD = 0.5
# zero_division=0 only where the symptom occurs: a symptom shown by some post but never
# predicted has precision 0 (and F1 0), the model's failure to find it. A symptom that no post
# shows is left undefined instead (see criteria_metrics): a 0 there would score the split, not
# the model, and cap the macro average (8/9 with one symptom missing).
ZERO_DIVISION = 0.0
# The label a post carries in the 10-label view when it shows none of the nine symptoms: the
# ReDSM5 authors' baselines classify posts into the nine symptoms plus this one.
NO_SYMPTOMS = "NO_SYMPTOMS"
ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = frozenset(string.punctuation)

Span = tuple[int, int]
MetricValue = float | None


# ---------------------------------------------------------------------------- criteria


def _check_criteria_inputs(y_true: np.ndarray, scores: np.ndarray, names: Sequence[str]) -> None:
    if y_true.ndim != 2 or y_true.shape != scores.shape:
        raise ValueError(
            f"y_true and scores must both be [N, {len(names)}]; got {y_true.shape} and "
            f"{scores.shape}"
        )
    if y_true.shape[0] == 0 or y_true.shape[1] != len(names):
        raise ValueError(f"need at least one post and {len(names)} columns; got {y_true.shape}")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must contain only 0 and 1")


def _pr_auc(y_true_col: np.ndarray, score_col: np.ndarray) -> MetricValue:
    # Average precision is undefined without a positive; sklearn would warn and return 0.
    if not y_true_col.any():
        return None
    return float(average_precision_score(y_true_col, score_col))


def _mean_defined(values: Iterable[MetricValue]) -> MetricValue:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def threshold_vector(
    threshold: float | Sequence[float] | np.ndarray, names: Sequence[str] = SYMPTOMS
) -> np.ndarray:
    """One decision threshold per symptom ([len(names)] floats): a scalar is used for all."""
    array = np.asarray(threshold, dtype=float)
    if array.shape not in ((), (len(names),)) or not np.isfinite(array).all():
        raise ValueError(f"need one finite threshold or {len(names)}; got {threshold!r}")
    return np.broadcast_to(array, (len(names),)).copy()


def defined_symptoms(y_true: np.ndarray) -> np.ndarray:
    """[9] bool: the symptoms some post of ``y_true`` shows, the ones a macro average covers."""
    return np.asarray(np.asarray(y_true).astype(bool).any(axis=0))


def criteria_metrics(
    y_true: np.ndarray,
    scores: np.ndarray,
    threshold: float | Sequence[float] | np.ndarray = DEFAULT_THRESHOLD,
    names: Sequence[str] = SYMPTOMS,
) -> dict[str, MetricValue]:
    """Criteria-matching metrics of ``scores`` (probabilities, [N, 9]) against ``y_true`` (0/1).

    A symptom is predicted when its score is ``>= threshold``: one threshold for all symptoms,
    or one per symptom (in the order of ``names``). A symptom is *defined* when at least one
    post shows it; one that no post shows has no F1, precision or recall (``None``) and is
    left out of the macro averages. Keys:

    - ``accuracy``: fraction of the N×9 (post, symptom) decisions that are correct.
    - ``exact_match_ratio``: fraction of posts whose 9 decisions are all correct.
    - ``precision_micro`` / ``recall_micro`` / ``f1_micro``: from TP, FP, FN pooled over all
      N×9 decisions (false alarms of an undefined symptom count as FP here).
    - ``precision_macro`` / ``recall_macro`` / ``f1_macro``: unweighted mean of the per-symptom
      values over the defined symptoms (``f1_macro`` is the mean of per-symptom F1s, not the F1
      of the means); ``None`` when no symptom is defined.
    - ``defined_symptoms``: how many symptoms the macro averages cover (float).
    - per symptom ``<NAME>``: ``precision_<NAME>`` = TP/(TP+FP), ``recall_<NAME>`` = TP/(TP+FN),
      ``f1_<NAME>`` = 2·P·R/(P+R); ``None`` when the symptom is undefined, else 0 where a
      denominator is 0 (a defined symptom never predicted: sklearn ``zero_division=0``).
      ``support_<NAME>`` = number of posts with the symptom (float).
    - ``pr_auc_<NAME>``: average precision of the raw scores (sklearn
      ``average_precision_score``, threshold-free); ``None`` when the symptom is undefined.
    - ``pr_auc_macro``: mean of the defined ``pr_auc_<NAME>``; ``None`` if none is defined.
    - ``ten_label_*``: see :func:`ten_label_metrics` (the ReDSM5 authors' 10-label view).
    """
    y_true = np.asarray(y_true).astype(int)
    scores = np.asarray(scores, dtype=float)
    _check_criteria_inputs(y_true, scores, names)
    y_pred = (scores >= threshold_vector(threshold, names)).astype(int)
    labels = list(range(len(names)))
    defined = defined_symptoms(y_true)
    metrics: dict[str, MetricValue] = {
        "accuracy": float(np.mean(y_pred == y_true)),
        "exact_match_ratio": float(np.mean((y_pred == y_true).all(axis=1))),
    }
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="micro", zero_division=ZERO_DIVISION
    )
    metrics.update({"precision_micro": float(p), "recall_micro": float(r), "f1_micro": float(f)})
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=ZERO_DIVISION
    )
    per_symptom = {"precision": precision, "recall": recall, "f1": f1}
    for kind, values in per_symptom.items():
        metrics[f"{kind}_macro"] = _mean_defined(
            float(v) if ok else None for v, ok in zip(values, defined, strict=True)
        )
    metrics["defined_symptoms"] = float(defined.sum())
    pr_aucs = [_pr_auc(y_true[:, j], scores[:, j]) for j in labels]
    for j, name in enumerate(names):
        for kind, values in per_symptom.items():
            metrics[f"{kind}_{name}"] = float(values[j]) if defined[j] else None
        metrics[f"support_{name}"] = float(support[j])
        metrics[f"pr_auc_{name}"] = pr_aucs[j]
    metrics["pr_auc_macro"] = _mean_defined(pr_aucs)
    for key, value in ten_label_metrics(y_true, y_pred).items():
        metrics[f"ten_label_{key}"] = value
    return metrics


def with_no_symptoms(y: np.ndarray) -> np.ndarray:
    """[N, 10]: the nine columns and a tenth, NO_SYMPTOMS, set where a post has none of them."""
    y = np.asarray(y).astype(int)
    return np.hstack([y, (~y.astype(bool).any(axis=1)).astype(int)[:, None]])


def ten_label_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, MetricValue]:
    """The 10-label view of the ReDSM5 authors' baselines: the nine symptoms plus NO_SYMPTOMS
    (a post with none of them, true or predicted). Keys:

    - ``f1_macro``: mean of the per-label F1 over the labels some post carries (a label that
      no post carries is left out, as for the nine);
    - ``f1_micro``: F1 of TP, FP, FN pooled over the N×10 decisions;
    - ``subset_accuracy``: share of posts whose ten labels are all right (NO_SYMPTOMS follows
      from the nine, so it equals ``exact_match_ratio``);
    - ``f1_no_symptoms``: the NO_SYMPTOMS label's own F1 (``None`` when every post shows a
      symptom).
    """
    truth, pred = with_no_symptoms(y_true), with_no_symptoms(y_pred)
    labels = list(range(truth.shape[1]))
    defined = defined_symptoms(truth)
    _, _, f1, _ = precision_recall_fscore_support(
        truth, pred, labels=labels, average=None, zero_division=ZERO_DIVISION
    )
    _, _, micro, _ = precision_recall_fscore_support(
        truth, pred, labels=labels, average="micro", zero_division=ZERO_DIVISION
    )
    return {
        "f1_macro": _mean_defined(
            float(v) if ok else None for v, ok in zip(f1, defined, strict=True)
        ),
        "f1_micro": float(micro),
        "subset_accuracy": float(np.mean((truth == pred).all(axis=1))),
        "f1_no_symptoms": float(f1[-1]) if defined[-1] else None,
    }


def baseline_criteria_metrics(
    train_prevalence: np.ndarray, y_true: np.ndarray
) -> dict[str, dict[str, MetricValue]]:
    """Trivial baselines scored on ``y_true`` with :func:`criteria_metrics`.

    - ``prevalence``: every post gets the training prevalence of each symptom as its score, so
      at the 0.5 threshold it predicts the training majority class (positive iff
      prevalence >= 0.5).
    - ``all_positive``: every symptom predicted for every post (score 1.0). Its recall is 1 and
      its per-symptom precision is the symptom's prevalence in ``y_true``.

    Both scores are constant per symptom, so each ``pr_auc_<NAME>`` equals the prevalence of
    the symptom in ``y_true``: the floor a model's PR-AUC must beat.
    """
    prevalence = np.asarray(train_prevalence, dtype=float)
    y_true = np.asarray(y_true)
    if prevalence.shape != (y_true.shape[-1],) or not ((prevalence >= 0) & (prevalence <= 1)).all():
        raise ValueError(
            f"train_prevalence must be {y_true.shape[-1]} values in [0, 1]; got {prevalence}"
        )
    prevalence_scores = np.broadcast_to(prevalence, y_true.shape)
    return {
        "prevalence": criteria_metrics(y_true, prevalence_scores),
        "all_positive": criteria_metrics(y_true, np.ones(y_true.shape)),
    }


# ---------------------------------------------------------------------------- evidence


@dataclass(frozen=True)
class EvidenceExample:
    """One (post, symptom) pair for evidence binding.

    ``gold_spans`` are [start, end) character offsets into ``text``; empty means the pair has
    no evidence (a null pair). ``pred_span`` is ``None`` (or zero-length) for a null
    prediction. ``excluded`` pairs (gold unknown or outside the model's window) are skipped
    by every metric and only counted.
    """

    text: str
    gold_spans: tuple[Span, ...]
    pred_span: Span | None
    excluded: bool = False

    def __post_init__(self) -> None:
        for start, end in self.gold_spans:
            if not 0 <= start < end <= len(self.text):
                raise ValueError(f"gold span {(start, end)} is empty or outside the text")
        if self.pred_span is not None:
            start, end = self.pred_span
            if not 0 <= start <= end <= len(self.text):
                raise ValueError(f"predicted span {self.pred_span} is outside the text")


def _normalize_answer(text: str) -> list[str]:
    # The SQuAD v1.1 evaluation script's normalisation, so numbers compare with the literature.
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return ARTICLES_RE.sub(" ", text).split()


def span_token_f1(pred: str, gold: str) -> float:
    """SQuAD token F1 of two strings.

    Both are lowercased, stripped of punctuation and of the articles a/an/the, and split on
    whitespace. With ``common`` the size of the multiset intersection of the tokens,
    precision = common/len(pred tokens), recall = common/len(gold tokens), F1 = 2PR/(P+R).
    Both token lists empty → 1.0; exactly one empty (or no common token) → 0.0.
    """
    pred_tokens, gold_tokens = _normalize_answer(pred), _normalize_answer(gold)
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def span_char_f1(pred: Span | None, gold: Span) -> float:
    """Character-offset F1 of [start, end) ranges.

    overlap = max(0, min(ends) - max(starts)); precision = overlap/len(pred),
    recall = overlap/len(gold), F1 = 2PR/(P+R). A ``None`` prediction → 0.0. Zero-length ranges
    count as empty: both empty → 1.0, exactly one empty → 0.0.
    """
    if pred is None:
        return 0.0
    pred_len, gold_len = pred[1] - pred[0], gold[1] - gold[0]
    if pred_len <= 0 or gold_len <= 0:
        return float(pred_len <= 0 and gold_len <= 0)
    overlap = min(pred[1], gold[1]) - max(pred[0], gold[0])
    if overlap <= 0:
        return 0.0
    precision, recall = overlap / pred_len, overlap / gold_len
    return 2 * precision * recall / (precision + recall)


def _strip_span(text: str, span: Span) -> Span:
    start, end = span
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _is_null(span: Span | None) -> bool:
    return span is None or span[0] >= span[1]


def _score_positive_pair(example: EvidenceExample) -> tuple[float, float, float]:
    """(exact_match, token f1, char f1) of one pair that has gold evidence."""
    if example.pred_span is None or _is_null(example.pred_span):
        return 0.0, 0.0, 0.0
    text = example.text
    pred = _strip_span(text, example.pred_span)
    golds = [_strip_span(text, gold) for gold in example.gold_spans]
    exact = float(pred in golds)
    token_f1 = max(span_token_f1(text[pred[0] : pred[1]], text[g[0] : g[1]]) for g in golds)
    char_f1 = max(span_char_f1(pred, gold) for gold in golds)
    return exact, token_f1, char_f1


def positive_pair_token_f1(example: EvidenceExample) -> float:
    """Token F1 of a pair with gold evidence (0 for a null prediction)."""
    return _score_positive_pair(example)[1]


def _mean_or_none(values: Sequence[float] | np.ndarray) -> MetricValue:
    return float(np.mean(values)) if len(values) else None


def evidence_metrics(examples: Iterable[EvidenceExample]) -> dict[str, MetricValue]:
    """Evidence-binding metrics over (post, symptom) pairs.

    Pairs with ``excluded=True`` are skipped by every metric and counted in ``n_excluded``.
    Spans are compared after stripping surrounding whitespace from both sides' offsets, so a
    prediction that differs from a gold sentence only by surrounding spaces is exact. A pair
    may have several gold spans; a prediction is scored against the best-matching one.

    - ``exact_match``: over pairs with gold evidence, 1 if the stripped prediction equals a
      stripped gold span, else 0 (a null prediction scores 0).
    - ``f1``: over pairs with gold, max over gold spans of :func:`span_token_f1` of the
      predicted and gold texts; a null prediction scores 0.
    - ``char_f1``: as ``f1`` but with :func:`span_char_f1` on the stripped offsets.
    - ``null_span_accuracy``: over pairs without gold, the fraction predicted null (``None``
      or zero-length).
    - ``balanced_f1``: the harmonic mean of ``f1`` and ``null_span_accuracy`` (0 when both are
      0); "always null" and "never null" both score 0. Defined only with pairs of both kinds.
    - ``n_positive_pairs``, ``n_null_pairs``, ``n_excluded``: the pair counts, as floats.

    An average over an empty set is ``None``.
    """
    scored: list[tuple[float, float, float]] = []
    null_hits: list[float] = []
    n_excluded = 0
    for example in examples:
        if example.excluded:
            n_excluded += 1
        elif example.gold_spans:
            scored.append(_score_positive_pair(example))
        else:
            null_hits.append(float(_is_null(example.pred_span)))
    columns = np.array(scored, dtype=float).reshape(-1, 3)  # exact, token f1, char f1
    f1, null_accuracy = _mean_or_none(columns[:, 1]), _mean_or_none(null_hits)
    balanced = None
    if f1 is not None and null_accuracy is not None:
        total = f1 + null_accuracy
        balanced = 2 * f1 * null_accuracy / total if total > 0 else 0.0
    return {
        "exact_match": _mean_or_none(columns[:, 0]),
        "f1": f1,
        "char_f1": _mean_or_none(columns[:, 2]),
        "null_span_accuracy": null_accuracy,
        "balanced_f1": balanced,
        "n_positive_pairs": float(len(scored)),
        "n_null_pairs": float(len(null_hits)),
        "n_excluded": float(n_excluded),
    }


# ---------------------------------------------------------------------------- logging


def flatten_for_logging(
    prefix: str, metrics: Mapping[str, object]
) -> tuple[dict[str, float], list[str]]:
    """Prefix the keys of ``metrics`` and keep only values MLflow can log.

    Nested mappings are flattened with ``_`` (``{"prevalence": {"f1_macro": x}}`` →
    ``<prefix>prevalence_f1_macro``). Values are cast to float. ``None``, NaN and ±inf are
    dropped; the second return value lists the dropped (prefixed) keys in input order.
    A value that is not a number raises ``TypeError``.
    """
    logged: dict[str, float] = {}
    dropped: list[str] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            nested, nested_dropped = flatten_for_logging(f"{name}_", value)
            logged.update(nested)
            dropped.extend(nested_dropped)
        elif value is None:
            dropped.append(name)
        elif isinstance(value, int | float | np.number):
            number = float(value)
            if math.isfinite(number):
                logged[name] = number
            else:
                dropped.append(name)
        else:
            raise TypeError(f"metric {name!r} is {type(value).__name__}, not a number")
    return logged, dropped
