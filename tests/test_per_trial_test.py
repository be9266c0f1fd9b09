"""evaluation.per_trial_test (issue 10, part 6): each completed trial's best checkpoint scored on
the test split for analysis, in its report and its MLflow run, and never in selection."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from studyhelper import Study

from leanhpo.fsutil import atomic_write_json, read_json
from leanhpo.study.evaluate import evaluate_study
from leanhpo.trial.analysis import METRIC_PREFIX, STATE_KEY

SLOTS = (0, 1)


def _study(root, per_trial_test: bool) -> SimpleNamespace:
    study = Study(root, train={"epochs": 2}, evaluation={"per_trial_test": per_trial_test})
    reports = [study.run(slot) for slot in SLOTS]
    out = study.dir / "study_report.json"
    final = evaluate_study(
        study.study_json, study.data, [study.report_path(s) for s in SLOTS], out, study.config
    )
    return SimpleNamespace(study=study, reports=reports, final=final)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    return {
        flag: _study(tmp_path_factory.mktemp(f"per_trial_{flag}"), flag) for flag in (False, True)
    }


def test_each_completed_trial_reports_and_logs_its_test_metrics_for_analysis(studies):
    made = studies[True]
    tracker = made.study.tracker()
    for report in made.reports:
        assert report["status"] == "completed"
        analysis = report["test_metrics_for_analysis"]
        assert "never used for selection" in analysis["note"]
        assert analysis["checkpoint"]["epoch"] == min(report["best_epochs"])
        criteria = analysis["test_metrics"]["criteria_matching"]
        assert 0.0 <= criteria["f1_macro"] <= 1.0
        history = tracker.metric_history(report["mlflow"]["run_id"])
        logged = history[f"{METRIC_PREFIX}criteria_f1_macro"]
        assert logged == [(analysis["checkpoint"]["epoch"], criteria["f1_macro"])]
        # Its intervals, as the study report's (issue 15): beside the figure and in MLflow.
        interval = analysis["test_metrics_ci"]["criteria_matching"]["f1_macro"]
        assert interval["low"] <= criteria["f1_macro"] <= interval["high"]
        assert history[f"{METRIC_PREFIX}criteria_f1_macro_ci_low"][0][1] == interval["low"]
        assert analysis["baseline_comparison"]["samples"] == 1000
    # The same functions as the study evaluation: the best trial's figures are the report's,
    # and its intervals too (the same seeded resamples).
    best = next(r for r in made.reports if r["slot"] == made.final["best_trial"]["slot"])
    for part in ("criteria_matching", "evidence_binding"):
        assert (
            best["test_metrics_for_analysis"]["test_metrics"][part]
            == (made.final["test_metrics"][part])
        )
        assert (
            best["test_metrics_for_analysis"]["test_metrics_ci"][part]
            == made.final["test_metrics_ci"][part]
        )


def test_selection_is_the_same_with_it_off_and_off_is_the_default(studies):
    off, on = studies[False], studies[True]
    assert off.study.config["evaluation"]["per_trial_test"] is False
    for a, b in zip(off.reports, on.reports, strict=True):
        assert a["best_validation_score"] == b["best_validation_score"]
        assert a["best_epochs"] == b["best_epochs"]
        assert [c["retained"] for c in a["checkpoints"]] == [
            c["retained"] for c in b["checkpoints"]
        ]
        assert a["test_metrics_for_analysis"] is None
        history = off.study.tracker().metric_history(a["mlflow"]["run_id"])
        assert not [k for k in history if k.startswith(METRIC_PREFIX)]
    assert off.final["best_trial"]["slot"] == on.final["best_trial"]["slot"]
    assert off.final["test_metrics"] == on.final["test_metrics"]


def test_a_rerun_after_a_lost_result_computes_it_again_and_logs_it_once(studies):
    made = studies[True]
    slot = SLOTS[0]
    state_path = made.study.report_path(slot).parent / "state.json"
    state = read_json(state_path)
    expected = state.pop(STATE_KEY)
    atomic_write_json(state_path, state)  # as a kill during the evaluation would leave it
    report = made.study.run(slot)
    assert read_json(state_path)[STATE_KEY] == expected
    assert report["test_metrics_for_analysis"]["test_metrics"] == expected["test_metrics"]
    history = made.study.tracker().metric_history(report["mlflow"]["run_id"])
    assert all(len(points) == 1 for k, points in history.items() if k.startswith(METRIC_PREFIX))


def test_the_docs_describe_the_per_trial_intervals_the_code_writes():
    """Issue 25: docs/metrics.md said the per-trial test scores had no bootstrap intervals, while
    trial/analysis.py computes them (and the test above checks them)."""
    from conftest import REPO

    from leanhpo.trial import analysis

    text = (REPO / "docs" / "metrics.md").read_text()
    section = text[text.index("## Per-trial test scores") : text.index("## In the MLflow UI")]
    section = " ".join(section.split())
    assert "no bootstrap intervals" not in section
    for written in ("test_metrics_ci", "baseline_comparison", f"{analysis.METRIC_PREFIX}<metric>"):
        assert written in section, written
    assert "`_ci_high`" in section
