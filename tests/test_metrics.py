"""Metrics against hand-computed values; any warning (e.g. sklearn's) fails a test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from leanhpo.training.metrics import (
    SYMPTOMS,
    EvidenceExample,
    baseline_criteria_metrics,
    criteria_metrics,
    evidence_metrics,
    flatten_for_logging,
    span_char_f1,
    span_token_f1,
)

pytestmark = pytest.mark.filterwarnings("error")

N_SYMPTOMS = len(SYMPTOMS)


def _matrix(*columns: list[float], n_posts: int = 4, fill: float = 0.0) -> np.ndarray:
    """[n_posts, 9] matrix whose first columns are given and the rest are ``fill``."""
    matrix = np.full((n_posts, N_SYMPTOMS), fill)
    for j, column in enumerate(columns):
        matrix[:, j] = column
    return matrix


# ---------------------------------------------------------------------------- criteria


def test_perfect_prediction_scores_one_everywhere() -> None:
    y_true = np.vstack([np.eye(N_SYMPTOMS), np.ones(N_SYMPTOMS), np.zeros(N_SYMPTOMS)])
    metrics = criteria_metrics(y_true, y_true.astype(float))
    for key, value in metrics.items():
        if key.startswith("support_"):
            assert value == 2.0
        elif key == "defined_symptoms":
            assert value == N_SYMPTOMS
        else:
            assert value == 1.0, key


def test_all_wrong_prediction() -> None:
    y_true = np.vstack([np.ones(N_SYMPTOMS), np.zeros(N_SYMPTOMS)])
    metrics = criteria_metrics(y_true, 1.0 - y_true)
    assert metrics["accuracy"] == 0.0
    assert metrics["exact_match_ratio"] == 0.0
    for average in ("micro", "macro"):
        for kind in ("f1", "precision", "recall"):
            assert metrics[f"{kind}_{average}"] == 0.0
    for name in SYMPTOMS:
        assert metrics[f"f1_{name}"] == 0.0
        assert metrics[f"support_{name}"] == 1.0
        # Fully inverted ranking: AP = the positive rate, 1 of 2 posts.
        assert metrics[f"pr_auc_{name}"] == pytest.approx(0.5)
    assert metrics["pr_auc_macro"] == pytest.approx(0.5)


def test_macro_and_micro_differ_as_computed_by_hand() -> None:
    # Column 0: TP=3 FP=1 FN=0. Column 1: TP=0 FP=1 FN=1. Columns 2..8: all true negatives.
    y_true = _matrix([1, 1, 1, 0], [1, 0, 0, 0])
    scores = _matrix([0.9, 0.8, 0.7, 0.6], [0.3, 0.6, 0.1, 0.2], fill=0.1)
    metrics = criteria_metrics(y_true, scores)
    first, second = SYMPTOMS[0], SYMPTOMS[1]
    assert metrics[f"precision_{first}"] == pytest.approx(3 / 4)
    assert metrics[f"recall_{first}"] == pytest.approx(1.0)
    assert metrics[f"f1_{first}"] == pytest.approx(6 / 7)
    assert metrics[f"f1_{second}"] == 0.0
    assert metrics[f"precision_{second}"] == 0.0  # predicted once, wrongly
    # Micro pools TP=3, FP=2, FN=1.
    assert metrics["precision_micro"] == pytest.approx(3 / 5)
    assert metrics["recall_micro"] == pytest.approx(3 / 4)
    assert metrics["f1_micro"] == pytest.approx(2 / 3)
    # No post shows columns 2..8: undefined, and the macro averages cover columns 0 and 1 only
    # (they used to average nine, seven of them a 0 that no model could change).
    assert metrics["defined_symptoms"] == 2.0
    for name in SYMPTOMS[2:]:
        for kind in ("f1", "precision", "recall", "pr_auc"):
            assert metrics[f"{kind}_{name}"] is None, (kind, name)
    assert metrics["precision_macro"] == pytest.approx((3 / 4) / 2)
    assert metrics["recall_macro"] == pytest.approx(1 / 2)
    assert metrics["f1_macro"] == pytest.approx((6 / 7) / 2)
    # Three wrong decisions out of 36; only post 2 is entirely right.
    assert metrics["accuracy"] == pytest.approx(33 / 36)
    assert metrics["exact_match_ratio"] == pytest.approx(1 / 4)
    assert metrics[f"support_{first}"] == 3.0
    assert metrics[f"support_{second}"] == 1.0
    assert metrics[f"support_{SYMPTOMS[2]}"] == 0.0
    # Column 1 ranks one negative (0.6) above its positive (0.3): AP = 1/2.
    assert metrics[f"pr_auc_{first}"] == pytest.approx(1.0)
    assert metrics[f"pr_auc_{second}"] == pytest.approx(0.5)
    assert metrics["pr_auc_macro"] == pytest.approx(0.75)


def test_pr_auc_is_none_without_positives() -> None:
    y_true = _matrix([1, 0, 0, 0])
    metrics = criteria_metrics(y_true, _matrix([0.9, 0.2, 0.1, 0.4], fill=0.3))
    assert metrics[f"pr_auc_{SYMPTOMS[0]}"] == pytest.approx(1.0)
    assert all(metrics[f"pr_auc_{name}"] is None for name in SYMPTOMS[1:])
    assert metrics["pr_auc_macro"] == pytest.approx(1.0)
    none_at_all = criteria_metrics(np.zeros((3, N_SYMPTOMS)), np.full((3, N_SYMPTOMS), 0.7))
    assert none_at_all["pr_auc_macro"] is None


def test_a_symptom_without_a_positive_is_undefined_not_zero() -> None:
    """One symptom that no post shows, predicted once by mistake: its F1 is undefined and left
    out of the macro average (which used to be capped at 8/9 by its 0), while its false alarm
    still counts in the micro average and the accuracy."""
    y_true = np.vstack([np.eye(N_SYMPTOMS, dtype=int), np.zeros((1, N_SYMPTOMS), dtype=int)])
    y_true[:, 4] = 0  # PSYCHOMOTOR: no post shows it
    scores = y_true.astype(float)
    scores[-1, 4] = 0.9  # a false alarm for it
    metrics = criteria_metrics(y_true, scores)
    psychomotor = SYMPTOMS[4]
    assert metrics[f"f1_{psychomotor}"] is None
    assert metrics[f"precision_{psychomotor}"] is None
    assert metrics[f"recall_{psychomotor}"] is None
    assert metrics[f"support_{psychomotor}"] == 0.0
    assert metrics["defined_symptoms"] == 8.0
    assert metrics["f1_macro"] == 1.0  # every defined symptom is perfect
    assert metrics["f1_micro"] == pytest.approx(2 * 8 / (2 * 8 + 1))  # TP 8, FP 1
    assert metrics["accuracy"] == pytest.approx(1 - 1 / (10 * N_SYMPTOMS))
    nothing = criteria_metrics(np.zeros((2, N_SYMPTOMS)), np.zeros((2, N_SYMPTOMS)))
    assert nothing["f1_macro"] is None and nothing["defined_symptoms"] == 0.0
    assert nothing["accuracy"] == 1.0


def test_ten_label_metrics_by_hand() -> None:
    """Nine symptoms plus NO_SYMPTOMS, as the ReDSM5 authors' baselines score them."""
    # Post 0 shows symptom 0 (found); post 1 none (predicted symptom 1: a false alarm, and its
    # NO_SYMPTOMS missed); post 2 none (right: NO_SYMPTOMS found); post 3 symptom 1 (missed,
    # so it is predicted NO_SYMPTOMS).
    y_true = _matrix([1, 0, 0, 0], [0, 0, 0, 1])
    scores = _matrix([0.9, 0.1, 0.1, 0.1], [0.1, 0.8, 0.1, 0.2], fill=0.1)
    metrics = criteria_metrics(y_true, scores)
    # Labels with a positive: symptom 0 (F1 1), symptom 1 (TP 0, FP 1, FN 1: F1 0) and
    # NO_SYMPTOMS (true for posts 1, 2; predicted for posts 2, 3: TP 1, FP 1, FN 1: F1 1/2).
    assert metrics["ten_label_f1_no_symptoms"] == pytest.approx(0.5)
    assert metrics["ten_label_f1_macro"] == pytest.approx((1 + 0 + 0.5) / 3)
    # Pooled over the 4 x 10 decisions: TP 2, FP 2, FN 2.
    assert metrics["ten_label_f1_micro"] == pytest.approx(0.5)
    assert metrics["ten_label_subset_accuracy"] == pytest.approx(2 / 4)
    assert metrics["ten_label_subset_accuracy"] == metrics["exact_match_ratio"]
    all_ill = criteria_metrics(np.ones((2, N_SYMPTOMS)), np.ones((2, N_SYMPTOMS)))
    assert all_ill["ten_label_f1_no_symptoms"] is None  # every post shows a symptom
    assert all_ill["ten_label_f1_macro"] == 1.0


def test_threshold_is_inclusive() -> None:
    y_true = _matrix([1, 0, 0, 0])
    metrics = criteria_metrics(y_true, _matrix([0.3, 0.2, 0.2, 0.2]), threshold=0.3)
    assert metrics[f"f1_{SYMPTOMS[0]}"] == 1.0


@pytest.mark.parametrize(
    ("y_true", "scores"),
    [
        (np.zeros((2, N_SYMPTOMS)), np.zeros((3, N_SYMPTOMS))),
        (np.zeros((2, 4)), np.zeros((2, 4))),
        (np.zeros((0, N_SYMPTOMS)), np.zeros((0, N_SYMPTOMS))),
        (np.full((2, N_SYMPTOMS), 2), np.zeros((2, N_SYMPTOMS))),
    ],
)
def test_criteria_rejects_bad_inputs(y_true: np.ndarray, scores: np.ndarray) -> None:
    with pytest.raises(ValueError):
        criteria_metrics(y_true, scores)


def test_baselines() -> None:
    # Every symptom has a positive; symptom 0 is in 3 of 4 posts, the others in 1 of 4.
    y_true = np.zeros((4, N_SYMPTOMS))
    y_true[np.arange(N_SYMPTOMS) % 4, np.arange(N_SYMPTOMS)] = 1
    y_true[:3, 0] = 1
    prevalence = np.full(N_SYMPTOMS, 0.1)
    prevalence[0] = 0.6
    baselines = baseline_criteria_metrics(prevalence, y_true)

    all_positive = baselines["all_positive"]
    assert all_positive["recall_micro"] == 1.0
    assert all_positive["recall_macro"] == 1.0
    for j, name in enumerate(SYMPTOMS):
        expected = y_true[:, j].mean()
        assert all_positive[f"recall_{name}"] == 1.0
        assert all_positive[f"precision_{name}"] == pytest.approx(expected)
        assert all_positive[f"pr_auc_{name}"] == pytest.approx(expected)

    majority = baselines["prevalence"]
    assert majority[f"precision_{SYMPTOMS[0]}"] == pytest.approx(0.75)
    assert majority[f"recall_{SYMPTOMS[0]}"] == 1.0
    assert all(majority[f"f1_{name}"] == 0.0 for name in SYMPTOMS[1:])
    assert majority["pr_auc_macro"] == pytest.approx(all_positive["pr_auc_macro"])


def test_baselines_reject_bad_prevalence() -> None:
    with pytest.raises(ValueError):
        baseline_criteria_metrics(np.full(3, 0.5), np.zeros((2, N_SYMPTOMS)))
    with pytest.raises(ValueError):
        baseline_criteria_metrics(np.full(N_SYMPTOMS, 1.5), np.zeros((2, N_SYMPTOMS)))


@settings(max_examples=60, deadline=None)
@given(
    y_true=hnp.arrays(
        np.int8, st.tuples(st.integers(1, 6), st.just(N_SYMPTOMS)), elements=st.integers(0, 1)
    ),
    data=st.data(),
    threshold=st.floats(0.0, 1.0),
)
def test_criteria_metrics_are_bounded(
    y_true: np.ndarray, data: st.DataObject, threshold: float
) -> None:
    scores = data.draw(hnp.arrays(np.float64, y_true.shape, elements=st.floats(0.0, 1.0)))
    metrics = criteria_metrics(y_true, scores, threshold=threshold)
    for key, value in metrics.items():
        if key.startswith("support_"):
            assert value is not None and value >= 0
        elif key == "defined_symptoms":
            assert value == float(y_true.any(axis=0).sum())
        else:
            assert value is None or 0.0 <= value <= 1.0, key
    for j, name in enumerate(SYMPTOMS):
        precision, recall = metrics[f"precision_{name}"], metrics[f"recall_{name}"]
        f1 = metrics[f"f1_{name}"]
        if not y_true[:, j].any():  # undefined: all three, together
            assert precision is None and recall is None and f1 is None
            continue
        assert precision is not None and recall is not None and f1 is not None
        assert min(precision, recall) - 1e-12 <= f1 <= max(precision, recall) + 1e-12


# ---------------------------------------------------------------------------- evidence

TEXT = "I can't sleep at night.  I feel like a failure. Nothing helps."
SLEEP = (0, len("I can't sleep at night."))
FAILURE_START = TEXT.index("I feel")
FAILURE = (FAILURE_START, FAILURE_START + len("I feel like a failure."))


def test_span_token_f1_ignores_case_punctuation_and_articles() -> None:
    # pred tokens [cat, sat], gold [cat, sat, on, mat]: P=1, R=1/2.
    assert span_token_f1("The cat sat!", "a cat sat on the mat.") == pytest.approx(2 / 3)
    assert span_token_f1("An Apple, please", "apple please") == 1.0
    assert span_token_f1("", "  ") == 1.0
    assert span_token_f1("the", "") == 1.0  # only an article: both normalise to nothing
    assert span_token_f1("sleep", "") == 0.0
    assert span_token_f1("sleep", "tired") == 0.0


def test_span_char_f1_by_hand() -> None:
    assert span_char_f1((15, 25), (10, 20)) == pytest.approx(0.5)  # overlap 5 of 10 and 10
    assert span_char_f1((10, 15), (10, 20)) == pytest.approx(2 / 3)  # P=1, R=1/2
    assert span_char_f1((10, 20), (10, 20)) == 1.0
    assert span_char_f1((0, 5), (10, 20)) == 0.0
    assert span_char_f1(None, (10, 20)) == 0.0
    assert span_char_f1((4, 4), (10, 20)) == 0.0


def test_exact_match_ignores_surrounding_whitespace() -> None:
    padded_gold = (FAILURE[0] - 2, FAILURE[1] + 1)  # "  I feel like a failure. "
    assert TEXT[padded_gold[0] : padded_gold[1]] == "  I feel like a failure. "
    metrics = evidence_metrics([EvidenceExample(TEXT, (padded_gold,), FAILURE)])
    assert metrics["exact_match"] == 1.0
    assert metrics["f1"] == 1.0
    assert metrics["char_f1"] == 1.0


def test_evidence_metrics_by_hand() -> None:
    half_sleep = (0, len("I can't sleep"))  # tokens [i, cant, sleep] of [i, cant, sleep, at, night]
    examples = [
        EvidenceExample(TEXT, (SLEEP,), SLEEP),  # exact
        EvidenceExample(TEXT, (SLEEP, FAILURE), half_sleep),  # partial, best gold is SLEEP
        EvidenceExample(TEXT, (FAILURE,), None),  # missed
        EvidenceExample(TEXT, (), None),  # null, right
        EvidenceExample(TEXT, (), (3, 3)),  # zero-length counts as null
        EvidenceExample(TEXT, (), SLEEP),  # null, wrong
        EvidenceExample(TEXT, (FAILURE,), SLEEP, excluded=True),  # skipped
        EvidenceExample(TEXT, (), SLEEP, excluded=True),  # skipped
    ]
    metrics = evidence_metrics(examples)
    partial_token_f1 = 2 * 1 * (3 / 5) / (1 + 3 / 5)
    partial_char_f1 = 2 * 1 * (13 / 23) / (1 + 13 / 23)
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx((1 + partial_token_f1) / 3)
    assert metrics["char_f1"] == pytest.approx((1 + partial_char_f1) / 3)
    assert metrics["null_span_accuracy"] == pytest.approx(2 / 3)
    f1 = (1 + partial_token_f1) / 3
    assert metrics["balanced_f1"] == pytest.approx(2 * f1 * (2 / 3) / (f1 + 2 / 3))
    assert metrics["n_positive_pairs"] == 3.0
    assert metrics["n_null_pairs"] == 3.0
    assert metrics["n_excluded"] == 2.0


def test_evidence_empty_sets_are_none() -> None:
    empty = evidence_metrics([])
    assert empty == {
        "exact_match": None,
        "f1": None,
        "char_f1": None,
        "null_span_accuracy": None,
        "balanced_f1": None,
        "n_positive_pairs": 0.0,
        "n_null_pairs": 0.0,
        "n_excluded": 0.0,
    }
    only_null = evidence_metrics(iter([EvidenceExample(TEXT, (), None)]))
    assert only_null["exact_match"] is None and only_null["f1"] is None
    assert only_null["null_span_accuracy"] == 1.0
    only_positive = evidence_metrics([EvidenceExample(TEXT, (SLEEP,), SLEEP)])
    assert only_positive["null_span_accuracy"] is None
    only_excluded = evidence_metrics([EvidenceExample(TEXT, (SLEEP,), None, excluded=True)])
    assert only_excluded["f1"] is None and only_excluded["n_excluded"] == 1.0


@pytest.mark.parametrize(
    ("gold", "pred"),
    [(((5, 5),), None), (((0, len(TEXT) + 1),), None), ((), (10, 5)), ((), (-1, 3))],
)
def test_evidence_example_rejects_bad_spans(
    gold: tuple[tuple[int, int], ...], pred: tuple[int, int] | None
) -> None:
    with pytest.raises(ValueError):
        EvidenceExample(TEXT, gold, pred)


# ---------------------------------------------------------------------------- logging


def test_flatten_drops_none_and_non_finite() -> None:
    metrics = {
        "f1_macro": np.float64(0.5),
        "support": 3,
        "pr_auc": None,
        "loss": float("nan"),
        "ratio": np.inf,
        "baseline": {"f1_macro": 0.25, "pr_auc": None},
    }
    logged, dropped = flatten_for_logging("val_criteria_", metrics)
    assert logged == {
        "val_criteria_f1_macro": 0.5,
        "val_criteria_support": 3.0,
        "val_criteria_baseline_f1_macro": 0.25,
    }
    assert all(type(value) is float for value in logged.values())
    assert dropped == [
        "val_criteria_pr_auc",
        "val_criteria_loss",
        "val_criteria_ratio",
        "val_criteria_baseline_pr_auc",
    ]


def test_flatten_rejects_non_numbers() -> None:
    with pytest.raises(TypeError, match="val_name"):
        flatten_for_logging("val_", {"name": "bert"})


def test_flatten_criteria_output_is_loggable() -> None:
    metrics = criteria_metrics(_matrix([1, 0, 0, 0]), _matrix([0.9, 0.1, 0.1, 0.1]))
    logged, dropped = flatten_for_logging("val_criteria_", metrics)
    assert "val_criteria_f1_macro" in logged
    # the eight undefined symptoms' f1, precision, recall and pr_auc
    assert len(dropped) == 4 * (N_SYMPTOMS - 1)
    assert all(math.isfinite(value) for value in logged.values())
