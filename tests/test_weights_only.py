"""Weights-only retention in trials and studies (issue 13): what is stripped when, that a resume
never starts from weights alone, and that evaluation, export and reports read stripped
checkpoints exactly as full ones."""

from __future__ import annotations

import json

import pytest
from studyhelper import Study

from leanhpo.checkpoints import CheckpointStore
from leanhpo.fsutil import read_json
from leanhpo.report_items import disk_timeline
from leanhpo.reports import TRIAL_SCHEMA, validate_report
from leanhpo.study.evaluate import evaluate_study
from leanhpo.study.pressure import checkpoint_folder_bytes
from leanhpo.trial import runner

# Scripted optimisation metric per epoch: epoch 1 stays the best, so while later epochs run it
# is neither the newest nor a resume point, and retention strips it.
SCRIPT = {1: 0.9, 2: 0.5, 3: 0.4}


class Crash(Exception):
    """Stands in for a process dying at a chosen instant."""


def script_metric(monkeypatch, metric: str, crash_at: int | None = None) -> None:
    original = runner.train_and_validate

    def scripted(network, optimisation, config, seed, epoch, train_split, val_split):
        if epoch == crash_at:
            raise Crash(f"killed at epoch {epoch}")
        metrics = original(network, optimisation, config, seed, epoch, train_split, val_split)
        return {**metrics, metric: SCRIPT[epoch]}

    monkeypatch.setattr(runner, "train_and_validate", scripted)


def kinds(study: Study, slot: int) -> dict[int, str]:
    store = CheckpointStore(study.report_path(slot).parent / "checkpoints")
    return {info.epoch: info.kind for info in store.list()}


def epoch_starts(study: Study, slot: int) -> list[int]:
    lines = (study.report_path(slot).parent / "logs" / "trial.jsonl").read_text().splitlines()
    records = [json.loads(line)["context"] for line in lines]
    return [r["epoch"] for r in records if r.get("kind") == "epoch_start"]


def test_a_running_trial_strips_its_older_best_and_keeps_its_newest_full(tmp_path, monkeypatch):
    study = Study(tmp_path, train={"epochs": 3})
    metric = study.config["study"]["metric"]
    with monkeypatch.context() as patch:
        script_metric(patch, metric, crash_at=3)
        with pytest.raises(Crash):
            study.run(0)
    # After epoch 2: its best (epoch 1) will never resume, the newest (epoch 2) may.
    assert kinds(study, 0) == {1: "weights", 2: "full"}
    with monkeypatch.context() as patch:
        script_metric(patch, metric)
        report = study.run(0)
    assert report["timings"]["resumed_from_epoch"] == 2  # from the full one, not the best
    assert epoch_starts(study, 0) == [1, 2, 3, 3]
    # Finished: only the best remains, weights only, and the report says so.
    assert kinds(study, 0) == {1: "weights"}
    validate_report(report, TRIAL_SCHEMA)
    (row,) = [c for c in report["checkpoints"] if c["retained"]]
    assert row["epoch"] == 1 and row["kind"] == "weights"
    assert 0 < row["retained_bytes"] < row["bytes"] / 2
    assert report["storage"]["bytes_retained"] == row["retained_bytes"]
    assert report == {**read_json(study.report_path(0)), "generated_at": report["generated_at"]}


def test_a_corrupt_newest_with_only_weights_only_before_it_restarts_from_scratch(
    tmp_path, monkeypatch
):
    """Issue 13 acceptance: never a resume from weights with a fresh optimizer; the trial is
    retrained from epoch 1 with the same params and seed, to the uninterrupted metrics."""
    clean = Study(tmp_path / "clean", train={"epochs": 3})
    metric = clean.config["study"]["metric"]
    with monkeypatch.context() as patch:
        script_metric(patch, metric)
        expected = clean.run(0)
    study = Study(tmp_path / "crashed", train={"epochs": 3})
    with monkeypatch.context() as patch:
        script_metric(patch, metric, crash_at=3)
        with pytest.raises(Crash):
            study.run(0)
    newest = study.report_path(0).parent / "checkpoints" / "epoch_0002" / "optimizer.safetensors"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    with monkeypatch.context() as patch:
        script_metric(patch, metric)
        report = study.run(0)
    assert epoch_starts(study, 0) == [1, 2, 3, 1, 2, 3]
    assert report["timings"]["resumed_from_epoch"] == 0
    assert [q["id"] for q in report["storage"]["quarantined"]] == ["epoch_0002"]
    assert report["history"] == expected["history"]
    assert report["params"] == expected["params"]
    assert kinds(study, 0) == {1: "weights"}
    points = study.tracker().metric_history(report["mlflow"]["run_id"])
    assert [s for s, _ in points["val_loss"]] == [1, 2, 3]  # nothing logged twice


@pytest.mark.slow
def test_a_weights_only_study_evaluates_exactly_as_a_full_one(tmp_path):
    """Issue 13 acceptance: every finished trial keeps weights only, and the study's test
    metrics are those of the same study with full checkpoints."""
    results = {}
    for weights_only in (True, False):
        study = Study(
            tmp_path / str(weights_only),
            train={"epochs": 3},
            retention={"keep_best_trials": 2, "weights_only": weights_only},
        )
        reports = [study.run(slot) for slot in range(3)]
        output = study.dir / "study_report.json"
        paths = [study.report_path(slot) for slot in range(3)]
        results[weights_only] = (
            study,
            reports,
            evaluate_study(study.study_json, study.data, paths, output, study.config),
        )
    study, reports, stripped = results[True]
    _, full_reports, full = results[False]
    on_disk = {slot: kinds(study, slot) for slot in range(3) if kinds(study, slot)}
    assert len(on_disk) == 2  # keep_best_trials
    assert all(set(k.values()) == {"weights"} for k in on_disk.values()), on_disk
    assert all(set(kinds(results[False][0], slot).values()) <= {"full"} for slot in range(3))
    assert [r["history"] for r in reports] == [r["history"] for r in full_reports]
    assert stripped["test_metrics"] == full["test_metrics"]
    assert stripped["test_metrics_ci"] == full["test_metrics_ci"]
    # The report names the checkpoint it evaluated by its saved identity, kept by stripping.
    best = next(r for r in reports if r["slot"] == stripped["best_trial"]["slot"])
    saved = {c["epoch"]: c["sha256"] for c in best["checkpoints"]}
    assert all(c["sha256"] == saved[c["epoch"]] for c in stripped["checkpoints"])
    retained = sum(r["storage"]["bytes_retained"] for r in reports)
    retained_full = sum(r["storage"]["bytes_retained"] for r in full_reports)
    assert retained < 0.4 * retained_full
    # The study report's disk-use curve follows strips and final prunes, whichever job did them.
    on_disk = checkpoint_folder_bytes(study.dir)
    assert abs(disk_timeline(study.dir, reports)[-1]["on_disk"] - on_disk) < 4096


def test_cleanup_strip_upgrades_a_study_written_with_full_checkpoints(tmp_path):
    from leanhpo.study.cleanup import cleanup

    study = Study(tmp_path, retention={"weights_only": False})
    reports = [study.run(slot) for slot in range(2)]
    before = {slot: kinds(study, slot) for slot in range(2)}
    assert {k for v in before.values() for k in v.values()} == {"full"}
    args = (study.dir, {**study.config["retention"], "weights_only": True}, "val_criteria_f1_macro")
    dry = cleanup(*args, 2, apply=False, strip=True)
    strips = [o for o in dry["orphans"] if o["kind"] == "strip"]
    assert len(strips) == sum(len(v) for v in before.values()) and "would strip" in dry["summary"]
    assert {slot: kinds(study, slot) for slot in range(2)} == before  # a dry run touches nothing
    done = cleanup(*args, 2, apply=True, strip=True)
    assert done["bytes_removed"] == dry["bytes"] > 0
    for slot, report in enumerate(reports):
        assert set(kinds(study, slot).values()) == {"weights"}
        rows = read_json(study.report_path(slot))["checkpoints"]
        assert all(r["kind"] == "weights" for r in rows if r["retained"])
        assert (
            read_json(study.report_path(slot))["storage"]["bytes_retained"]
            < (report["storage"]["bytes_retained"])
        )
    again = cleanup(*args, 2, apply=False, strip=True)
    assert not [o for o in again["orphans"] if o["kind"] == "strip"]
