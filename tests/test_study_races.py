"""Study-wide deletes under concurrency (issue 8, part 4.4): parallel trial jobs each prune the
study at their end, and a running trial measures the study before every save. Real processes,
real folders; nothing is mocked."""

from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path

import pytest
import torch

from leanhpo.checkpoints import CheckpointStore
from leanhpo.fsutil import atomic_write_json
from leanhpo.logs import setup_logging
from leanhpo.study.pressure import checkpoint_folder_bytes
from leanhpo.study.prune import prune_study_checkpoints

TRIALS, EPOCHS, FILES = 12, 4, 6
METRIC = "val_criteria_f1_macro"


def _finished_study(study_dir: Path) -> None:
    """Finished trials with several checkpoints each, every one eligible for deletion."""
    tensors = {f"g{i}": {"w": torch.zeros(64)} for i in range(FILES)}
    for slot in range(TRIALS):
        trial_dir = study_dir / f"trial_{slot:04d}"
        store = CheckpointStore(trial_dir / "checkpoints")
        history = []
        for epoch in range(1, EPOCHS + 1):
            store.save(epoch, tensors, {"epoch": epoch})
            history.append({"epoch": epoch, "metrics": {METRIC: 0.1 * slot}})
        state = {
            "slot": slot,
            "status": "completed",
            "outcome": {"best_value": 0.1 * slot, "history": history, "ledger": []},
        }
        atomic_write_json(trial_dir / "state.json", state)


# keep_best_trials 0: every round deletes checkpoints another process may be measuring.
DROP_ALL = {"keep_best_trials": 0, "keep_last_n": 1, "keep_best_k": 1, "keep_best_k_max": 2}


def _prune(study_dir: str, rounds: int, errors) -> None:
    log = setup_logging()
    try:
        for _ in range(rounds):
            prune_study_checkpoints(Path(study_dir), DROP_ALL, METRIC, log)
    except Exception:
        errors.put(traceback.format_exc())


def _measure(study_dir: str, rounds: int, errors) -> None:
    try:
        for _ in range(rounds):
            checkpoint_folder_bytes(Path(study_dir))
    except Exception:
        errors.put(traceback.format_exc())


@pytest.mark.slow
def test_concurrent_study_prunes_and_measurements_never_crash(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for attempt in range(3):
        study_dir = tmp_path / f"study{attempt}"
        _finished_study(study_dir)
        errors = context.Queue()
        workers = [
            context.Process(target=_prune, args=(str(study_dir), 3, errors)),
            context.Process(target=_prune, args=(str(study_dir), 3, errors)),
            context.Process(target=_measure, args=(str(study_dir), 200, errors)),
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        failures = []
        while not errors.empty():
            failures.append(errors.get())
        assert not failures, failures[0]
        assert [w.exitcode for w in workers] == [0, 0, 0]
        left = list(study_dir.glob("trial_*/checkpoints/epoch_*"))
        assert left == [], left
