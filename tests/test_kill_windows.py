"""Kill windows and races that broke the README's promises (issue 8, part 4). Each test
failed before its fix: a crash at the named instant, then the rerun a user would make."""

from __future__ import annotations

import json

import pytest
from studyhelper import Study

from leanhpo.checkpoints import CheckpointStore
from leanhpo.fsutil import read_json
from leanhpo.logs import setup_logging
from leanhpo.reports import TRIAL_SCHEMA, validate_report
from leanhpo.study.evaluate import evaluate_study, pick_best
from leanhpo.study.pressure import StorageGuard
from leanhpo.tracking import Tracker
from leanhpo.trial.fingerprint import StudyConfigMismatchError


class Crash(Exception):
    """Stands in for a kill -9 (or an MLflow error) at a chosen instant."""


def test_mlflow_record_is_closed_by_the_rerun_after_a_crash_before_it(tmp_path, monkeypatch):
    """4.1: the final state.json is written, then the process dies before the MLflow run is
    set FINISHED. The rerun finds the trial completed; it must still close the run."""
    study = Study(tmp_path)
    original = Tracker.set_status

    def dies_before_finishing(self, run_id, status):
        if status != "RUNNING":
            raise Crash
        return original(self, run_id, status)

    monkeypatch.setattr(Tracker, "set_status", dies_before_finishing)
    with pytest.raises(Crash):
        study.run(0)
    monkeypatch.setattr(Tracker, "set_status", original)
    state = read_json(study.report_path(0).parent / "state.json")
    assert state["status"] == "completed" and not state["mlflow"].get("closed")

    report = study.run(0)
    run = study.tracker().client.get_run(report["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["best_validation_score"] == report["best_validation_score"]
    assert run.data.tags["leanhpo.status"] == "completed"
    assert read_json(study.report_path(0).parent / "state.json")["mlflow"]["closed"] is True


def test_a_new_slot_on_a_changed_config_is_refused(tmp_path):
    """4.5: the refusal compared a slot only with its own state.json, so a new slot trained
    silently on a changed config."""
    study = Study(tmp_path)
    study.run(0)
    changed = json.loads(json.dumps(study.config))
    changed["model"]["max_length"] = 160
    with pytest.raises(StudyConfigMismatchError, match=r"model\.max_length"):
        study.run(1, changed)
    assert not (study.report_path(1).parent / "state.json").exists()
    study.run(1)  # the study's own config still runs


@pytest.mark.slow
def test_evaluation_uses_the_co_best_checkpoints_left_on_disk(tmp_path):
    """4.2: disk-pressure step 3 keeps one checkpoint of the best trial and deletes a tied
    co-best that the trial's report still listed as retained; the evaluation then failed with
    FileNotFoundError on every rerun."""
    # A learning rate too small to change any prediction: every epoch ties for best.
    frozen = {"learning_rate": 1e-12, "head_learning_rate": 1e-12}
    study = Study(tmp_path, train=frozen, search_space={"learning_rate": None, "dropout": None})
    report = study.run(0)
    co_best = [c for c in report["checkpoints"] if c["co_best"] and c["retained"]]
    assert len(co_best) == 2, report["checkpoints"]

    trial_dir = study.report_path(1).parent
    guard = StorageGuard(
        study.dir,
        trial_dir,
        study.config["retention"],
        study.config["study"]["metric"],
        setup_logging(),
    )
    assert guard._keep_single_best() > 0  # step 3, run by the next trial under pressure
    left = CheckpointStore(study.report_path(0).parent / "checkpoints").list()
    assert [i.epoch for i in left] == [1]

    refreshed = read_json(study.report_path(0))
    validate_report(refreshed, TRIAL_SCHEMA)
    assert [c["epoch"] for c in refreshed["checkpoints"] if c["retained"]] == [1]
    assert refreshed["storage"]["bytes_retained"] == left[0].bytes

    output = study.dir / "study_report.json"
    result = evaluate_study(
        study.study_json, study.data, [study.report_path(0)], output, study.config
    )
    assert [c["epoch"] for c in result["checkpoints"]] == [1]


@pytest.mark.slow
def test_mlflow_test_metrics_follow_the_study_report_after_growth(tmp_path):
    """4.3: after the study grew, the new test metrics were logged at step 0 again, so they
    were skipped and MLflow kept the previous best's scores beside the new best_slot tag."""
    study = Study(tmp_path)
    reports = [study.run(slot) for slot in range(2)]
    paths = [study.report_path(slot) for slot in range(2)]
    best = pick_best(reports)
    other = next(p for r, p in zip(reports, paths, strict=True) if r["slot"] != best["slot"])
    output = study.dir / "study_report.json"
    first = evaluate_study(study.study_json, study.data, [other], output, study.config)
    grown = evaluate_study(study.study_json, study.data, paths, output, study.config)
    loss = grown["test_metrics"]["losses"]["loss"]
    assert first["test_metrics"]["losses"]["loss"] != loss  # another best, another model
    parent_id = read_json(study.study_json)["mlflow"]["parent_run_id"]
    parent = study.tracker().client.get_run(parent_id)
    assert parent.data.metrics["test_loss"] == loss
    assert parent.data.tags["leanhpo.best_slot"] == str(grown["best_trial"]["slot"])
    # rerunning the same evaluation adds no point
    evaluate_study(study.study_json, study.data, paths, output, study.config)
    history = study.tracker().metric_history(parent_id)["test_loss"]
    assert [step for step, _ in history] == [1, 2]


def test_reports_do_not_claim_checkpoints_that_study_retention_removed(tmp_path):
    """4.2: study-wide retention removes the checkpoints of a trial that fell out of the top
    keep_best_trials, long after that trial wrote its report; the report must say so."""
    study = Study(tmp_path, retention={"keep_best_trials": 1})
    reports = [study.run(slot) for slot in range(2)]
    for slot, _ in enumerate(reports):
        report = read_json(study.report_path(slot))
        on_disk = {
            i.id for i in CheckpointStore(study.report_path(slot).parent / "checkpoints").list()
        }
        assert {c["id"] for c in report["checkpoints"] if c["retained"]} == on_disk
    assert (
        sum(
            bool(read_json(p)["storage"]["bytes_retained"])
            for p in map(study.report_path, range(2))
        )
        == 1
    )
