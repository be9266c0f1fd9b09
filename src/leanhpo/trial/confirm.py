"""One study.confirm run (a Snakemake `confirm_run` target): the configuration of a finished
trial, trained again from scratch with an extra seed, so the winner is chosen over seeds
(study/confirm.py chooses; docs/search.md#confirm).

A confirm run is not an Optuna trial: the sampler never sees it, and no pruner stops it. It is
a trial in every other way: the same epoch loop and checkpoints (resumed after a kill -9, each
epoch published to MLflow exactly once), the same memory and disk guards, a state.json, and a
report in the trial report's form with a `confirm` block. Its folder is
confirm_trial_<slot>_seed_<k> beside the trials; its MLflow run is a child of the study's
parent run, named "trial 3 seed 1".

Seeds: every trial of the search trains with study.seed (initialisation, data order, dropout);
the k-th extra seed is study.seed + k.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leanhpo.checkpoints import CheckpointStore
from leanhpo.config import Config, apply_params, validate_config
from leanhpo.data import read_data_report
from leanhpo.fsutil import atomic_write_json, read_json
from leanhpo.logs import event, setup_logging
from leanhpo.memory.attempts import AttemptLog
from leanhpo.metric_names import curve_copies
from leanhpo.paths import confirm_label, trial_label
from leanhpo.reports import TRIAL_SCHEMA, write_report
from leanhpo.study.confirm import ConfirmSourceError
from leanhpo.study.create import STUDY_UUID_TAG
from leanhpo.study.info import read_study_info
from leanhpo.study.pressure import StorageGuard
from leanhpo.study.prune import (
    FINISHED_STATUSES,
    effective_retention,
    policy_of,
    retention_lock,
    settle_trial,
)
from leanhpo.study.runids import CONFIRM_SEED_TAG, settle_parent_run
from leanhpo.tracking import open_tracker
from leanhpo.trial.fingerprint import check_trial_fingerprint, fingerprint, training_sections
from leanhpo.trial.job import data_report_summary, mark_failed, mark_trained, train_recorded
from leanhpo.trial.lock import TrialLock
from leanhpo.trial.progress import EpochProgress
from leanhpo.trial.record import close_tracking
from leanhpo.trial.report import build_report
from leanhpo.trial.runner import TrialSpec
from leanhpo.workflow import job, to_terminal, with_planned_study


def confirm_seed(study_seed: int, seed_index: int) -> int:
    return study_seed + seed_index


def main(
    log: str,
    slot: int,
    seed_index: int,
    config: dict[str, Any],
    study_file: str,
    data_report: str,
    report: str,
) -> None:
    """The confirm_run rule's job (scripts/confirm_run.py calls it)."""
    with job(log):
        run_confirm_job(
            slot, seed_index, config, Path(study_file), Path(data_report).parent, Path(report)
        )


def run_confirm_job(
    slot: int,
    seed_index: int,
    config: dict[str, Any],
    study_file: Path,
    data_dir: Path,
    report_path: Path,
) -> dict[str, Any]:
    read_data_report(data_dir)
    study_info = read_study_info(study_file)
    run_dir = report_path.parent
    with TrialLock(run_dir):
        log = setup_logging(run_dir / "logs" / "trial.jsonl", trial=run_dir.name)
        config = validate_config(with_planned_study(config, slot))
        label = f"{confirm_label(slot, seed_index)} (study.confirm)"
        progress = EpochProgress(
            run_dir.parent, slot, config["study"]["n_trials"], write=to_terminal, label=label
        )
        log.addHandler(progress)
        return _run_locked(slot, seed_index, config, study_info, data_dir, report_path, log)


def _source_state(study_dir: Path, slot: int) -> dict[str, Any]:
    path = study_dir / f"trial_{slot:04d}" / "state.json"
    state = read_json(path) if path.is_file() else None
    if state is None or state.get("status") != "completed":
        raise ConfirmSourceError(
            f"{trial_label(slot)} ({path.parent.name}) did not complete with a score "
            f"({'no state.json' if state is None else state.get('status')}), so its configuration "
            "cannot be confirmed over seeds; study.confirm takes the top completed trials "
            "(confirm_plan_top<k>.json lists them): rerun the workflow to replan"
        )
    return state


def _run_locked(
    slot: int,
    seed_index: int,
    config: dict[str, Any],
    study_info: dict[str, Any],
    data_dir: Path,
    report_path: Path,
    log: logging.Logger,
) -> dict[str, Any]:
    run_dir = report_path.parent
    study_dir = run_dir.parent
    study_cfg = config["study"]
    source = _source_state(study_dir, slot)
    data_report = read_data_report(data_dir)
    run_fingerprint = fingerprint(config, data_report["fingerprint"])
    # The configuration must be the one the trial was selected with: the study's config and
    # data as they were (a changed config is refused, as for a trial).
    check_trial_fingerprint(source, run_fingerprint, config, f"trial_{slot:04d}")
    state_path = run_dir / "state.json"
    state = read_json(state_path) if state_path.exists() else None
    check_trial_fingerprint(state, run_fingerprint, config, run_dir.name)
    seed = confirm_seed(study_cfg["seed"], seed_index)
    if state is not None and state.get("status") in FINISHED_STATUSES:
        close_tracking(state_path, state, study_info, config, log)
        return _finish(state, study_info, config, report_path, log)
    params = source["params"]
    resolved = Config.from_dict(apply_params(config, params))
    state = state or {
        "slot": slot,
        "trial_uuid": f"{source['trial_uuid']}-seed-{seed_index}",
        "optuna_number": None,
        "confirm": {"source_slot": slot, "seed_index": seed_index, "seed": seed},
        "seed": seed,
        "fingerprint": run_fingerprint,
        "fingerprint_config": training_sections(config),
        "data": data_report_summary(data_report),
        "started_at": datetime.now(UTC).isoformat(),
    }
    state.update({"status": "running", "params": params, "config": resolved.to_dict()})
    tracker = open_tracker(config["tracking"], study_dir)
    study_info = settle_parent_run(study_dir / "study.json", study_info, tracker)
    run_id = tracker.find_or_create_run(
        {
            STUDY_UUID_TAG: study_info["study_id"],
            "leanhpo.slot": str(slot),
            CONFIRM_SEED_TAG: str(seed_index),
        },
        name=confirm_label(slot, seed_index),
        parent_run_id=study_info["mlflow"]["parent_run_id"],
    )
    state["mlflow"] = {"run_id": run_id, "experiment_id": tracker.experiment_id}
    atomic_write_json(state_path, state)
    event(
        log,
        f"{confirm_label(slot, seed_index)}: {trial_label(slot)}'s configuration with seed {seed}",
        kind="confirm_start",
        params=params,
        seed=seed,
    )
    tracker.set_tags(
        run_id,
        {
            "leanhpo.trial_uuid": state["trial_uuid"],
            "leanhpo.folder": run_dir.name,
            "leanhpo.confirm_of": f"trial_{slot:04d}",
            "leanhpo.seed": seed,
            "leanhpo.status": "running",
            **{f"leanhpo.dataset.{k}": v for k, v in state["data"].items()},
        },
    )
    tracker.log_params_once(run_id, {**params, "seed": seed, "config": resolved.to_dict()})

    def publish(epoch: int, metrics: dict[str, float]) -> None:
        shown = {**metrics, **curve_copies(metrics, study_cfg["metric"])}
        tracker.log_metrics_once(run_id, shown, step=epoch)

    retention = effective_retention(study_dir, config["retention"])
    record = AttemptLog(run_dir)
    guard = StorageGuard(study_dir, run_dir, config["retention"], study_cfg["metric"], log)
    spec = TrialSpec(
        config=resolved,
        params=params,
        seed=seed,
        metric=study_cfg["metric"],
        trial_dir=run_dir,
        policy=policy_of(retention),
        guard=guard,
        identity={
            "slot": slot,
            "seed_index": seed_index,
            "trial_uuid": state["trial_uuid"],
            "study_id": study_info["study_id"],
        },
        memory=record,
    )
    started = time.monotonic()
    outcome, failure, monitor = train_recorded(spec, config, data_dir, record, publish, log)
    state["memory"] = record.summary()
    if failure is not None:
        mark_failed(state, failure, log)
    else:
        assert outcome is not None  # no pruner stops a confirm run
        mark_trained(state, spec, outcome, monitor, started, tracker, run_id)
    atomic_write_json(state_path, state)
    close_tracking(state_path, state, study_info, config, log, tracker)
    return _finish(state, study_info, config, report_path, log)


def _finish(
    state: dict[str, Any],
    study_info: dict[str, Any],
    config: dict[str, Any],
    report_path: Path,
    log: logging.Logger,
) -> dict[str, Any]:
    """Settle the run's checkpoints as a finished trial's (its best only, weights only; none
    when it failed) and write its report. Idempotent, like a trial's."""
    run_dir = report_path.parent
    retention = effective_retention(run_dir.parent, config["retention"])
    history = (state.get("outcome") or {}).get("history", [])
    with retention_lock(run_dir.parent):
        store = CheckpointStore(run_dir / "checkpoints", log=log)
        if state["status"] == "completed":
            settle_trial(store, history, policy_of(retention), config["study"]["metric"], log)
        else:
            for info in store.list():
                store.delete(info.epoch)
    report = build_report(state, study_info, None)
    write_report(report_path, report, TRIAL_SCHEMA)
    event(log, f"report written: {report_path}", kind="report", status=report["status"])
    return report
