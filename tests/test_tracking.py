"""MLflow tracking: runs found again by tags, metric points logged exactly once."""

from __future__ import annotations

import math

from leanhpo.tracking import Tracker, flatten


def _tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp", tmp_path / "artifacts")


def test_find_or_create_run_is_idempotent(tmp_path):
    tracker = _tracker(tmp_path)
    parent = tracker.find_or_create_run(
        {"leanhpo.study_uuid": "s1", "leanhpo.role": "study"}, "study"
    )
    again = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp").find_or_create_run(
        {"leanhpo.study_uuid": "s1", "leanhpo.role": "study"}, "study"
    )
    assert parent == again
    child = tracker.find_or_create_run(
        {"leanhpo.study_uuid": "s1", "leanhpo.slot": "0"}, "trial_0000", parent
    )
    assert child != parent
    assert tracker.client.get_run(child).data.tags["mlflow.parentRunId"] == parent
    # the experiment keeps its artifacts beside the study, not in ./mlruns
    location = tracker.client.get_experiment(tracker.experiment_id).artifact_location
    assert str(tmp_path / "artifacts") in location


def test_metrics_are_logged_exactly_once_across_processes(tmp_path):
    tracker = _tracker(tmp_path)
    run = tracker.find_or_create_run({"k": "v"}, "run")
    assert tracker.log_metrics_once(run, {"a": 1.0, "b": 2.0}, step=1) == 2
    assert tracker.log_metrics_once(run, {"a": 1.0, "b": 2.0}, step=1) == 0
    # a fresh tracker (a resumed process) reads the history and skips what is there
    resumed = _tracker(tmp_path)
    assert resumed.log_metrics_once(run, {"a": 1.0, "b": 2.0, "c": 3.0}, step=1) == 1
    assert resumed.log_metrics_once(run, {"a": 5.0}, step=2) == 1
    history = resumed.metric_history(run)
    assert history == {"a": [(1, 1.0), (2, 5.0)], "b": [(1, 2.0)], "c": [(1, 3.0)]}


def test_non_finite_and_none_values_are_skipped(tmp_path):
    tracker = _tracker(tmp_path)
    run = tracker.find_or_create_run({"k": "v"}, "run")
    assert (
        tracker.log_metrics_once(run, {"a": math.nan, "b": math.inf, "c": None, "d": 1.0}, step=0)
        == 1
    )


def test_params_are_logged_once_and_masked(tmp_path):
    tracker = _tracker(tmp_path)
    run = tracker.find_or_create_run({"k": "v"}, "run")
    tracker.log_params_once(run, {"tracking": {"uri": "http://bob:hunter2@host:5000"}, "lr": 0.1})
    tracker.log_params_once(run, {"lr": 0.2})  # immutable: the first value stays, no crash
    params = tracker.client.get_run(run).data.params
    assert params["lr"] == "0.1"
    assert "hunter2" not in params["tracking.uri"]


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": [1, 2], "f": {}}) == {
        "a.b": 1,
        "a.c.d": 2,
        "e": [1, 2],
        "f": {},
    }


def test_the_experiment_is_a_training_experiment_unless_its_kind_was_set(tmp_path):
    """MLflow 3's UI reads an experiment's kind from a tag (issue 24): leanhpo's is model
    training, whether leanhpo makes the experiment or finds one made before it; a kind set by
    hand stays."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    kind = "mlflow.experimentKind"
    made = _tracker(tmp_path)
    client = made.client
    assert client.get_experiment(made.experiment_id).tags[kind] == "custom_model_development"
    older = client.create_experiment("made before leanhpo")
    chosen = client.create_experiment("chosen by hand", tags={kind: "genai_development"})
    Tracker(uri, "made before leanhpo")
    Tracker(uri, "chosen by hand")
    assert client.get_experiment(older).tags[kind] == "custom_model_development"
    assert client.get_experiment(chosen).tags[kind] == "genai_development"
