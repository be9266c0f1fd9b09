"""Placeholder MLflow run ids in the study's own files, made real.

A run created while MLflow is down has a placeholder id ("pending-..."), and study.json (the
parent run) and a trial's state.json keep it. Once the run exists, every such file is rewritten
(atomically, with its old mtime: study.json is an input of every trial job, and a newer one
would make Snakemake rerun them all) to hold the real id. A placeholder no spool file knows any
more (the spool was emptied or deleted, which docs/operations.md allows) is made again from the
files themselves: a placeholder is a hash of the experiment and the run's tags, and the tags
are the study's UUID and role, or its slot (and confirm seed), so the run is found by its tags
in MLflow, or created there, or spooled again while MLflow is down.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from leanhpo.fsutil import atomic_write_json, read_json
from leanhpo.paths import CONFIRM_PREFIX, confirm_label, trial_label
from leanhpo.study.create import STUDY_ROLE_TAG, STUDY_UUID_TAG
from leanhpo.tracking import Tracker, is_placeholder, placeholder_id
from leanhpo.tracking.spool import PendingRun

LOG = logging.getLogger("leanhpo.tracking")
CONFIRM_SEED_TAG = "leanhpo.confirm_seed"  # with the study uuid and slot: a confirm run's key
SLOT_TAG = "leanhpo.slot"
STATE_GLOBS = ("trial_[0-9][0-9][0-9][0-9]/state.json", f"{CONFIRM_PREFIX}*/state.json")


def study_run_key(info: dict[str, Any]) -> tuple[dict[str, str], str]:
    """The parent run's tags and name, as create_study makes it."""
    return {STUDY_UUID_TAG: info["study_id"], STUDY_ROLE_TAG: "study"}, f"study-{info['name']}"


def trial_run_key(info: dict[str, Any], state: dict[str, Any]) -> tuple[dict[str, str], str]:
    """A trial's (or confirm run's) tags and name, as its job makes it."""
    confirm = state.get("confirm")
    if confirm:
        slot, seed_index = int(confirm["source_slot"]), int(confirm["seed_index"])
        tags = {
            STUDY_UUID_TAG: info["study_id"],
            SLOT_TAG: str(slot),
            CONFIRM_SEED_TAG: str(seed_index),
        }
        return tags, confirm_label(slot, seed_index)
    return {STUDY_UUID_TAG: info["study_id"], SLOT_TAG: str(state["slot"])}, trial_label(
        state["slot"]
    )


def _rewrite(path: Path, obj: dict[str, Any]) -> None:
    if path.exists():
        atomic_write_json(path, obj, mtime_ns=path.stat().st_mtime_ns)


def _settle(
    tracker: Tracker, run_id: str, tags: dict[str, str], name: str, parent: str | None
) -> str:
    """The id a file should hold for this run now: the real one once known; the placeholder
    while a spool file still holds it (the next drain makes the run); else the run found or
    made again by its tags."""
    if not is_placeholder(run_id):
        return run_id
    real = tracker.real_run_id(run_id)
    if real != run_id or tracker.holds_run(run_id):
        return real
    if placeholder_id(tracker.experiment, tags) != run_id:
        LOG.warning(
            "MLflow run %s is in no spool file and is not this study's run %s in experiment %r;"
            " leaving it",
            run_id,
            tags,
            tracker.experiment,
        )
        return run_id
    LOG.info("MLflow run %s is in no spool file; finding or creating it by its tags", run_id)
    real = tracker.find_or_create_run(tags, name, parent_run_id=parent)
    if real != run_id:
        tracker.remember_run(PendingRun(run_id, tracker.experiment, name, tags, parent, 0), real)
    return real


def settle_trial_run(
    tracker: Tracker, info: dict[str, Any], state: dict[str, Any], run_id: str | None
) -> str:
    """The run a trial's (or confirm run's) records go to: the one state.json names, settled,
    or when it names none, the one its tags find (made if absent)."""
    tags, name = trial_run_key(info, state)
    parent = info["mlflow"]["parent_run_id"]
    if not run_id:
        return tracker.find_or_create_run(tags, name, parent_run_id=parent)
    return _settle(tracker, run_id, tags, name, parent)


def settle_parent_run(study_json: Path, info: dict[str, Any], tracker: Tracker) -> dict[str, Any]:
    """study.json with its parent run settled (rewritten if that changed it); return it."""
    record = info["mlflow"]
    tags, name = study_run_key(info)
    parent = _settle(tracker, record["parent_run_id"], tags, name, None)
    if parent != record["parent_run_id"]:
        info = {**info, "mlflow": {**record, "parent_run_id": parent}}
        if info["mlflow"].get("experiment_id") is None and not is_placeholder(parent):
            info["mlflow"]["experiment_id"] = tracker.experiment_id
        _rewrite(study_json, info)
        LOG.info("study.json: MLflow parent run %s is now %s", record["parent_run_id"], parent)
    return info


def settle_run_ids(study_dir: Path, tracker: Tracker) -> int:
    """Rewrite study.json and every trial's state.json that holds a placeholder whose run is
    settled; return how many files changed. A trial whose job runs now (status "running")
    is left to its job, which records the real id itself when it closes its run."""
    study_json = study_dir / "study.json"
    if not study_json.exists():
        return 0
    info = read_json(study_json)
    if not (info.get("mlflow") or {}).get("parent_run_id"):
        return 0
    settled = settle_parent_run(study_json, info, tracker)
    changed = int(settled is not info)
    parent = settled["mlflow"]["parent_run_id"]
    for state_path in sorted(p for pattern in STATE_GLOBS for p in study_dir.glob(pattern)):
        state = read_json(state_path)
        run_id = (state.get("mlflow") or {}).get("run_id")
        if state.get("status") == "running" or not run_id or not is_placeholder(run_id):
            continue
        if state.get("slot") is None and not state.get("confirm"):
            continue  # not written by a trial job
        tags, name = trial_run_key(info, state)
        real = _settle(tracker, run_id, tags, name, parent)
        if real != run_id:
            state["mlflow"]["run_id"] = real
            _rewrite(state_path, state)
            changed += 1
    return changed
