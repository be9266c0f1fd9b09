"""Scale-out with the real Snakefile (issue 9): parallel trial jobs on one driver (PostgreSQL and
SQLite), and two drivers in two working folders on one PostgreSQL study. The contract is the one
a sequential local run keeps: every slot trained once and COMPLETE once in Optuna, every metric
point (key, step) logged once, no MLflow run left RUNNING, retention bounded."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
import yaml
from workflowhelper import job_env, snakemake_command

from leanhpo.study.lease import lease_holders
from leanhpo.study.setup import OWNER_ATTR
from leanhpo.tracking import Tracker

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

N_TRIALS = 4
KEEP_BEST_TRIALS = 2  # tests/config/tiny.yaml


def _overlay(workdir: Path, storage: str, tracking_uri: str, epochs: int) -> Path:
    values = {
        "train": {"epochs": epochs},
        "study": {"n_trials": N_TRIALS, "parallel": True, "storage": storage},
        "tracking": {"uri": tracking_uri, "experiment": workdir.parent.name},
    }
    path = workdir / "scale.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _start(workdir: Path, overlay: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*snakemake_command(workdir, overlay), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=job_env(),
    )


def _run(workdir: Path, overlay: Path, *args: str) -> str:
    process = _start(workdir, overlay, *args)
    output, _ = process.communicate(timeout=1200)
    assert process.returncode == 0, output[-5000:]
    return output


def _trial_events(workdir: Path, slot: int, kind: str) -> list[dict]:
    log = workdir / "experiments" / "tiny" / f"trial_{slot:04d}" / "logs" / "trial.jsonl"
    if not log.is_file():
        return []
    events = [json.loads(line) for line in log.read_text().splitlines()]
    return [e for e in events if e["context"].get("kind") == kind]


def _epoch_one_starts(workdir: Path, slot: int) -> int:
    return sum(e["context"].get("epoch") == 1 for e in _trial_events(workdir, slot, "epoch_start"))


def _assert_one_complete_trial_per_slot(storage: str) -> optuna.Study:
    study = optuna.load_study(study_name="tiny", storage=storage)
    slots = sorted((t.user_attrs["leanhpo.slot"], t.state.name) for t in study.get_trials())
    assert slots == [(slot, "COMPLETE") for slot in range(N_TRIALS)]
    return study


def _assert_metrics_once(tracker: Tracker, epochs: int) -> None:
    runs = tracker.client.search_runs([tracker.experiment_id])
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(trials) == N_TRIALS and len(runs) == N_TRIALS + 1
    assert {r.info.status for r in runs} == {"FINISHED"}  # none left RUNNING
    assert len({r.data.tags["mlflow.parentRunId"] for r in trials}) == 1
    for run in trials:
        for key, points in tracker.metric_history(run.info.run_id).items():
            steps = [step for step, _ in points]
            assert len(steps) == len(set(steps)), f"duplicate (key, step) {key}"
            if key.startswith("val_"):
                assert steps == list(range(1, epochs + 1)), key


def _assert_leases_released(storage: str, study: optuna.Study) -> None:
    engine = sa.create_engine(storage)
    try:
        holders = lease_holders(engine, study._study_id)
    finally:
        engine.dispose()
    assert set(range(N_TRIALS)) <= set(holders)
    assert all(row["released"] for row in holders.values())


def _overlapped(workdir: Path) -> bool:
    """Whether at least two trials ran at the same time (they really were parallel)."""
    spans = []
    for slot in range(N_TRIALS):
        state = json.loads(
            (workdir / "experiments/tiny" / f"trial_{slot:04d}/state.json").read_text()
        )
        spans.append(
            (
                datetime.fromisoformat(state["started_at"]),
                datetime.fromisoformat(state["finished_at"]),
            )
        )
    spans.sort()
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


def _assert_retention(workdir: Path) -> None:
    holding = [
        d.name
        for d in (workdir / "experiments" / "tiny").glob("trial_*")
        if any((d / "checkpoints").glob("epoch_*"))
    ]
    assert len(holding) <= KEEP_BEST_TRIALS, holding


def test_parallel_jobs_on_postgresql(postgres, tmp_path: Path) -> None:
    """The acceptance run: 4 slots, `--cores 2 --jobs 2`, study.parallel on PostgreSQL."""
    workdir = tmp_path / "driver"
    workdir.mkdir()
    overlay = _overlay(workdir, postgres.url, f"sqlite:///{tmp_path}/mlflow.db", epochs=2)
    _run(workdir, overlay, "--cores", "2", "--jobs", "2")
    study = _assert_one_complete_trial_per_slot(postgres.url)
    _assert_metrics_once(Tracker(f"sqlite:///{tmp_path}/mlflow.db", tmp_path.name), epochs=2)
    _assert_leases_released(postgres.url, study)
    assert _overlapped(workdir)
    _assert_retention(workdir)
    assert (workdir / "experiments/tiny/study_report.json").is_file()
    assert all(_epoch_one_starts(workdir, slot) == 1 for slot in range(N_TRIALS))
    # one thread per parallel trial (the rule's threads, through OMP_NUM_THREADS)
    threads = [_trial_events(workdir, slot, "threads") for slot in range(N_TRIALS)]
    assert [[e["context"]["threads"] for e in t] for t in threads] == [[1]] * N_TRIALS


def test_four_parallel_jobs_on_sqlite_never_stop_on_a_locked_database(tmp_path: Path) -> None:
    workdir = tmp_path / "driver"
    workdir.mkdir()
    storage = f"sqlite:///{tmp_path}/optuna.db"
    overlay = _overlay(workdir, storage, f"sqlite:///{tmp_path}/mlflow.db", epochs=1)
    output = _run(workdir, overlay, "--cores", "4", "--jobs", "4")
    assert "Error in rule" not in output
    study = _assert_one_complete_trial_per_slot(storage)
    _assert_metrics_once(Tracker(f"sqlite:///{tmp_path}/mlflow.db", tmp_path.name), epochs=1)
    _assert_leases_released(storage, study)
    assert _overlapped(workdir)


def test_two_drivers_on_one_study_train_every_slot_once(postgres, mlflow_server, tmp_path):
    """Two working folders (no shared filesystem), one PostgreSQL study and one MLflow server,
    both drivers started together: each slot is trained by exactly one of them, and the other
    says who has it."""
    folders = [tmp_path / "host-a", tmp_path / "host-b"]
    processes = []
    for folder in folders:
        folder.mkdir()
        overlay = _overlay(folder, postgres.url, mlflow_server.uri, epochs=1)
        processes.append(_start(folder, overlay, "--cores", "2", "--jobs", "2", "--keep-going"))
    outputs = [p.communicate(timeout=1200)[0] for p in processes]
    study = _assert_one_complete_trial_per_slot(postgres.url)
    _assert_leases_released(postgres.url, study)
    for slot in range(N_TRIALS):
        starts = [_epoch_one_starts(folder, slot) for folder in folders]
        assert sorted(starts) == [0, 1], (slot, starts)
        trainer = folders[starts.index(1)]
        other = folders[starts.index(0)]
        owner = next(
            t.user_attrs[OWNER_ATTR] for t in study.trials if t.user_attrs["leanhpo.slot"] == slot
        )
        assert owner["workdir"] == str(trainer)
        why = other / "experiments/tiny" / f"trial_{slot:04d}" / "logs" / "stdout.log"
        if why.is_file():  # the other driver reached this slot: it must say why it left it
            text = why.read_text()
            assert f"slot {slot:04d} is held by pid" in text or "was trained by pid" in text, text
            assert str(trainer) in text
    # Both drivers reached slots the other one had, so neither could finish its study alone.
    assert any("is held by pid" in o or "Error in rule run_trial" in o for o in outputs)
    tracker = Tracker(mlflow_server.uri, tmp_path.name)
    runs = tracker.client.search_runs([tracker.experiment_id])
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(trials) == N_TRIALS
    assert len([r for r in runs if r.data.tags.get("leanhpo.role") == "study"]) == 1
    for run in trials:
        for key, points in tracker.metric_history(run.info.run_id).items():
            steps = [step for step, _ in points]
            assert len(steps) == len(set(steps)), f"duplicate (key, step) {key}"

    # docs/scale.md, no shared filesystem: copy the other host's trial folders into one working
    # folder and run the same command there; finished trials are reported, none retrained.
    target = folders[0] / "experiments" / "tiny"
    for trial in (folders[1] / "experiments" / "tiny").glob("trial_*"):
        if (trial / "state.json").is_file():
            shutil.rmtree(target / trial.name, ignore_errors=True)
            shutil.copytree(trial, target / trial.name)
    overlay = folders[0] / "scale.yaml"
    _run(folders[0], overlay, "--cores", "2", "--jobs", "2")
    assert (target / "study_report.json").is_file()
    assert all(
        _epoch_one_starts(folders[0], slot) == 1 for slot in range(N_TRIALS)
    )  # the copied logs, no new training
    _assert_one_complete_trial_per_slot(postgres.url)
