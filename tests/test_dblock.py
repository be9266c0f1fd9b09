"""The cold-start lock (leanhpo/dblock.py): one holder at a time per database and name, a bounded
wait that ends in exit 69, and re-entry within a thread (a step inside a step)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from leanhpo.dblock import DatabaseLockTimeout, database_lock
from leanhpo.exit_codes import EXIT_UNAVAILABLE


def _held_elsewhere(url: str, name: str, hold_s: float) -> threading.Thread:
    """Another thread takes the lock and keeps it for `hold_s` (a thread waits like a process)."""
    taken = threading.Event()

    def hold() -> None:
        with database_lock(url, name, 5):
            taken.set()
            time.sleep(hold_s)

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(10)
    return thread


def _check_exclusive(url: str) -> None:
    holder = _held_elsewhere(url, "study:s", hold_s=1.5)
    started = time.monotonic()
    with pytest.raises(DatabaseLockTimeout) as caught, database_lock(url, "study:s", 0.3):
        pass
    assert caught.value.exit_code == EXIT_UNAVAILABLE
    assert 0.3 <= time.monotonic() - started < 1.5
    with database_lock(url, "study:s", 10):  # waits for the holder, then takes it
        assert time.monotonic() - started >= 1.4
        with database_lock(url, "study:s", 0.1):  # re-entered: no wait
            pass
    holder.join()


def test_sqlite_lock_is_exclusive_bounded_and_reentrant(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/new/optuna.db"  # neither folder nor database exist yet
    _check_exclusive(url)
    assert (tmp_path / "new" / "optuna.db.lock").is_file()
    # One SQLite file, one lock: a nested lock of another name on it is a re-entry, not a
    # deadlock (study.storage and tracking.uri may name the same file).
    with database_lock(url, "study:s", 0.1), database_lock(url, "mlflow-schema", 0.1):
        pass


@pytest.mark.slow
def test_postgresql_advisory_lock_is_exclusive_bounded_and_reentrant(postgres) -> None:
    _check_exclusive(postgres.url)
    # Another name is another key: both held at once on one database.
    with database_lock(postgres.url, "study:s", 1), database_lock(postgres.url, "study:t", 1):
        pass


def _check_together(studies: list, config: dict) -> dict[str, str]:
    """check_study_fingerprint on every study (value-<index>) at once: who recorded, who not."""
    from leanhpo.trial.fingerprint import StudyConfigMismatchError, check_study_fingerprint

    barrier = threading.Barrier(len(studies))
    outcomes: dict[str, str] = {}

    def check(index: int) -> None:
        barrier.wait()
        try:
            check_study_fingerprint(studies[index], f"value-{index}", config)
            outcomes[f"value-{index}"] = "recorded"
        except StudyConfigMismatchError:
            outcomes[f"value-{index}"] = "refused"

    threads = [threading.Thread(target=check, args=(i,)) for i in range(len(studies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_slots_starting_together_record_one_study_fingerprint(tmp_path: Path) -> None:
    """The first slot records the study's fingerprint: four slots that start together with four
    different configs (threads, each with its own storage connection) leave exactly one
    recorded, and the other three are refused against it."""
    from conftest import tiny_config_dict

    from leanhpo.study.setup import create_or_load_study, open_study
    from leanhpo.trial.fingerprint import STUDY_FINGERPRINT_ATTR

    for attempt in range(5):
        config = tiny_config_dict(tmp_path / f"try{attempt}")
        name, storage = config["study"]["name"], config["study"]["storage"]
        create_or_load_study(name, storage, timeout_s=30)
        studies = [open_study(name, storage, 7, timeout_s=30) for _ in range(4)]
        outcomes = _check_together(studies, config)
        recorded = open_study(name, storage, 7, timeout_s=30).user_attrs[STUDY_FINGERPRINT_ATTR]
        assert sorted(outcomes.values()) == ["recorded", "refused", "refused", "refused"]
        assert outcomes[recorded] == "recorded"
