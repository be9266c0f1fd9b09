"""What the study report, the closing summary, the report page, test_results.csv and the model
card say about the test figures (issue 25): an undefined symptom is null and named, never a 0;
the 10-label figures comparable with the ReDSM5 baselines are there under their own name."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from leanhpo.export.card import _metrics_table
from leanhpo.metric_names import SYMPTOMS
from leanhpo.report_items import results_table
from leanhpo.report_page import study_page
from leanhpo.reports import STUDY_SCHEMA, validate_report
from leanhpo.study.evaluate import structure_intervals, structure_metrics
from leanhpo.summary import _test_lines
from leanhpo.training.bootstrap import bootstrap_test_metrics
from leanhpo.training.joint import joint_metrics
from leanhpo.training.metrics import EvidenceExample, criteria_metrics, evidence_metrics

TEXT = "I feel sad. I cannot sleep."
SAD = (0, len("I feel sad."))
UNDEFINED = "PSYCHOMOTOR"


def _case(n_posts: int = 30) -> tuple[np.ndarray, np.ndarray, list[EvidenceExample], np.ndarray]:
    rng = np.random.default_rng(3)
    labels = (rng.random((n_posts, len(SYMPTOMS))) < 0.3).astype(int)
    labels[:, SYMPTOMS.index(UNDEFINED)] = 0  # no test post shows it
    labels[:3] = 0  # and a few posts show nothing
    scores = np.clip(labels * 0.4 + rng.random(labels.shape) * 0.6, 0, 1)
    examples = [
        EvidenceExample(TEXT, (SAD,) if labels[p, s] else (), SAD if rng.random() < 0.5 else None)
        for p in range(n_posts)
        for s in range(len(SYMPTOMS))
    ]
    return labels, scores, examples, np.repeat(np.arange(n_posts), len(SYMPTOMS))


def _flat(labels: np.ndarray, scores: np.ndarray, examples: list[EvidenceExample]) -> dict:
    flat: dict[str, Any] = {f"criteria_{k}": v for k, v in criteria_metrics(labels, scores).items()}
    flat.update({f"evidence_{k}": v for k, v in evidence_metrics(examples).items()})
    flat.update({"evidence_null_threshold": 0.0, "loss": 1.0})
    decided = (scores >= 0.5).reshape(-1)
    flat.update({f"joint_{k}": v for k, v in joint_metrics(examples, decided).items()})
    return flat


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    """A study report with the test figures as evaluate_study structures them."""
    labels, scores, examples, pair_posts = _case()
    result = bootstrap_test_metrics(
        labels, scores, examples, pair_posts, labels.mean(0), 200, 0.95, seed=1
    )
    assert result is not None
    return {
        "schema_version": 2,
        "study_id": "id",
        "study_name": "s",
        "best_trial": {"uuid": "u", "number": 0, "slot": 0},
        "optimization_metric": "val_criteria_f1_macro",
        "best_validation_score": 0.5,
        "config": {},
        "checkpoints": [
            {
                "id": "epoch_0001",
                "path": "",
                "epoch": 1,
                "sha256": None,
                "test_metrics": structure_metrics(_flat(labels, scores, examples), "all"),
            }
        ],
        "test_metrics": structure_metrics(_flat(labels, scores, examples), "all"),
        "test_metrics_ci": structure_intervals(result),
        "baseline_comparison": result.baseline_comparison,
        "test_split": {"posts": len(labels)},
        "dataset": {k: "x" for k in ("source", "id", "revision", "resolved_revision")}
        | {"fingerprint": "f"},
        "seeds": {},
        "trial_counts": {"completed": 1, "failed": 0, "pruned": 0},
        "generated_at": "now",
    }


def test_an_undefined_symptom_is_null_and_named_in_the_study_report(report) -> None:
    validate_report(report, STUDY_SCHEMA)
    criteria = report["test_metrics"]["criteria_matching"]
    assert criteria["undefined_symptoms"] == [UNDEFINED]
    row = criteria["per_criterion"][UNDEFINED]
    assert (row["f1"], row["precision"], row["recall"], row["pr_auc"]) == (None,) * 4
    assert row["support"] == 0.0
    defined = [criteria["per_criterion"][s]["f1"] for s in SYMPTOMS if s != UNDEFINED]
    assert criteria["f1_macro"] == pytest.approx(np.mean(defined))
    intervals = report["test_metrics_ci"]["criteria_matching"]
    assert intervals["per_criterion"][UNDEFINED]["f1"] is None
    ten = criteria["ten_label"]
    assert ten["labels_left_out"] == [UNDEFINED]
    assert ten["subset_accuracy"] == criteria["exact_match_ratio"]
    assert intervals["ten_label"]["f1_macro"]["low"] <= ten["f1_macro"]


def test_the_joint_block_is_in_the_report_summary_page_and_csv(report) -> None:
    joint = report["test_metrics"]["joint"]
    assert joint["evidence_for"] == "all" and joint["n_evidence_absent"] > 0
    ci = report["test_metrics_ci"]["joint"]["accuracy"]
    assert ci["low"] <= joint["accuracy"] <= ci["high"]
    assert f"joint accuracy {joint['accuracy']:.3f}" in "\n".join(_test_lines(report))
    assert "test joint f1" in study_page(report, [])
    rows = {(r[0], r[1]): r for r in results_table(report)}
    assert rows[("joint", "accuracy")][2:4] == [joint["accuracy"], ci["low"]]


def test_the_summary_the_page_and_the_csv_say_what_the_macro_average_covers(report) -> None:
    summary = "\n".join(_test_lines(report))
    assert f"macro averages over 8 of 9 symptoms: no test post shows {UNDEFINED}" in summary
    assert "10-label (9 symptoms + NO_SYMPTOMS, as the ReDSM5 baselines): f1_macro" in summary
    assert "subset_accuracy" in summary
    page = study_page(report, [])
    assert f"no test post shows {UNDEFINED} (undefined, not 0)" in page
    rows = {(r[0], r[1]): r for r in results_table(report)}
    ten = report["test_metrics"]["criteria_matching"]["ten_label"]
    low = report["test_metrics_ci"]["criteria_matching"]["ten_label"]["f1_micro"]["low"]
    assert rows[("criteria_matching", "ten_label_f1_micro")][2:4] == [ten["f1_micro"], low]
    assert not any(isinstance(r[2], list) for r in rows.values())  # names stay in the JSON


def test_the_model_card_marks_an_undefined_symptom_and_shows_the_ten_label_rows(report) -> None:
    metrics = {"test": report["test_metrics"], "test_ci": report["test_metrics_ci"]}
    card = "\n".join(_metrics_table(metrics))
    assert f"No test post shows {UNDEFINED}: undefined" in card
    assert f"| {UNDEFINED} | – | – | – | 0 |" in card
    assert "| criteria ten_label_f1_macro |" in card
    assert "`accuracy` is per (post, symptom) decision" in card


def test_the_baseline_share_is_named_for_what_it_is_and_old_reports_still_read(report) -> None:
    """`share_not_better` is a bootstrap proportion, not a p-value; reports of schema version 1
    called it `p_not_better`, and the summary and the page still read those."""
    comparison = report["baseline_comparison"]
    assert "p_not_better" not in comparison
    share = comparison["share_not_better"]
    summary = "\n".join(_test_lines(report))
    assert f"not better in {share:.1%} of the resamples" in summary
    assert "p(" not in summary and "p-value" not in summary
    page = study_page(report, [])
    assert f"share_not_better {share:.3f}" in page and "not a p-value" in page
    old = {**report, "baseline_comparison": {**comparison, "p_not_better": 0.25}}
    del old["baseline_comparison"]["share_not_better"]
    assert "not better in 25.0% of the resamples" in "\n".join(_test_lines(old))
    assert "share_not_better 0.250" in study_page(old, [])
