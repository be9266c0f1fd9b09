"""Study-wide retention: only the top `keep_best_trials` finished trials keep checkpoints.

Run after every trial (so disk use stays flat while the study grows) and once more by the
`prune_study` rule, which also writes retention.json. Only finished trials are touched: opening
the store of a running trial would remove the temporary folder of a save in progress.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leanhpo.checkpoints import CheckpointStore
from leanhpo.fsutil import atomic_write_json, read_json
from leanhpo.logs import event, setup_logging
from leanhpo.reports import refresh_retained

FINISHED_STATUSES = ("completed", "failed")
RETENTION_LOCK = ".retention.lock"
_held = threading.local()


@contextlib.contextmanager
def retention_lock(study_dir: Path) -> Iterator[None]:
    """Serialise every delete in the finished trials of a study, across processes.

    Parallel trial jobs each prune the study when they end, and disk pressure prunes it before
    a save; two deletes of one folder raced (rename / rmtree FileNotFoundError) and crashed a
    trial. The lock is a blocking flock (deletes are short) and re-entrant within a thread,
    since flock itself is not re-entrant across two opens in one process."""
    if getattr(_held, "depth", 0):
        _held.depth += 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    study_dir.mkdir(parents=True, exist_ok=True)
    with (study_dir / RETENTION_LOCK).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


def epoch_values(history: list[dict[str, Any]], metric: str) -> dict[int, float | None]:
    """{epoch: value of the optimisation metric} from a trial's metric history."""
    return {h["epoch"]: h["metrics"].get(metric) for h in history}


def finished_trials(study_dir: Path) -> list[dict[str, Any]]:
    """(slot, status, score, bytes written, history, dir) of every finished trial, read once
    from its state file."""
    rows = []
    for state_path in sorted(study_dir.glob("trial_[0-9][0-9][0-9][0-9]/state.json")):
        state = read_json(state_path)
        if state.get("status") not in FINISHED_STATUSES:
            continue
        outcome = state.get("outcome") or {}
        value = outcome.get("best_value")
        score = float(value) if value is not None and math.isfinite(value) else None
        written = sum(int(e["bytes"]) for e in outcome.get("ledger", []))
        rows.append(
            {
                "slot": state["slot"],
                "status": state["status"],
                "score": score,
                "written": written,
                "history": outcome.get("history", []),
                "dir": state_path.parent,
            }
        )
    return rows


def ranked(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first; ties go to the earlier slot, unscored (failed) trials last."""
    return sorted(trials, key=lambda t: (t["score"] is None, -(t["score"] or 0.0), t["slot"]))


def prune_study_checkpoints(
    study_dir: Path, keep_best_trials: int, metric: str, log: logging.Logger
) -> dict[str, Any]:
    with retention_lock(study_dir):
        return _prune_study_checkpoints(study_dir, keep_best_trials, metric, log)


def _prune_study_checkpoints(
    study_dir: Path, keep_best_trials: int, metric: str, log: logging.Logger
) -> dict[str, Any]:
    keep_n = int(keep_best_trials)
    order = ranked(finished_trials(study_dir))
    kept, pruned = [], []
    for position, trial in enumerate(order):
        store = CheckpointStore(trial["dir"] / "checkpoints", log=log)
        infos = store.list()
        entry = {
            "slot": trial["slot"],
            "status": trial["status"],
            "score": trial["score"],
            "checkpoints": [i.id for i in infos],
            "bytes": sum(i.bytes for i in infos),
            "bytes_written": trial["written"],
        }
        if position < keep_n and trial["score"] is not None:
            kept.append(entry)
            continue
        for info in infos:
            store.delete(info.epoch)
        refresh_retained(trial["dir"] / "report.json")
        if infos:
            event(
                log,
                f"study retention: removed checkpoints of trial slot {trial['slot']}",
                kind="study_prune",
                **entry,
            )
        pruned.append(entry)
    return {
        "keep_best_trials": keep_n,
        "optimization_metric": metric,
        "kept": kept,
        "pruned": pruned,
        "bytes_retained": sum(e["bytes"] for e in kept),
        "bytes_freed_now": sum(e["bytes"] for e in pruned),
        # Everything the study ever wrote minus what is still there: trial-level and study-level
        # pruning together.
        "bytes_written_total": sum(t["written"] for t in order),
        "bytes_pruned_total": sum(t["written"] for t in order) - sum(e["bytes"] for e in kept),
    }


def prune_study(
    study_file: Path, retention_json: Path, retention: dict[str, Any]
) -> dict[str, Any]:
    """The prune_study step: enforce study-wide retention and record it in retention.json."""
    log = setup_logging()
    study_info = read_json(study_file)
    summary = prune_study_checkpoints(
        study_file.parent, retention["keep_best_trials"], study_info["optimization_metric"], log
    )
    summary["generated_at"] = datetime.now(UTC).isoformat()
    atomic_write_json(retention_json, summary)
    return summary
