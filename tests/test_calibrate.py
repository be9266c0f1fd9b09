"""Null-threshold calibration: the chosen threshold is optimal for balanced_f1, checked by brute
force against the real evidence metrics."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leanhpo.training.calibrate import EDGE_OFFSET, FALLBACK_THRESHOLD, calibrate_null_threshold
from leanhpo.training.metrics import EvidenceExample, evidence_metrics

TEXT = "I cannot sleep at night. I feel worthless. The weather was fine."
SLEEP, WORTHLESS, WEATHER = (0, 24), (25, 42), (43, len(TEXT))
PARTIAL = (25, 31)  # "I feel": part of WORTHLESS


def _positive(pred: tuple[int, int] | None, gold=SLEEP, excluded=False) -> EvidenceExample:
    return EvidenceExample(TEXT, (gold,), pred, excluded=excluded)


def _null(pred: tuple[int, int] | None = WEATHER) -> EvidenceExample:
    return EvidenceExample(TEXT, (), pred)


def _balanced_at(examples, margins, threshold: float) -> float:
    decoded = [
        EvidenceExample(e.text, e.gold_spans, None if m > threshold else e.pred_span, e.excluded)
        for e, m in zip(examples, margins, strict=True)
    ]
    value = evidence_metrics(decoded)["balanced_f1"]
    assert value is not None
    return value


def test_finds_spans_when_every_margin_favours_null():
    """The failure calibration exists for: at threshold 0 every pair is null (balanced_f1 0),
    yet positives have smaller margins than nulls, so a threshold between them wins."""
    examples = [_positive(SLEEP), _positive(SLEEP), _null(), _null(), _null()]
    margins = [4.0, 5.0, 7.0, 8.0, 9.0]
    assert _balanced_at(examples, margins, 0.0) == 0.0
    threshold = calibrate_null_threshold(examples, margins)
    assert threshold == pytest.approx(6.0)  # midway between 5 (last positive) and 7 (first null)
    assert _balanced_at(examples, margins, threshold) == pytest.approx(1.0)


def test_hand_computed_trade_off():
    # positives: margins -1 (exact), 2 (exact), 6 (partial); nulls: 3, 5, 8
    examples = [
        _positive(SLEEP),
        _positive(WORTHLESS, gold=WORTHLESS),
        _positive(PARTIAL, gold=WORTHLESS),
        _null(),
        _null(),
        _null(),
    ]
    margins = [-1.0, 2.0, 6.0, 3.0, 5.0, 8.0]
    # cut 2.5: f1 2/3, null acc 1 -> 0.8; cut 7: f1 (2 + 0.5)/3 = 5/6, null acc 1/3 -> 0.476
    threshold = calibrate_null_threshold(examples, margins)
    assert threshold == pytest.approx(2.5)
    assert _balanced_at(examples, margins, threshold) == pytest.approx(0.8)


def test_no_positive_pairs_means_all_null_and_no_pairs_the_fallback():
    examples, margins = [_null(), _null()], [-3.0, 1.0]
    threshold = calibrate_null_threshold(examples, margins)
    assert threshold == pytest.approx(-3.0 - EDGE_OFFSET)
    assert calibrate_null_threshold([], []) == FALLBACK_THRESHOLD
    no_span = [_positive(None)]
    assert calibrate_null_threshold(no_span, [math.inf]) == FALLBACK_THRESHOLD


def test_only_positive_pairs_means_never_null():
    examples, margins = [_positive(SLEEP), _positive(SLEEP)], [3.0, 10.0]
    assert calibrate_null_threshold(examples, margins) == pytest.approx(10.0 + EDGE_OFFSET)


def test_excluded_pairs_do_not_move_the_threshold():
    examples = [_positive(SLEEP), _null()]
    margins = [1.0, 2.0]
    with_excluded = [*examples, _positive(SLEEP, excluded=True)]
    assert calibrate_null_threshold(examples, margins) == calibrate_null_threshold(
        with_excluded, [*margins, 50.0]
    )


def test_ties_go_to_the_threshold_nearest_zero():
    # wrong spans everywhere: every cut scores 0, so the heads' own rule (0) is kept as near as
    # the cuts allow
    examples = [_positive(WEATHER), _null(), _positive(WEATHER)]
    margins = [-4.0, 1.0, 6.0]
    assert calibrate_null_threshold(examples, margins) == pytest.approx(-1.5)


PAIRS = st.lists(
    st.tuples(
        st.sampled_from(["exact", "partial", "wrong", "null_right", "null_wrong"]),
        st.one_of(
            st.floats(min_value=-20, max_value=20, allow_nan=False),
            st.sampled_from([0.0, 1.0, math.inf]),
        ),
    ),
    min_size=1,
    max_size=25,
)
KIND = {
    "exact": lambda: _positive(WORTHLESS, gold=WORTHLESS),
    "partial": lambda: _positive(PARTIAL, gold=WORTHLESS),
    "wrong": lambda: _positive(WEATHER, gold=WORTHLESS),
    "null_right": _null,
    "null_wrong": _null,
}


@settings(max_examples=150, deadline=None)
@given(PAIRS, st.lists(st.floats(min_value=-25, max_value=25, allow_nan=False), max_size=10))
def test_calibrated_threshold_is_optimal(pairs, probes):
    examples = [KIND[kind]() for kind, _ in pairs]
    margins = [margin for _, margin in pairs]
    has_both = any(e.gold_spans for e in examples) and any(not e.gold_spans for e in examples)
    threshold = calibrate_null_threshold(examples, margins)
    assert math.isfinite(threshold)
    if not has_both:
        return
    best = _balanced_at(examples, margins, threshold)
    for probe in [*probes, 0.0, *margins]:
        if math.isfinite(probe):
            assert best >= _balanced_at(examples, margins, probe) - 1e-9


def _one_post_evaluation():
    """One post, its nine pairs in symptom order: symptom 0 shown (evidence SLEEP) and decided
    present; symptom 1 not shown, decided absent, yet the evidence head finds WEATHER with a
    margin of 9; the other seven have no span at all."""
    import numpy as np

    from leanhpo.training.evaluation import Evaluation

    pairs = [_positive(SLEEP), _null(), *(_null(None) for _ in range(7))]
    margins = [4.0, 9.0, *(math.inf for _ in range(7))]
    probabilities, labels = np.zeros((1, 9)), np.zeros((1, 9))
    probabilities[0, 0], labels[0, 0] = 0.9, 1
    return Evaluation({"loss": 1.0}, probabilities, labels, pairs, margins, np.zeros(9, int))


def test_evaluation_decodes_under_the_resolved_threshold():
    from leanhpo.config import Config
    from leanhpo.training.evaluation import resolve_null_threshold

    evaluation = _one_post_evaluation()
    fixed = Config.from_dict({"model": {"null_threshold": 2.5}}).model
    assert resolve_null_threshold(fixed, evaluation) == 2.5
    auto = Config.from_dict({"model": {"evidence_for": "all"}}).model
    assert auto.null_threshold == "auto"
    threshold = resolve_null_threshold(auto, evaluation)
    assert threshold == pytest.approx(6.5)
    nulls = evaluation.metrics("val_", 2.5)
    assert nulls["val_evidence_f1"] == 0.0 and nulls["val_evidence_null_span_accuracy"] == 1.0
    calibrated = evaluation.metrics("val_", threshold)
    assert calibrated["val_evidence_balanced_f1"] == 1.0
    assert calibrated["val_evidence_null_threshold"] == threshold


def test_with_evidence_for_present_the_threshold_is_calibrated_on_the_pairs_decided_present():
    """Under `present` symptom 1 is decided absent, so it gets no evidence at any threshold:
    the sweep only weighs the pairs decided present, and here any threshold above symptom 0's
    margin is best (the nearest to 0 of the cuts that keep its span: 5, past its margin 4)."""
    from leanhpo.config import Config
    from leanhpo.training.evaluation import resolve_null_threshold

    evaluation = _one_post_evaluation()
    present = Config.from_dict({"model": {"evidence_for": "present"}}).model
    threshold = resolve_null_threshold(present, evaluation, 0.5)
    assert threshold == pytest.approx(4.0 + EDGE_OFFSET)
    given = evaluation.evidence(100.0, "present", 0.5)
    assert given[0].pred_span == SLEEP and given[1].pred_span is None  # absent: no evidence
    assert evaluation.evidence(100.0, "all", 0.5)[1].pred_span == WEATHER
    flat = evaluation.metrics("", 100.0, 0.5, "present")
    assert flat["joint_n_evidence"] == 1.0 and flat["joint_n_evidence_absent"] == 0.0
    assert evaluation.metrics("", 100.0, 0.5, "all")["joint_n_evidence_absent"] == 1.0
