"""Every Optuna storage call has a deadline (issue 26, item 3; SPEC 6 "a server that hangs
counts as down"). A real trial job on a real PostgreSQL server that hangs mid-trial, frozen with
SIGSTOP or cut off by a network that drops every packet, stops with exit 69 within
study.storage_timeout_s + 10 s; once the server is back, the same command finishes the trial
with the metrics of a run that was never interrupted, each logged once."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
import yaml
from services.netns import NetworkNamespace, network_namespace  # noqa: F401
from services.postgres import PostgresCluster, _find_bin_dir
from studyhelper import Study

from leanhpo.exit_codes import EXIT_UNAVAILABLE, exit_code_for
from leanhpo.study.deadline import call_seconds, watchdog_seconds
from leanhpo.study.retry import StorageUnavailableError, is_transient
from leanhpo.study.setup import create_or_load_study, open_study, slot_lease, storage_for

TIMEOUT_S = 5.0  # study.storage_timeout_s
BOUND_S = TIMEOUT_S + 10  # the acceptance: exit 69 within storage_timeout_s + 10 s
JOB_TIMEOUT_S = 600


def _study(root: Path, storage: str) -> tuple[Study, Path]:
    """Prepared data and a created study in `root`, and its config as a file for run-trial."""
    study = Study(root, study={"storage": storage, "storage_timeout_s": TIMEOUT_S})
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(study.config))
    return study, config


def _start_job(study: Study, config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "leanhpo", "run-trial", "--slot", "0", "--config", str(config)],
        cwd=study.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ),
    )


def _run_job(study: Study, config: Path) -> dict:
    process = _start_job(study, config)
    output, _ = process.communicate(timeout=JOB_TIMEOUT_S)
    assert process.returncode == 0, output[-5000:]
    return json.loads(study.report_path(0).read_text())


def _hang_mid_trial(
    study: Study, config: Path, fault: Callable[[], None], repair: Callable[[], None]
) -> float:
    """Start the job, apply `fault` once epoch 2's checkpoint is committed (its metrics and
    Optuna report come next, and the tell after them), and time the job's exit from there."""
    process = _start_job(study, config)
    committed = study.report_path(0).parent / "checkpoints" / "epoch_0002"
    try:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not committed.is_dir() and process.poll() is None:
            assert time.monotonic() < deadline, "epoch 2 was never checkpointed"
            time.sleep(0.01)
        assert process.poll() is None, "the job ended before the fault"
        fault()
        faulted = time.monotonic()
        try:
            output, _ = process.communicate(timeout=BOUND_S + 60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            pytest.fail(
                f"the job still waited on the database {BOUND_S + 60:.0f} s after the fault"
            )
        elapsed = time.monotonic() - faulted
    finally:
        if process.poll() is None:
            process.kill()
        repair()
    assert process.returncode == EXIT_UNAVAILABLE, output[-5000:]
    assert "study.storage_timeout_s = 5" in output and "rerun the same command" in output
    return elapsed


def _assert_finished_like(study: Study, config: Path, reference: dict) -> dict:
    """The rerun finishes the trial: the uninterrupted run's metrics, each (key, step) once."""
    resumed = _run_job(study, config)
    assert resumed["status"] == "completed"
    assert resumed["params"] == reference["params"]
    assert resumed["history"] == reference["history"]
    assert resumed["best_validation_score"] == reference["best_validation_score"]
    points = study.tracker().metric_history(resumed["mlflow"]["run_id"])
    for key, values in points.items():
        steps = [step for step, _ in values]
        assert len(steps) == len(set(steps)), f"duplicate (key, step) for {key}: {steps}"
    assert [step for step, _ in points["val_loss"]] == [1, 2]
    [trial] = study.optuna().get_trials()
    assert trial.state.name == "COMPLETE" and sorted(trial.intermediate_values) == [1, 2]
    return resumed


def test_a_statement_past_its_deadline_is_cancelled_by_the_server(postgres):
    storage = storage_for(postgres.url, timeout_s=TIMEOUT_S)
    engine = storage.inner._backend.engine  # the cached RDBStorage's, as the lease uses it
    started = time.monotonic()
    with pytest.raises(sa.exc.OperationalError) as cancelled, engine.connect() as connection:
        connection.execute(sa.text("SELECT pg_sleep(60)"))
    took = time.monotonic() - started
    assert "statement timeout" in str(cancelled.value)
    assert took < call_seconds(TIMEOUT_S) + 1, f"cancelled after {took:.1f} s"
    assert is_transient(cancelled.value)  # retried, then exit 69 if it never gets through


def test_a_locked_sqlite_database_waits_no_longer_than_the_call_deadline(tmp_path):
    """SQLite's busy timeout (Python's default: 5 s) is bounded by the call's deadline too, so
    a short storage_timeout_s is not overrun by one locked attempt."""
    url = f"sqlite:///{tmp_path}/optuna.db"
    study_id = optuna.create_study(study_name="locked", storage=storage_for(url))._study_id
    short = storage_for(url, timeout_s=1)  # a call's bound: 2 s
    locker = sqlite3.connect(tmp_path / "optuna.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    try:
        with pytest.raises(StorageUnavailableError) as stopped:
            short.set_study_user_attr(study_id, "key", "value")
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    took = time.monotonic() - started
    assert "database is locked" in str(stopped.value)
    assert took < call_seconds(1) + 1.5, f"a locked database held the call {took:.1f} s"


def test_a_lease_heartbeat_on_a_frozen_server_stops_the_trainer_with_69(postgres_cluster, postgres):
    """The heartbeat thread's renewals and the fence's are cut off at the deadline: a trainer
    whose lease cannot be confirmed stops with exit 69, it does not hang with the server."""
    create_or_load_study("frozen", postgres.url, timeout_s=30)
    study = open_study("frozen", postgres.url, 0, timeout_s=TIMEOUT_S)
    lease = slot_lease(study, 0, grace_s=1.6).acquire()  # a beat every 0.2 s
    outcome: dict = {}

    def trainer() -> None:
        started = time.monotonic()
        try:
            with lease:
                time.sleep(0.5)  # beats go unanswered: the lease is no longer confirmed
                lease.fence()  # before a checkpoint or a metric
        except BaseException as error:
            outcome["error"] = error
        outcome["took"] = time.monotonic() - started

    frozen = postgres_cluster.freeze()
    try:
        thread = threading.Thread(target=trainer, daemon=True)
        thread.start()
        thread.join(timeout=BOUND_S + 30)
        hung = thread.is_alive()
        beat = lease._thread
        assert beat is not None
        beat.join(timeout=watchdog_seconds(TIMEOUT_S) + 2)
        beat_hung = beat.is_alive()
    finally:
        postgres_cluster.thaw(frozen)
    assert not hung, "the fence waited on the frozen server"
    assert not beat_hung, "the heartbeat thread waited on the frozen server"
    error = outcome.get("error")
    assert isinstance(error, StorageUnavailableError), error
    assert exit_code_for(error) == 69 and "renew slot lease" in str(error)
    print(f"frozen server -> the trainer's fence raised exit 69 in {outcome['took']:.1f} s")
    assert outcome["took"] <= BOUND_S, f"{outcome['took']:.1f} s; the bound is {BOUND_S:g} s"


@pytest.mark.slow
def test_a_frozen_postgresql_stops_the_job_with_69_in_time(postgres_cluster, tmp_path):
    """SIGSTOP of the postmaster and every backend: connections stay open and the kernel still
    accepts new ones, but nothing answers. Without a deadline the job waited for SIGCONT."""
    reference, reference_config = _study(
        tmp_path / "reference", postgres_cluster.create_database().url
    )
    expected = _run_job(reference, reference_config)

    study, config = _study(tmp_path / "frozen", postgres_cluster.create_database().url)
    frozen: list = []
    elapsed = _hang_mid_trial(
        study,
        config,
        lambda: frozen.extend(postgres_cluster.freeze()),
        lambda: postgres_cluster.thaw(frozen),
    )
    print(
        f"SIGSTOP of {len(frozen)} PostgreSQL processes -> exit 69 in {elapsed:.1f} s "
        f"(storage_timeout_s = {TIMEOUT_S:g}, a call's deadline {watchdog_seconds(TIMEOUT_S):g} s)"
    )
    assert len(frozen) >= 3  # the postmaster, its auxiliary processes and the job's backend
    assert elapsed <= BOUND_S, (
        f"exit 69 came {elapsed:.1f} s after SIGSTOP; the bound is storage_timeout_s + 10 = "
        f"{BOUND_S:g} s"
    )
    log = (study.report_path(0).parent / "logs" / "trial.jsonl").read_text()
    assert '"kind": "storage_deadline"' in log  # the watchdog cut the call off
    _assert_finished_like(study, config, expected)


@pytest.fixture
def cut_off_postgres(
    network_namespace: NetworkNamespace,  # noqa: F811
) -> Iterator[tuple[PostgresCluster, NetworkNamespace]]:
    """A PostgreSQL server alone in a network namespace, reached over a veth pair."""
    bin_dir = _find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found")
    cluster = PostgresCluster(
        bin_dir, host=network_namespace.server_address, prefix=network_namespace.run_prefix
    )
    try:
        cluster.start()
        yield cluster, network_namespace
    finally:
        cluster.remove()


@pytest.mark.slow
def test_dropped_packets_stop_the_job_with_69_in_time(cut_off_postgres, tmp_path):
    """Every packet to and from the server dropped after the connection was made: no error
    reaches the client, and TCP alone would retransmit for about 15 minutes."""
    cluster, namespace = cut_off_postgres
    study, config = _study(tmp_path, cluster.create_database().url)
    cut = {"done": False}

    def cut_the_network() -> None:
        namespace.cut()
        cut["done"] = True

    def heal() -> None:
        if cut["done"]:
            namespace.heal()

    elapsed = _hang_mid_trial(study, config, cut_the_network, heal)
    print(
        f"packets dropped -> exit 69 in {elapsed:.1f} s (storage_timeout_s = {TIMEOUT_S:g}, "
        f"a call's deadline {watchdog_seconds(TIMEOUT_S):g} s)"
    )
    assert elapsed <= BOUND_S, (
        f"exit 69 came {elapsed:.1f} s after the packets were dropped; the bound is "
        f"storage_timeout_s + 10 = {BOUND_S:g} s"
    )
    resumed = _run_job(study, config)
    assert resumed["status"] == "completed"
    points = study.tracker().metric_history(resumed["mlflow"]["run_id"])
    assert [step for step, _ in points["val_loss"]] == [1, 2]
