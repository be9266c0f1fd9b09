"""The post-level bootstrap of the test metrics (leanhpo.training.bootstrap)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from leanhpo.metric_names import SYMPTOMS
from leanhpo.training.bootstrap import (
    CRITERIA_INTERVAL_KEYS,
    EVIDENCE_INTERVAL_KEYS,
    JOINT_INTERVAL_KEYS,
    bootstrap_test_metrics,
    criteria_resamples,
    evidence_resamples,
    resample_counts,
)
from leanhpo.training.joint import joint_metrics
from leanhpo.training.metrics import EvidenceExample, criteria_metrics, evidence_metrics

SENTENCES = (
    "I feel sad all the time.",
    "Nothing is fun any more.",
    "I cannot sleep at night.",
    "I am tired every single day.",
    "I think about dying.",
)
TEXT = " ".join(SENTENCES)
STARTS = [TEXT.index(s) for s in SENTENCES]
SPANS = [(start, start + len(s)) for start, s in zip(STARTS, SENTENCES, strict=True)]


def make_case(n_posts: int, seed: int = 0, prevalence: float = 0.35):
    """Labels, noisy scores (some tied, some exactly at 0.5), evidence pairs of every kind
    (exact, partial, wrong sentence, null on a positive, a span on a null pair, excluded) and
    each pair's post, nine pairs per post as Evaluation keeps them."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n_posts, len(SYMPTOMS))) < prevalence).astype(int)
    scores = np.clip(labels * 0.35 + rng.random(labels.shape) * 0.65, 0, 1)
    scores[rng.random(labels.shape) < 0.1] = 0.5
    scores = np.round(scores, 2)  # ties, as a calibrated model's rounded outputs have
    examples, pair_posts = [], []
    for post in range(n_posts):
        for symptom in range(len(SYMPTOMS)):
            gold_index = (post + symptom) % len(SPANS)
            gold = (SPANS[gold_index],) if labels[post, symptom] else ()
            draw = rng.random()
            if draw < 0.3:
                pred = gold[0] if gold else None
            elif draw < 0.45:
                pred = (SPANS[gold_index][0], SPANS[gold_index][1] - 6)  # a partial span
            elif draw < 0.6:
                pred = SPANS[(gold_index + 1) % len(SPANS)]
            else:
                pred = None
            examples.append(EvidenceExample(TEXT, gold, pred, excluded=rng.random() < 0.05))
            pair_posts.append(post)
    return labels, scores, examples, np.array(pair_posts)


def _resampled(counts_row: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(counts_row)), counts_row)


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def test_resample_counts_draw_every_resample_of_n_posts_reproducibly():
    counts = resample_counts(40, 300, seed=3)
    assert counts.shape == (300, 40) and (counts.sum(axis=1) == 40).all()
    assert np.array_equal(counts, resample_counts(40, 300, seed=3))
    assert not np.array_equal(counts, resample_counts(40, 300, seed=4))
    # each post is drawn once per resample on average
    assert counts.mean() == 1.0 and 0.9 < counts.std() < 1.1
    with pytest.raises(ValueError, match="at least one post"):
        resample_counts(0, 10, seed=1)


@pytest.mark.parametrize("threshold", [0.5, np.linspace(0.3, 0.7, len(SYMPTOMS))])
def test_vectorised_criteria_equal_criteria_metrics_of_each_resample(threshold):
    labels, scores, _, _ = make_case(30, seed=1, prevalence=0.15)
    counts = resample_counts(30, 60, seed=5)
    fast = criteria_resamples(labels, scores, counts, threshold)
    undefined_pr_auc = undefined_f1 = 0
    for b, row in enumerate(counts):
        drawn = _resampled(row)
        slow = criteria_metrics(labels[drawn], scores[drawn], threshold)
        for key, value in slow.items():
            if key.startswith("support_") or key == "defined_symptoms":
                continue
            assert fast[key][b] == pytest.approx(_nan_if_none(value), abs=1e-12, nan_ok=True), key
        undefined_pr_auc += sum(slow[f"pr_auc_{s}"] is None for s in SYMPTOMS)
        undefined_f1 += sum(slow[f"f1_{s}"] is None for s in SYMPTOMS)
    assert undefined_pr_auc > 0  # the case does exercise resamples without a positive
    assert undefined_f1 == undefined_pr_auc  # and leaves F1 undefined exactly there
    assert set(CRITERIA_INTERVAL_KEYS) <= set(fast)


def test_vectorised_evidence_equals_evidence_metrics_of_each_resample():
    n_posts = 25
    _, _, examples, pair_posts = make_case(n_posts, seed=2, prevalence=0.12)
    counts = resample_counts(n_posts, 80, seed=6)
    fast = evidence_resamples(examples, pair_posts, counts)
    by_post = [
        [e for e, p in zip(examples, pair_posts, strict=True) if p == post]
        for post in range(n_posts)
    ]
    for b, row in enumerate(counts):
        drawn = [pair for post in _resampled(row) for pair in by_post[post]]
        slow = evidence_metrics(drawn)
        for key in EVIDENCE_INTERVAL_KEYS:
            assert fast[key][b] == pytest.approx(_nan_if_none(slow[key]), abs=1e-12, nan_ok=True), (
                key
            )


def test_undefined_evidence_resamples_are_dropped_and_counted():
    """Two posts, one of which holds the only positive pair: resamples without it leave f1
    and balanced_f1 undefined; they are dropped from the interval and counted."""
    gold = EvidenceExample(TEXT, (SPANS[0],), SPANS[0])
    null = EvidenceExample(TEXT, (), None)
    examples = [gold, *[null] * 8, *[null] * 9]
    result = bootstrap_test_metrics(
        np.array([[1] + [0] * 8, [0] * 9]),
        np.array([[0.9] + [0.1] * 8, [0.1] * 9]),
        examples,
        np.repeat([0, 1], 9),
        np.full(9, 0.2),
        samples=200,
        level=0.95,
        seed=1,
    )
    assert result is not None
    f1 = result.intervals["evidence_f1"]
    assert f1 == {"low": 1.0, "high": 1.0, "undefined": f1["undefined"]}
    assert 20 < f1["undefined"] < 100  # a quarter of the resamples miss post 0
    assert result.intervals["evidence_null_span_accuracy"]["undefined"] == 0
    assert result.intervals["criteria_pr_auc_ANHEDONIA"] is None  # never a positive


def _point_metrics(labels, scores, examples):
    point = {f"criteria_{k}": v for k, v in criteria_metrics(labels, scores).items()}
    point.update({f"evidence_{k}": v for k, v in evidence_metrics(examples).items()})
    decided = (np.asarray(scores) >= 0.5).reshape(-1)
    point.update({f"joint_{k}": v for k, v in joint_metrics(examples, decided).items()})
    return point


def test_perfect_predictions_collapse_every_interval_to_the_point_value():
    labels, _, examples, pair_posts = make_case(40, seed=3)
    labels[:, -1] = 0  # a symptom nobody shows: undefined everywhere (no interval)
    gold = [  # the pairs of the symptom nobody shows lose their gold evidence too
        e.gold_spans if labels.reshape(-1)[i] else () for i, e in enumerate(examples)
    ]
    perfect = [
        EvidenceExample(e.text, spans, spans[0] if spans else None)
        for e, spans in zip(examples, gold, strict=True)
    ]
    scores = labels.astype(float)
    result = bootstrap_test_metrics(
        labels, scores, perfect, pair_posts, labels.mean(0), samples=300, level=0.9, seed=2
    )
    assert result is not None
    point = _point_metrics(labels, scores, perfect)
    for key, interval in result.intervals.items():
        if point[key] is None:
            assert interval is None, key
        else:
            assert (interval["low"], interval["high"]) == (point[key], point[key]), key
            # only a rare label can be missing from a resample (a few posts show no symptom)
            assert interval["undefined"] == 0 or key == "criteria_ten_label_f1_no_symptoms", key
    assert result.baseline_comparison["share_not_better"] == 0.0


def test_a_constant_predictor_does_not_beat_the_strongest_baseline():
    labels, _, examples, pair_posts = make_case(60, seed=4)
    everything = np.ones(labels.shape)  # the all_positive baseline itself
    result = bootstrap_test_metrics(
        labels, everything, examples, pair_posts, labels.mean(0), 500, 0.95, seed=3
    )
    assert result is not None
    comparison = result.baseline_comparison
    assert comparison["baseline"] == "all_positive"
    assert comparison["share_not_better"] == 1.0
    assert comparison["baseline_f1_macro"] == pytest.approx(
        criteria_metrics(labels, everything)["f1_macro"]
    )
    assert comparison["baseline_ci"] == {
        k: result.intervals["criteria_f1_macro"][k] for k in ("low", "high", "undefined")
    }
    nothing = np.zeros(labels.shape)  # predicts no symptom: macro-F1 0
    silent = bootstrap_test_metrics(
        labels, nothing, examples, pair_posts, labels.mean(0), 500, 0.95, seed=3
    )
    assert silent is not None and silent.baseline_comparison["share_not_better"] == 1.0


def test_a_good_model_beats_the_baseline_in_almost_every_resample():
    labels, scores, examples, pair_posts = make_case(150, seed=5)
    result = bootstrap_test_metrics(
        labels, scores, examples, pair_posts, labels.mean(0), 1000, 0.95, seed=4
    )
    assert result is not None
    comparison = result.baseline_comparison
    assert comparison["share_not_better"] < 0.05
    low, high = comparison["baseline_ci"]["low"], comparison["baseline_ci"]["high"]
    assert low <= comparison["baseline_f1_macro"] <= high


def test_same_seed_same_intervals_other_seed_other_intervals():
    labels, scores, examples, pair_posts = make_case(50, seed=6)

    def run(seed):
        return bootstrap_test_metrics(
            labels, scores, examples, pair_posts, labels.mean(0), 200, 0.95, seed
        )

    first, again, other = run(11), run(11), run(12)
    assert first == again
    assert first is not None and other is not None
    assert first.intervals != other.intervals


def test_intervals_contain_the_point_value_on_a_realistic_case():
    labels, scores, examples, pair_posts = make_case(150, seed=7, prevalence=0.3)
    result = bootstrap_test_metrics(
        labels, scores, examples, pair_posts, labels.mean(0), 1000, 0.95, seed=7
    )
    assert result is not None
    assert set(result.intervals) == {
        *(f"criteria_{k}" for k in CRITERIA_INTERVAL_KEYS),
        *(f"evidence_{k}" for k in EVIDENCE_INTERVAL_KEYS),
        *(f"joint_{k}" for k in JOINT_INTERVAL_KEYS),
    }
    point = _point_metrics(labels, scores, examples)
    widths = []
    for key, interval in result.intervals.items():
        assert interval is not None, key
        assert interval["low"] <= point[key] <= interval["high"], key
        if key != "criteria_ten_label_f1_no_symptoms":  # this model never finds that label
            widths.append(interval["high"] - interval["low"])
    assert min(widths) > 0
    # a wider level gives a wider interval
    wider = bootstrap_test_metrics(
        labels, scores, examples, pair_posts, labels.mean(0), 1000, 0.99, seed=7
    )
    assert wider is not None
    f1, f1_99 = result.intervals["criteria_f1_macro"], wider.intervals["criteria_f1_macro"]
    assert f1_99["low"] <= f1["low"] and f1["high"] <= f1_99["high"]


def test_a_symptom_missing_from_a_resample_is_left_out_of_that_resample_only():
    """A symptom with a single test positive is absent from about a third of the resamples:
    there its F1 is undefined (dropped from its interval and counted) and that resample's
    macro-F1 averages the other symptoms, for the model and the baseline alike; it used to
    count as 0 and drag the resample's macro-F1 down by a ninth of a point per symptom."""
    labels, scores, examples, pair_posts = make_case(40, seed=8, prevalence=0.4)
    labels[:, 4] = 0
    labels[0, 4] = 1  # one post shows PSYCHOMOTOR
    scores[:, 4] = labels[:, 4]  # and the model finds it, without a false alarm
    counts = resample_counts(40, 400, seed=9)
    fast = criteria_resamples(labels, scores, counts)
    without = counts[:, 0] == 0
    assert 0.2 < without.mean() < 0.5
    assert np.isnan(fast["f1_PSYCHOMOTOR"][without]).all()
    assert (fast["f1_PSYCHOMOTOR"][~without] == 1.0).all()
    for b in np.flatnonzero(without)[:5]:
        kept = [fast[f"f1_{s}"][b] for s in SYMPTOMS if s != "PSYCHOMOTOR"]
        assert fast["f1_macro"][b] == pytest.approx(np.mean(kept))
    result = bootstrap_test_metrics(
        labels, scores, examples, pair_posts, labels.mean(0), 400, 0.95, seed=9
    )
    assert result is not None
    assert result.intervals["criteria_f1_PSYCHOMOTOR"] == {
        "low": 1.0,
        "high": 1.0,
        "undefined": int(without.sum()),
    }


def test_zero_samples_turn_the_bootstrap_off():
    labels, scores, examples, pair_posts = make_case(10)
    args = (labels, scores, examples, pair_posts, labels.mean(0))
    assert bootstrap_test_metrics(*args, samples=0, level=0.95, seed=1) is None
    with pytest.raises(ValueError, match="level"):
        bootstrap_test_metrics(*args, samples=10, level=1.0, seed=1)
