"""Trial jobs in-process: report, resume after crashes, corruption, failures, exactly-once metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_config_dict
from studyhelper import Study

from leanhpo.checkpoints import CheckpointStore
from leanhpo.exit_codes import EXIT_BAD_INPUT, EXIT_ELSEWHERE, exit_code_for
from leanhpo.fsutil import read_json
from leanhpo.reports import TRIAL_SCHEMA, validate_report
from leanhpo.study.setup import SLOT_ATTR
from leanhpo.tracking import Tracker
from leanhpo.trial import runner
from leanhpo.trial.fingerprint import StudyConfigMismatchError
from leanhpo.trial.lock import TrialLock, TrialLockedError


class Crash(Exception):
    """Stands in for a process dying at a chosen instant."""


def _epoch_starts(report_path: Path) -> list[int]:
    lines = (report_path.parent / "logs" / "trial.jsonl").read_text().splitlines()
    return [
        json.loads(x)["context"]["epoch"]
        for x in lines
        if json.loads(x)["context"].get("kind") == "epoch_start"
    ]


def _metric_points(study: Study, report: dict) -> dict[str, list[tuple[int, float]]]:
    return study.tracker().metric_history(report["mlflow"]["run_id"])


def _assert_no_duplicates(history):
    for key, points in history.items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), f"duplicate (key, step) for {key}: {steps}"


@pytest.fixture
def study(tmp_path):
    return Study(tmp_path)


def test_trial_runs_reports_and_keeps_only_its_best(study):
    report = study.run(0)
    validate_report(report, TRIAL_SCHEMA)
    assert report == {**read_json(study.report_path(0)), "generated_at": report["generated_at"]}
    assert report["status"] == "completed"
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    assert report["best_validation_score"] == max(
        h["metrics"]["val_criteria_f1_macro"] for h in report["history"]
    )
    retained = [c for c in report["checkpoints"] if c["retained"]]
    assert retained and all(c["co_best"] for c in retained)
    on_disk = CheckpointStore(study.report_path(0).parent / "checkpoints").list()
    assert sorted(c["epoch"] for c in retained) == [i.epoch for i in on_disk]
    assert report["storage"]["bytes_written"] >= report["storage"]["bytes_retained"] > 0
    assert "baseline" in report and report["baseline"]["optimization_metric_value"] is not None
    always_null = report["baseline"]["metrics"]["always_null"]
    model = report["history"][-1]["metrics"]
    for count in ("n_positive_pairs", "n_null_pairs", "n_excluded"):  # the same pairs
        assert always_null[f"val_evidence_{count}"] == model[f"val_evidence_{count}"], count
    assert always_null["val_evidence_f1"] == 0.0
    assert always_null["val_evidence_null_span_accuracy"] == 1.0
    points = _metric_points(study, report)
    _assert_no_duplicates(points)
    assert [s for s, _ in points["val_criteria_f1_macro"]] == [1, 2]
    assert [s for s, _ in points["train_loss"]] == [1, 2]
    trials = study.optuna().get_trials()
    assert [(t.state.name, t.user_attrs[SLOT_ATTR]) for t in trials] == [("COMPLETE", 0)]
    assert trials[0].value == report["best_validation_score"]


def _crash_at_epoch(monkeypatch, epoch: int):
    original = runner.train_and_validate

    def crashing(network, optimisation, config, seed, e, train_split, val_split):
        if e == epoch:
            raise Crash(f"killed at epoch {e}")
        return original(network, optimisation, config, seed, e, train_split, val_split)

    monkeypatch.setattr(runner, "train_and_validate", crashing)


def test_resume_after_a_crash_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    clean = Study(tmp_path / "clean").run(0)
    crashed = Study(tmp_path / "crashed")
    with monkeypatch.context() as patch:
        _crash_at_epoch(patch, 2)
        with pytest.raises(Crash):
            crashed.run(0)
    assert [t.state.name for t in crashed.optuna().get_trials()] == ["RUNNING"]
    resumed = crashed.run(0)
    assert _epoch_starts(crashed.report_path(0)) == [1, 2, 2]  # epoch 1 was never trained twice
    assert resumed["timings"]["resumed_from_epoch"] == 1
    assert resumed["history"] == clean["history"]
    assert resumed["params"] == clean["params"]
    assert [c["sha256"] for c in resumed["checkpoints"] if c["retained"]] != []
    points = _metric_points(crashed, resumed)
    _assert_no_duplicates(points)
    assert [s for s, _ in points["val_loss"]] == [1, 2]
    assert [t.state.name for t in crashed.optuna().get_trials()] == ["COMPLETE"]


def test_crash_between_checkpoint_commit_and_metric_logging(study, monkeypatch):
    original = Tracker.log_metrics_once

    def failing(self, run_id, metrics, step):
        if step == 2:
            raise Crash("killed while logging epoch 2")
        return original(self, run_id, metrics, step)

    with monkeypatch.context() as patch:
        patch.setattr(Tracker, "log_metrics_once", failing)
        with pytest.raises(Crash):
            study.run(0)
    assert (study.report_path(0).parent / "checkpoints" / "epoch_0002").is_dir()
    report = study.run(0)
    assert _epoch_starts(study.report_path(0)) == [1, 2]  # nothing retrained
    points = _metric_points(study, report)
    _assert_no_duplicates(points)
    assert [s for s, _ in points["val_loss"]] == [1, 2]  # epoch 2 was published on resume


def test_corrupt_newest_checkpoint_is_quarantined_and_the_previous_used(study, monkeypatch):
    study.set_retention(keep_last_n=2)
    with monkeypatch.context() as patch:
        original = Tracker.log_metrics_once

        def failing(self, run_id, metrics, step):
            if step == 2:
                raise Crash("killed after epoch 2 was saved")
            return original(self, run_id, metrics, step)

        patch.setattr(Tracker, "log_metrics_once", failing)
        with pytest.raises(Crash):
            study.run(0)
    weights = study.report_path(0).parent / "checkpoints" / "epoch_0002" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    report = study.run(0)
    assert report["timings"]["resumed_from_epoch"] == 1
    assert len(report["storage"]["quarantined"]) == 1
    assert "SHA-256" in report["storage"]["quarantined"][0]["reason"]
    assert list((study.report_path(0).parent / "quarantine").iterdir())
    assert _epoch_starts(study.report_path(0)) == [1, 2, 2]


def test_changed_config_mid_trial_is_an_error_naming_the_keys(study, monkeypatch):
    with monkeypatch.context() as patch:
        _crash_at_epoch(patch, 2)
        with pytest.raises(Crash):
            study.run(0)
    changed = tiny_config_dict(study.root, model={"pooling": "cls"})
    with pytest.raises(StudyConfigMismatchError, match=r"model\.pooling"):
        study.run(0, changed)
    assert (study.report_path(0).parent / "checkpoints" / "epoch_0001").is_dir()  # nothing deleted


def test_a_lower_row_cap_resumes_the_trial_and_the_study(study, monkeypatch):
    """train.max_batch_rows changes the memory of a pass, not what is learned: lowering it after
    an out-of-memory stop resumes the trial (a study-wide fingerprint change would refuse it)."""
    with monkeypatch.context() as patch:
        _crash_at_epoch(patch, 2)
        with pytest.raises(Crash):
            study.run(0)
    capped = tiny_config_dict(study.root, train={"max_batch_rows": 3})
    report = study.run(0, capped)
    assert report["status"] == "completed"
    assert report["timings"]["resumed_from_epoch"] == 1
    assert study.run(1, capped)["status"] == "completed"


def test_incompatible_checkpoint_is_never_loaded(study, monkeypatch):
    from leanhpo.config import Config
    from leanhpo.models import compatibility_metadata
    from leanhpo.training.setup import build_network
    from leanhpo.trial.state import IncompatibleCheckpointError, check_compatible

    with monkeypatch.context() as patch:
        _crash_at_epoch(patch, 2)
        with pytest.raises(Crash):
            study.run(0)
    loaded = CheckpointStore(study.report_path(0).parent / "checkpoints").load(1)
    other = Config.from_dict(
        {
            **loaded.meta["config"],
            "model": {**loaded.meta["config"]["model"], "input_format": "binary_pairs"},
        }
    )
    network = build_network(other, 0)
    with pytest.raises(IncompatibleCheckpointError, match="input_format") as refused:
        check_compatible(
            loaded, network, compatibility_metadata(network.model, other.model.id, "x")
        )
    # A rerun without a change fails the same way: bad input, as the exit-code table says.
    assert exit_code_for(refused.value) == EXIT_BAD_INPUT


def test_a_slot_trained_in_another_folder_exits_with_its_own_code(study, tmp_path, monkeypatch):
    """Two drivers without a shared filesystem: the slot finished in folder a, so a job in
    folder b (no state file here) stops with the message and exit 66, not a traceback."""
    from leanhpo.workflow import job

    elsewhere, here = tmp_path / "a", tmp_path / "b"
    elsewhere.mkdir()
    here.mkdir()
    monkeypatch.chdir(elsewhere)
    assert study.run(0)["status"] == "completed"
    trial_dir = study.report_path(0).parent
    trial_dir.rename(elsewhere / trial_dir.name)  # its files live on the other host
    monkeypatch.chdir(here)
    log = tmp_path / "job.log"
    with pytest.raises(SystemExit) as stop, job(log):
        study.run(0)
    assert stop.value.code == EXIT_ELSEWHERE
    written = log.read_text()
    assert "was trained by pid" in written and str(elsewhere) in written
    assert "Traceback" not in written


def test_non_finite_loss_fails_the_trial_and_the_study_goes_on(study, monkeypatch):
    from leanhpo.training import loop

    with monkeypatch.context() as patch:
        patch.setattr(loop, "criteria_loss", lambda *args, **kwargs: args[0].sum() * float("nan"))
        failed = study.run(0)
    assert failed["status"] == "failed"
    assert failed["failure"]["reason"] == "non_finite_loss"
    assert "non-finite" in failed["failure"]["message"]
    validate_report(failed, TRIAL_SCHEMA)
    completed = study.run(1)
    assert completed["status"] == "completed"
    states = sorted((t.user_attrs[SLOT_ATTR], t.state.name) for t in study.optuna().get_trials())
    assert states == [(0, "FAIL"), (1, "COMPLETE")]


def test_lost_report_is_rebuilt_without_training(study):
    first = study.run(0)
    study.report_path(0).unlink()
    again = study.run(0)
    assert _epoch_starts(study.report_path(0)) == [1, 2]
    assert {**again, "generated_at": None} == {**first, "generated_at": None}


def test_a_trial_cannot_run_twice_at_once(study):
    with (
        TrialLock(study.report_path(0).parent),
        pytest.raises(TrialLockedError, match="another process"),
    ):
        study.run(0)


def test_study_retention_keeps_only_the_best_trials(tmp_path):
    study = Study(tmp_path, retention={"keep_best_trials": 1})
    reports = [study.run(slot) for slot in range(3)]
    best = max(reports, key=lambda r: (r["best_validation_score"], -r["slot"]))
    for report in reports:
        stored = CheckpointStore(study.report_path(report["slot"]).parent / "checkpoints").list()
        assert bool(stored) == (report["slot"] == best["slot"])
    params = [json.dumps(r["params"], sort_keys=True) for r in reports]
    assert len(set(params)) == 3, "each slot must get its own hyperparameters"


def test_study_evaluation_reads_the_best_checkpoint_once(tmp_path):
    from leanhpo.plots import plot_study
    from leanhpo.reports import STUDY_SCHEMA
    from leanhpo.study.evaluate import evaluate_study
    from leanhpo.study.prune import prune_study

    study = Study(tmp_path, retention={"keep_best_trials": 1})
    reports = [study.run(slot) for slot in range(2)]
    retention = prune_study(
        study.study_json, study.dir / "retention.json", study.config["retention"]
    )
    assert len(retention["kept"]) == 1
    output = study.dir / "study_report.json"
    report = evaluate_study(
        study.study_json,
        study.data,
        [study.report_path(s) for s in range(2)],
        output,
        study.config,
    )
    validate_report(report, STUDY_SCHEMA)
    best = max(reports, key=lambda r: (r["best_validation_score"], -r["slot"]))
    assert report["best_trial"]["slot"] == best["slot"]
    assert report["best_validation_score"] == best["best_validation_score"]
    assert [c["epoch"] for c in report["checkpoints"]] == best["best_epochs"]
    assert report["trial_counts"]["completed"] == 2
    # the test split is decoded with the null threshold calibrated on validation at that epoch
    best_epoch = min(best["best_epochs"])
    validation = next(h["metrics"] for h in best["history"] if h["epoch"] == best_epoch)
    evidence = report["test_metrics"]["evidence_binding"]
    assert evidence["null_threshold"] == validation["val_evidence_null_threshold"]
    assert study.config["model"]["null_threshold"] == "auto"
    parent = study.tracker().client.get_run(read_json(study.study_json)["mlflow"]["parent_run_id"])
    assert (
        parent.data.metrics["test_criteria_f1_macro"]
        == report["test_metrics"]["criteria_matching"]["f1_macro"]
    )
    _assert_bootstrap_intervals(study, report, output, parent.data.metrics)
    plot_study(
        [study.report_path(s) for s in range(2)], output, study.dir / "h.png", study.dir / "c.png"
    )
    assert (study.dir / "h.png").stat().st_size > 1000 and (
        study.dir / "c.png"
    ).stat().st_size > 1000


def _test_figures(report: dict):
    """(flat name, point value, interval) of every test figure that carries an interval."""
    from leanhpo.metric_names import (
        CRITERIA_PER_SYMPTOM,
        CRITERIA_SUMMARY,
        EVIDENCE_SUMMARY,
        SYMPTOMS,
    )

    points, intervals = report["test_metrics"], report["test_metrics_ci"]
    criteria, criteria_ci = points["criteria_matching"], intervals["criteria_matching"]
    for key in CRITERIA_SUMMARY:
        yield f"criteria_{key}", criteria[key], criteria_ci[key]
    for symptom in SYMPTOMS:
        for key in CRITERIA_PER_SYMPTOM:
            point = criteria["per_criterion"][symptom][key]
            yield f"criteria_{key}_{symptom}", point, criteria_ci["per_criterion"][symptom][key]
    for key in EVIDENCE_SUMMARY:
        yield f"evidence_{key}", points["evidence_binding"][key], intervals["evidence_binding"][key]


def _assert_bootstrap_intervals(study: Study, report: dict, output: Path, logged: dict):
    """Every test figure has a seeded interval around it, on MLflow too; a rerun gives the same
    intervals; bootstrap_samples 0 leaves them out."""
    import copy

    from leanhpo.study.evaluate import evaluate_study

    seed = read_json(study.study_json)["seed"]
    assert (
        report["test_metrics_ci"]["samples"] == 1000 and report["test_metrics_ci"]["seed"] == seed
    )
    for name, point, interval in _test_figures(report):
        assert (interval is None) == (point is None), name
        if interval is not None:
            assert interval["low"] - 1e-12 <= point <= interval["high"] + 1e-12, name
            assert logged[f"test_{name}_ci_low"] == interval["low"], name
            assert logged[f"test_{name}_ci_high"] == interval["high"], name
    comparison = report["baseline_comparison"]
    assert comparison["baseline"] in ("prevalence", "all_positive")
    assert comparison["model_f1_macro"] == report["test_metrics"]["criteria_matching"]["f1_macro"]
    assert logged["test_baseline_share_not_better"] == comparison["share_not_better"]
    reports = sorted(study.dir.glob("trial_*/report.json"))
    again = evaluate_study(study.study_json, study.data, reports, output, study.config)
    assert again["test_metrics_ci"] == report["test_metrics_ci"]
    assert again["baseline_comparison"] == comparison
    config = copy.deepcopy(study.config)
    config["evaluation"]["bootstrap_samples"] = 0
    off = evaluate_study(study.study_json, study.data, reports, study.dir / "off.json", config)
    assert off["test_metrics_ci"] is None and off["baseline_comparison"] is None
    assert off["test_metrics"] == report["test_metrics"]
    assert read_json(study.dir / "off.json")["test_metrics_ci"] is None


def test_dry_run_without_checkpoints_evaluates_the_same_model(tmp_path):
    """checkpointing: false keeps no checkpoint; the evaluation retrains the best trial in
    memory, and determinism makes that the same model as the checkpointed one."""
    from leanhpo.study.evaluate import evaluate_study

    results = {}
    for checkpointing in (True, False):
        study = Study(tmp_path / str(checkpointing), train={"checkpointing": checkpointing})
        report = study.run(0)
        assert bool([c for c in report["checkpoints"] if c["retained"]]) == checkpointing
        output = study.dir / "study_report.json"
        results[checkpointing] = evaluate_study(
            study.study_json, study.data, [study.report_path(0)], output, study.config
        )
    assert results[True]["test_metrics"] == results[False]["test_metrics"]


def test_cli_runs_every_step_without_snakemake(tmp_path, monkeypatch):
    import yaml

    from leanhpo.cli import main

    config = tiny_config_dict(tmp_path, study={"n_trials": 1})
    config["study"]["storage"] = "sqlite:///experiments/optuna.db"
    config["tracking"]["uri"] = "sqlite:///experiments/mlflow.db"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    for command in (
        ["prepare-data"],
        ["create-study"],
        ["run-trial", "--slot", "0"],
        ["prune-study"],
        ["evaluate"],
    ):
        assert main(command) == 0, command
    study = tmp_path / "experiments" / "tiny"
    assert read_json(study / "trial_0000" / "report.json")["status"] == "completed"
    assert read_json(study / "study_report.json")["best_trial"]["slot"] == 0
    assert read_json(study / "retention.json")["kept"][0]["slot"] == 0


def test_binary_pairs_trial_trains_and_scores_all_nine_symptoms(tmp_path):
    study = Study(tmp_path, model={"input_format": "binary_pairs"}, train={"epochs": 1})
    report = study.run(0)
    assert report["status"] == "completed"
    metrics = report["history"][0]["metrics"]
    assert all(f"val_criteria_support_{s}" in metrics for s in ("DEPRESSED_MOOD", "PSYCHOMOTOR"))
    assert metrics["val_evidence_n_positive_pairs"] + metrics["val_evidence_n_null_pairs"] > 0
    assert report["evidence_window"]["train_posts"] > 0


def test_augmentation_rewrites_training_evidence_each_epoch_and_is_logged(tmp_path):
    from leanhpo.data.nltk_data import default_dest, missing_resources

    if missing_resources(default_dest()):
        pytest.skip("NLTK corpora missing: run `make nltk-data`")
    study = Study(
        tmp_path, train={"augmentation_prob": 0.5, "augmentation_methods": ["swap", "delete"]}
    )
    report = study.run(0)
    assert report["status"] == "completed"
    for entry in report["history"]:
        assert entry["metrics"]["train_augmented_sentences"] > 0
    points = study.tracker().metric_history(report["mlflow"]["run_id"])
    assert [s for s, _ in points["train_augmented_sentences"]] == [1, 2]
    log = (study.report_path(0).parent / "logs" / "trial.jsonl").read_text()
    assert '"kind": "augmentation"' in log and '"examples"' in log
