"""Study-wide retention: only the top `keep_best_trials` finished trials keep checkpoints,
each only its best ones, weights only (`retention.weights_only`).

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

from leanhpo.checkpoints import (
    CheckpointStore,
    CorruptCheckpointError,
    RetentionPolicy,
    epoch_id,
    plan_retention,
)
from leanhpo.fsutil import atomic_write_json, read_json
from leanhpo.logs import event, setup_logging
from leanhpo.reports import refresh_retained
from leanhpo.study.info import read_study_info

FINISHED_STATUSES = ("completed", "failed", "pruned")
POLICY_FILE = "storage_policy.json"  # written by disk pressure (pressure.py, step 2)
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


def effective_retention(study_dir: Path, retention: dict[str, Any]) -> dict[str, Any]:
    """The config's retention, with the aggressive policy of disk pressure's step 2 when it
    was switched on."""
    policy_file = study_dir / POLICY_FILE
    if policy_file.exists():
        return {**retention, **read_json(policy_file)["retention"]}
    return dict(retention)


def policy_of(retention: dict[str, Any]) -> RetentionPolicy:
    # keep_best_k=0 passes validation only with checkpointing off, where no policy is applied.
    best_k = max(1, retention["keep_best_k"])
    return RetentionPolicy(
        retention["keep_last_n"],
        best_k,
        max(best_k, retention["keep_best_k_max"]),
        bool(retention.get("weights_only", True)),
    )


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
        # The ranking score: a pruned trial stopped early and can never be the best, so, like
        # a failed one, it keeps no checkpoint.
        completed = state["status"] == "completed"
        score = float(value) if completed and value is not None and math.isfinite(value) else None
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
    """Best first; ties go to the earlier slot, unscored (failed, pruned) trials last."""
    return sorted(trials, key=lambda t: (t["score"] is None, -(t["score"] or 0.0), t["slot"]))


def settle_trial(
    store: CheckpointStore,
    history: list[dict[str, Any]],
    policy: RetentionPolicy,
    metric: str,
    log: logging.Logger,
    limit: int | None = None,
    slot: int | None = None,
) -> int:
    """A finished trial's checkpoints as retention leaves them; returns the bytes freed.

    Epochs outside its final plan (its best, co-best ties included; only the earliest `limit`
    of them when given, as disk pressure asks) are deleted; with `policy.weights_only` the
    rest lose their optimizer state, since a finished trial never resumes. Idempotent: every
    rerun may settle a trial again. `slot` names the trial in the log records (another trial's
    job may settle it)."""
    values = epoch_values(history, metric)
    infos = store.list()
    planned = plan_retention([(i.epoch, values.get(i.epoch)) for i in infos], policy, final=True)
    keep = set(sorted(planned.keep)[:limit])
    where = {} if slot is None else {"slot": slot}
    freed = 0
    for info in infos:
        if info.epoch not in keep:
            if store.delete(info.epoch):
                freed += info.bytes
                message = f"pruned checkpoint epoch {info.epoch} (trial finished)"
                event(log, message, kind="prune", epoch=info.epoch, final=True, **where)
        elif policy.weights_only and info.resumable:
            freed += strip_checkpoint(store, info.epoch, log, slot)
    return freed


def strip_checkpoint(
    store: CheckpointStore, epoch: int, log: logging.Logger, slot: int | None = None
) -> int:
    """Strip one checkpoint; one that does not verify is left for `load` to quarantine."""
    where = {} if slot is None else {"slot": slot}
    try:
        freed = store.strip(epoch)
    except CorruptCheckpointError as error:
        message = f"not stripped: {error}"
        event(log, message, logging.WARNING, kind="strip_failed", epoch=epoch, **where)
        return 0
    if freed:
        message = f"stripped {epoch_id(epoch)} to weights only"
        event(log, message, kind="strip", epoch=epoch, freed=freed, **where)
    return freed


def prune_study_checkpoints(
    study_dir: Path, retention: dict[str, Any], metric: str, log: logging.Logger
) -> dict[str, Any]:
    """Settle the top `keep_best_trials` finished trials (settle_trial) and delete every
    checkpoint of the others."""
    with retention_lock(study_dir):
        return _prune_study_checkpoints(study_dir, retention, metric, log)


def _prune_study_checkpoints(
    study_dir: Path, retention: dict[str, Any], metric: str, log: logging.Logger
) -> dict[str, Any]:
    keep_n = int(retention["keep_best_trials"])
    policy = policy_of(effective_retention(study_dir, retention))
    order = ranked(finished_trials(study_dir))
    kept, pruned, settled = [], [], 0
    for position, trial in enumerate(order):
        store = CheckpointStore(trial["dir"] / "checkpoints", log=log)
        in_top = position < keep_n and trial["score"] is not None
        if in_top:
            settled += settle_trial(
                store, trial["history"], policy, metric, log, slot=trial["slot"]
            )
        infos = store.list()
        entry = {
            "slot": trial["slot"],
            "status": trial["status"],
            "score": trial["score"],
            "checkpoints": [i.id for i in infos],
            "kinds": [i.kind for i in infos],
            "bytes": sum(i.bytes for i in infos),
            "bytes_written": trial["written"],
        }
        if in_top:
            refresh_retained(trial["dir"] / "report.json")
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
        "weights_only": policy.weights_only,
        "optimization_metric": metric,
        "kept": kept,
        "pruned": pruned,
        "bytes_retained": sum(e["bytes"] for e in kept),
        "bytes_freed_now": sum(e["bytes"] for e in pruned) + settled,
        # Everything the study ever wrote minus what is still there: trial-level and study-level
        # pruning and stripping together.
        "bytes_written_total": sum(t["written"] for t in order),
        "bytes_pruned_total": sum(t["written"] for t in order) - sum(e["bytes"] for e in kept),
    }


def prune_study(
    study_file: Path, retention_json: Path, retention: dict[str, Any]
) -> dict[str, Any]:
    """The prune_study step: enforce study-wide retention and record it in retention.json."""
    log = setup_logging()
    study_info = read_study_info(study_file)
    summary = prune_study_checkpoints(
        study_file.parent, retention, study_info["optimization_metric"], log
    )
    summary["generated_at"] = datetime.now(UTC).isoformat()
    atomic_write_json(retention_json, summary)
    return summary
