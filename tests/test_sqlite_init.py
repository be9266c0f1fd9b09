"""A kill -9 while MLflow or Optuna creates its SQLite database never leaves a database that later
runs refuse. Found by the kill storm: MLflow's migrations commit one by one, and a kill between
two left `table _alembic_tmp_experiment_tags already exists` on every later start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

OPEN_MLFLOW = (
    "import sys; from pathlib import Path; from leanhpo.tracking import open_tracker; "
    "t = open_tracker({'uri': 'sqlite:///' + sys.argv[1], 'experiment': 'e', "
    "'write_timeout_s': 30}, Path(sys.argv[2])); assert t.experiment_id is not None, t"
)
OPEN_OPTUNA = (
    "import sys; from leanhpo.study.setup import create_or_load_study; "
    "create_or_load_study('s', 'sqlite:///' + sys.argv[1], timeout_s=5)"
)


def _run(code: str, db: Path, study_dir: Path, kill_after: float | None) -> int:
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(db), str(study_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    if kill_after is not None:
        # Kill once the database file appears (tables being made), at a varying delay after.
        deadline = time.monotonic() + 60
        while not db.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(kill_after)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    _, err = process.communicate(timeout=120)
    if kill_after is None:
        assert process.returncode == 0, err.decode()[-3000:]
    return process.returncode


@pytest.mark.slow
@pytest.mark.parametrize("code", [OPEN_MLFLOW, OPEN_OPTUNA], ids=["mlflow", "optuna"])
def test_a_kill_while_the_database_is_created_leaves_one_that_opens(tmp_path, code):
    for attempt, delay in enumerate((0.0, 0.05, 0.3)):
        db = tmp_path / f"run{attempt}" / "store.db"
        db.parent.mkdir()
        _run(code, db, db.parent, kill_after=delay)
        _run(code, db, db.parent, kill_after=None)  # the rerun opens it
