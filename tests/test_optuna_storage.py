"""The Optuna storage on a real PostgreSQL server, through a real outage (SPEC 6 and 9)."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
from studyhelper import Study

from leanhpo.config import sample_params
from leanhpo.exit_codes import EXIT_UNAVAILABLE, exit_code_for
from leanhpo.study.retry import StorageRefusedError, StorageUnavailableError, is_transient
from leanhpo.study.setup import (
    SLOT_ATTR,
    attach_slot,
    create_or_load_study,
    open_study,
    storage_for,
)

OUTAGE_S = 12.0  # long enough for several backoff attempts, short enough for the suite


def _log_entries(trial_dir: Path) -> list[dict]:
    path = trial_dir / "logs" / "trial.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _time_of(entry: dict) -> float:
    return datetime.fromisoformat(entry["timestamp"]).timestamp()


class Records(logging.Handler):
    """Collects what `leanhpo.study` logs (the package logger does not propagate to caplog)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def study_log():
    logger = logging.getLogger("leanhpo.study")
    handler = Records()
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_a_study_on_postgresql_runs_two_slots_to_complete(postgres, tiny_config):
    create_or_load_study("pg", postgres.url, timeout_s=30)
    for slot in (0, 1):
        study = open_study("pg", postgres.url, 7, timeout_s=30)
        frozen = attach_slot(study, slot)
        assert attach_slot(study, slot)._trial_id == frozen._trial_id  # re-attach, no new trial
        trial = optuna.trial.Trial(study, frozen._trial_id)
        params = sample_params(trial, tiny_config)
        assert set(params) == {"learning_rate", "dropout"}
        for epoch in (1, 2):
            trial.report(0.1 * epoch + slot, epoch)
        study.tell(frozen.number, 0.2 + slot)
    trials = open_study("pg", postgres.url, 7, timeout_s=30).get_trials()
    assert sorted((t.user_attrs[SLOT_ATTR], t.state.name) for t in trials) == [
        (0, "COMPLETE"),
        (1, "COMPLETE"),
    ]
    by_slot = {t.user_attrs[SLOT_ATTR]: t for t in trials}
    for slot in (0, 1):
        assert by_slot[slot].intermediate_values == {e: 0.1 * e + slot for e in (1, 2)}
        assert by_slot[slot].value == 0.2 + slot


@pytest.mark.slow
def test_a_trial_job_survives_a_real_postgresql_outage(postgres, tmp_path):
    study = Study(tmp_path, study={"storage": postgres.url, "storage_timeout_s": 120})
    trial_dir = study.report_path(0).parent
    outage: dict[str, float] = {}
    errors: list[BaseException] = []

    def cut_the_database() -> None:
        # Epoch 2 starts only after epoch 1 was reported to Optuna: stop the server right then,
        # so the next storage call (epoch 2's report or the tell) meets the outage.
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                starts = [
                    e["context"].get("epoch")
                    for e in _log_entries(trial_dir)
                    if e["context"].get("kind") == "epoch_start"
                ]
                if 2 in starts:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("epoch 2 never started")
            postgres.stop()
            outage["stopped"] = time.time()
            time.sleep(OUTAGE_S)
            postgres.start()
            outage["started"] = time.time()
        except BaseException as error:  # surfaced in the test thread below
            errors.append(error)

    saboteur = threading.Thread(target=cut_the_database, daemon=True)
    saboteur.start()
    report = study.run(0)
    saboteur.join(timeout=OUTAGE_S + 60)
    assert not errors, errors
    assert outage["started"] - outage["stopped"] >= OUTAGE_S

    assert report["status"] == "completed"
    entries = _log_entries(trial_dir)
    starts = [e["context"]["epoch"] for e in entries if e["context"].get("kind") == "epoch_start"]
    assert starts == [1, 2]  # nothing trained twice, no rerun
    warnings = [e for e in entries if e["context"].get("kind") == "storage_unavailable"]
    recovered = [e for e in entries if e["context"].get("kind") == "storage_recovered"]
    assert len(warnings) == 1 and warnings[0]["level"] == "WARNING"
    assert len(recovered) == 1 and recovered[0]["level"] == "INFO"
    # The job met the outage, waited through it, and went on only once the server was back.
    warned_at, recovered_at = (_time_of(x[0]) for x in (warnings, recovered))
    assert outage["stopped"] <= warned_at <= outage["started"] <= recovered_at
    assert recovered[0]["context"]["waited_s"] > 0
    assert postgres.password not in json.dumps(entries)

    trials = open_study(study.config["study"]["name"], postgres.url, 0, timeout_s=30).get_trials()
    assert [(t.user_attrs[SLOT_ATTR], t.state.name) for t in trials] == [(0, "COMPLETE")]
    assert sorted(trials[0].intermediate_values) == [1, 2]
    assert trials[0].value == report["best_validation_score"]


@pytest.mark.slow
def test_a_database_that_stays_down_stops_with_exit_69(postgres, study_log):
    create_or_load_study("down", postgres.url, timeout_s=30)
    study = open_study("down", postgres.url, 0, timeout_s=3)
    postgres.stop()

    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as caught:
        study.get_trials()  # a call on a storage that was open before the outage
    waited = time.monotonic() - started
    assert 3 <= waited <= 3 + 12  # the bound, plus at most one slow attempt
    with pytest.raises(StorageUnavailableError) as caught_at_open:
        open_study("down", postgres.url, 0, timeout_s=3)  # connecting while it is down

    for error in (caught.value, caught_at_open.value):
        message = str(error)
        assert exit_code_for(error) == EXIT_UNAVAILABLE == 69
        assert postgres.password not in message
        assert f"postgresql+psycopg://{postgres.user}:***@127.0.0.1" in message
        assert "rerun the same command" in message and "study.storage_timeout_s" in message
        assert "last error: OperationalError" in message
    warnings = [r for r in study_log if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per outage seen by each storage, not one per attempt
    assert all(postgres.password not in r.getMessage() for r in study_log)


def test_errors_that_are_not_outages_are_not_retried(postgres, study_log):
    wrong_password = postgres.url.replace(postgres.password, "not-the-password")
    started = time.monotonic()
    with pytest.raises(StorageRefusedError) as caught:
        storage_for(wrong_password, timeout_s=60)
    assert caught.value.exit_code == 2  # bad input, not "temporarily unavailable"
    assert "password authentication failed" in str(caught.value)
    assert "not-the-password" not in str(caught.value)
    assert time.monotonic() - started < 5

    storage = storage_for(postgres.url, timeout_s=60)
    storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "once")
    started = time.monotonic()
    with pytest.raises(optuna.exceptions.DuplicatedStudyError):  # a unique constraint
        storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "once")
    with pytest.raises(KeyError):
        storage.get_study_id_from_name("missing")
    assert time.monotonic() - started < 5
    assert not [r for r in study_log if r.levelno == logging.WARNING]


def _operational(driver_error: Exception) -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, driver_error)


def test_transient_means_the_connection_and_sqlite_contention_only():
    assert is_transient(_operational(sqlite3.OperationalError("database is locked")))
    assert not is_transient(_operational(sqlite3.OperationalError("no such table: trials")))
    assert is_transient(sqlalchemy.exc.DisconnectionError("gone"))
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = _operational(sqlite3.OperationalError("database is locked"))
    assert is_transient(wrapped)
    integrity = sqlalchemy.exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE"))
    wrapped.__cause__ = integrity
    assert not is_transient(wrapped)
    assert not is_transient(sqlalchemy.exc.ProgrammingError("x", {}, Exception("syntax")))


def test_a_tell_whose_answer_was_lost_is_not_an_error(tmp_path):
    """The first attempt commits, then the connection drops before its answer arrives."""
    url = f"sqlite:///{tmp_path}/optuna.db"
    create_or_load_study("lost", url, timeout_s=30)
    study = open_study("lost", url, 0, timeout_s=30)
    frozen = attach_slot(study, 0)
    inner = study._storage.inner  # type: ignore[attr-defined]
    commit = inner.set_trial_state_values
    calls = []

    def commit_then_drop(*args, **kwargs):
        calls.append(args)
        result = commit(*args, **kwargs)
        if len(calls) == 1:
            raise _operational(sqlite3.OperationalError("database is locked"))
        return result

    inner.set_trial_state_values = commit_then_drop
    study.tell(frozen.number, 0.5)
    assert len(calls) == 2
    assert study._storage.get_trial(frozen._trial_id).value == 0.5


@pytest.mark.slow
def test_drivers_creating_the_optuna_tables_at_once_all_succeed(postgres_cluster) -> None:
    """Two drivers started together on a fresh PostgreSQL database both create Optuna's tables;
    the loser of that race got 'relation "studies" already exists' (or a duplicate
    pg_type key for CREATE TYPE studydirection) and its create_study failed."""
    for _ in range(3):  # a fresh database each round: the race is only on the first creation
        url = postgres_cluster.create_database().url
        barrier, errors = threading.Barrier(4), []

        def open_storage(
            url: str = url, barrier: threading.Barrier = barrier, errors: list = errors
        ) -> None:
            barrier.wait()
            try:
                storage_for(url, timeout_s=30)
            except Exception as error:  # reported below, with its message
                errors.append(f"{type(error).__name__}: {error}")

        threads = [threading.Thread(target=open_storage) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
