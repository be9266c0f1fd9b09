"""One trial job (one Snakemake `run_trial` target): Optuna, MLflow, the epoch loop, the report.

Kill-safety by ordering: the final state file is written before Optuna is told, and Optuna is
told before the report is written. A rerun therefore either re-attaches to a RUNNING trial and
resumes from its checkpoint, or finds a finished trial and only rewrites its report.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from leanhpo.config import Config, apply_params, sample_params, validate_config
from leanhpo.config.strategy import enqueued_params
from leanhpo.data import load_split, read_data_report
from leanhpo.exit_codes import EXIT_ELSEWHERE, ResourceStop
from leanhpo.fsutil import atomic_write_json, read_json
from leanhpo.logs import event, setup_logging
from leanhpo.memory.attempts import AttemptLog
from leanhpo.memory.limits import MemoryWatch
from leanhpo.metric_names import curve_copies
from leanhpo.paths import trial_label
from leanhpo.preload import PRELOADED_ENV
from leanhpo.reports import TRIAL_SCHEMA, write_report
from leanhpo.storage.disk import DiskMonitor
from leanhpo.study.create import STUDY_UUID_TAG
from leanhpo.study.info import read_study_info
from leanhpo.study.lease import SlotLease
from leanhpo.study.pressure import StorageGuard
from leanhpo.study.prune import (
    FINISHED_STATUSES,
    effective_retention,
    policy_of,
    prune_study_checkpoints,
)
from leanhpo.study.pruners import recorded_decisions
from leanhpo.study.runids import settle_parent_run
from leanhpo.study.setup import (
    OWNER_ATTR,
    TRIAL_UUID_ATTR,
    attach_slot,
    open_study,
    sampler_from_config,
    slot_lease,
)
from leanhpo.tracking import Tracker, open_tracker
from leanhpo.trial.analysis import score_for_analysis
from leanhpo.trial.failure import TRIAL_FAILURES, failure_of, killed_for_memory
from leanhpo.trial.fingerprint import (
    check_study_fingerprint,
    check_trial_fingerprint,
    fingerprint,
    training_sections,
)
from leanhpo.trial.lock import TrialLock
from leanhpo.trial.memory import fixes_for
from leanhpo.trial.progress import EpochProgress
from leanhpo.trial.record import announce, close_tracking
from leanhpo.trial.report import build_report
from leanhpo.trial.runner import TrainingOutcome, TrialSpec, run_training
from leanhpo.workflow import job, to_terminal, with_planned_study

FAILURE_ATTR = "failure"  # the Optuna trial's user attr with a failed trial's record


class SlotTrainedElsewhereError(RuntimeError):
    """The slot finished in another driver's working folder (no shared filesystem). Permanent
    for this folder, so not a crash: its own exit code and the message, no traceback."""

    exit_code = EXIT_ELSEWHERE


def main(
    log: str, slot: int, config: dict[str, Any], study_file: str, data_report: str, report: str
) -> None:
    """The run_trial rule's job (scripts/run_trial.py calls it, in the preloaded worker or not)."""
    with job(log):
        run_trial_job(slot, config, Path(study_file), Path(data_report).parent, Path(report))


def run_trial_job(
    slot: int, config: dict[str, Any], study_file: Path, data_dir: Path, report_path: Path
) -> dict[str, Any]:
    # By hand (python -m leanhpo run-trial) a step may be skipped: name it before any write.
    read_data_report(data_dir)
    study_info = read_study_info(study_file)
    trial_dir = report_path.parent
    with TrialLock(trial_dir):
        log = setup_logging(trial_dir / "logs" / "trial.jsonl", trial=trial_dir.name)
        # Not rerun triggers (growing a study, or changing how its next slots are sampled, must
        # not rerun finished trials), so n_trials (the "trial i/N" line, the grid's size) and the
        # search strategy arrive out of band.
        config = validate_config(with_planned_study(config, slot))
        progress = EpochProgress(
            trial_dir.parent, slot, config["study"]["n_trials"], write=to_terminal
        )
        log.addHandler(progress)  # one terminal line per epoch; setup_logging drops it next time
        return _run_locked(slot, config, study_info, data_dir, report_path, log)


def _run_locked(
    slot: int,
    config: dict[str, Any],
    study_info: dict[str, Any],
    data_dir: Path,
    report_path: Path,
    log: logging.Logger,
) -> dict[str, Any]:
    study_cfg = config["study"]
    study = open_study(
        study_cfg["name"],
        study_cfg["storage"],
        study_cfg["seed"],
        timeout_s=study_cfg["storage_timeout_s"],
        sampler=sampler_from_config(config),
    )
    # One owner anywhere (other drivers, other hosts), before the slot's trial is even looked
    # up: two drivers must not both create or both train it (see study/lease.py).
    with slot_lease(study, slot, study_cfg["lease_grace_s"], log) as lease:
        return _run_owned(slot, config, study, lease, study_info, data_dir, report_path, log)


def _run_owned(
    slot: int,
    config: dict[str, Any],
    study: optuna.Study,
    lease: SlotLease,
    study_info: dict[str, Any],
    data_dir: Path,
    report_path: Path,
    log: logging.Logger,
) -> dict[str, Any]:
    trial_dir = report_path.parent
    study_cfg = config["study"]
    data_report = read_data_report(data_dir)
    trial_fingerprint = fingerprint(config, data_report["fingerprint"])
    frozen = attach_slot(study, slot, enqueued_params(config, slot))
    if frozen.system_attrs.get("fixed_params"):
        fixed = frozen.system_attrs["fixed_params"]
        event(log, f"enqueued parameters (study.enqueue[{slot}]): {fixed}", kind="enqueued")
    state_path = trial_dir / "state.json"
    state = read_json(state_path) if state_path.exists() else None
    check_trial_fingerprint(state, trial_fingerprint, config, trial_dir.name)
    check_study_fingerprint(study, trial_fingerprint, config)
    trained = state is not None and state.get("status") in FINISHED_STATUSES
    if trained or frozen.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED):
        if trained and state is not None:  # (narrows the type for mypy)
            score_for_analysis(state_path, state, config, data_dir, log)  # opt-in; once
            close_tracking(state_path, state, study_info, config, log)
        return _finish(study, frozen, state, study_info, config, report_path, log, lease)
    trial = optuna.trial.Trial(study, frozen._trial_id)
    # Who trains it, for people (dashboards) and for a driver that later finds it finished.
    study._storage.set_trial_user_attr(frozen._trial_id, OWNER_ATTR, lease.owner.to_dict())
    params = sample_params(trial, config)
    resolved = Config.from_dict(apply_params(config, params))
    state = state or {
        "slot": slot,
        "trial_uuid": frozen.user_attrs[TRIAL_UUID_ATTR],
        "optuna_trial_id": frozen._trial_id,
        "optuna_number": frozen.number,
        "fingerprint": trial_fingerprint,
        "fingerprint_config": training_sections(config),
        "data": data_report_summary(data_report),
        "started_at": datetime.now(UTC).isoformat(),
    }
    state.update({"status": "running", "params": params, "config": resolved.to_dict()})
    tracker = open_tracker(config["tracking"], trial_dir.parent)
    # A parent run made while MLflow was down: real by now, or made again if the spool is gone.
    study_info = settle_parent_run(trial_dir.parent / "study.json", study_info, tracker)
    run_id = tracker.find_or_create_run(
        {STUDY_UUID_TAG: study_info["study_id"], "leanhpo.slot": str(slot)},
        name=trial_label(slot),  # "trial 3"; the folder, trial_0002, is the leanhpo.folder tag
        parent_run_id=study_info["mlflow"]["parent_run_id"],
    )
    state["mlflow"] = {"run_id": run_id, "experiment_id": tracker.experiment_id}
    atomic_write_json(state_path, state)
    announce(tracker, study, study_info, config, slot, run_id, state, params, resolved, log)

    reported = set(frozen.intermediate_values)

    def publish(epoch: int, metrics: dict[str, float]) -> None:
        lease.fence()  # never publish for a slot another process has taken over
        # The main curves again under a group that MLflow's UI shows first (metric_names).
        shown = {**metrics, **curve_copies(metrics, study_cfg["metric"])}
        tracker.log_metrics_once(run_id, shown, step=epoch)
        value = metrics.get(study_cfg["metric"])
        if epoch > 0 and value is not None and epoch not in reported:
            trial.report(value, epoch)  # Optuna's intermediate values, for pruners and plots
            reported.add(epoch)

    retention = effective_retention(trial_dir.parent, config["retention"])
    record = AttemptLog(trial_dir)  # memory.json: the memory plan and every attempt
    guard = StorageGuard(trial_dir.parent, trial_dir, config["retention"], study_cfg["metric"], log)
    spec = TrialSpec(
        config=resolved,
        params=params,
        seed=study_cfg["seed"],
        metric=study_cfg["metric"],
        trial_dir=trial_dir,
        policy=policy_of(retention),
        guard=guard,
        fence=lease.fence,
        stop_after=recorded_decisions(
            config, study, frozen._trial_id, state, state_path, lease.fence, log
        ),
        identity={
            "slot": slot,
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
        atomic_write_json(state_path, state)
        lease.fence()
        study._storage.set_trial_user_attr(frozen._trial_id, FAILURE_ATTR, failure)
        close_tracking(state_path, state, study_info, config, log, tracker)
        return _finish(study, frozen, state, study_info, config, report_path, log, lease)
    assert outcome is not None  # trained: no failure
    if outcome.pruned_at_epoch is not None:
        state["pruning"]["pruned_at_epoch"] = outcome.pruned_at_epoch
    mark_trained(state, spec, outcome, monitor, started, tracker, run_id)
    atomic_write_json(state_path, state)
    score_for_analysis(state_path, state, config, data_dir, log, tracker)  # opt-in; once
    close_tracking(state_path, state, study_info, config, log, tracker)
    return _finish(study, frozen, state, study_info, config, report_path, log, lease)


def mark_failed(state: dict[str, Any], failure: dict[str, Any], log: logging.Logger) -> None:
    """state.json's record of a trial (or confirm run) that failed through its own settings."""
    event(
        log,
        f"failed through its own settings: {failure['message']}",
        logging.ERROR,
        kind="trial_failed",
        reason=failure["reason"],
    )
    state.update(
        {"status": "failed", "failure": failure, "finished_at": datetime.now(UTC).isoformat()}
    )


def mark_trained(
    state: dict[str, Any],
    spec: TrialSpec,
    outcome: TrainingOutcome,
    monitor: DiskMonitor,
    started: float,
    tracker: Tracker,
    run_id: str,
) -> None:
    """state.json's record of a trial (or confirm run) that trained to its end or was pruned."""
    if outcome.resolved_settings:
        # The report's config (and so a retraining, the export) holds what the trial decoded
        # with; MLflow's params are immutable, so the resolved value is a param of its own.
        tracker.log_params_once(
            run_id, {f"resolved.{k}": v["resolved"] for k, v in outcome.resolved_settings.items()}
        )
    state.update(
        {
            "config": spec.config.to_dict(),
            "status": "completed" if outcome.pruned_at_epoch is None else "pruned",
            "outcome": vars(outcome),
            "disk": {
                "pressure_steps": spec.guard.steps_taken if spec.guard else [],
                "lowest_free": monitor.lowest.to_dict() if monitor.lowest else None,
            },
            "finished_at": datetime.now(UTC).isoformat(),
            "wall_seconds": time.monotonic() - started,
        }
    )


def train_recorded(
    spec: TrialSpec,
    config: dict[str, Any],
    data_dir: Path,
    record: AttemptLog,
    publish: Callable[[int, dict[str, float]], None],
    log: logging.Logger,
) -> tuple[TrainingOutcome | None, dict[str, Any] | None, DiskMonitor]:
    """Train `spec` under the disk monitor and the memory record: (outcome, None), or (None,
    the failure record) when the trial failed through its own settings. No space, or too
    little memory, raises (exit 73; a rerun resumes). A trial's and a study.confirm run's."""
    # Snakemake sets OMP_NUM_THREADS from the rule's threads (--cores, or --set-threads
    # run_trial=N); torch takes its intra-op threads from it.
    event(
        log,
        f"{torch.get_num_threads()} CPU thread(s)",
        kind="threads",
        threads=torch.get_num_threads(),
        preloaded=os.environ.get(PRELOADED_ENV) == "1",  # forked from the preloaded worker
    )
    splits = {name: load_split(data_dir, name) for name in ("train", "validation")}
    monitor = DiskMonitor(spec.trial_dir, config["retention"]["min_free_disk_percent"])
    watch = MemoryWatch.discover()
    # Killed twice at the same batch for memory: a third try would meet it again (attempts.py).
    verdict = record.killed_for_memory(watch.oom_kills())
    outcome, failure = None, None
    with record.attempt(watch):
        try:
            if verdict is not None:
                plan = record.data.get("plan") or {}
                post = (plan.get("largest_unit") or {}).get("rows", 0)
                failure = killed_for_memory(verdict, fixes_for(spec.config, post))
            else:
                with monitor:
                    outcome = run_training(
                        spec, splits["train"], splits["validation"], publish, log
                    )
        except ResourceStop as error:  # no space, or too little memory for one pass
            # To stdout and the JSONL log; the job exits with 73 and a rerun resumes.
            event(log, error.render(), logging.ERROR, kind=error.kind, **error.payload)
            raise
        except TRIAL_FAILURES as error:
            failure = failure_of(error)
        if failure is not None:
            record.end(failure["reason"])
    return outcome, failure, monitor


def data_report_summary(report: dict[str, Any]) -> dict[str, Any]:
    return {
        k: report.get(k)
        for k in ("source", "dataset_id", "revision", "resolved_revision", "fingerprint")
    }


def _finish(
    study: optuna.Study,
    frozen: optuna.trial.FrozenTrial,
    state: dict[str, Any] | None,
    study_info: dict[str, Any],
    config: dict[str, Any],
    report_path: Path,
    log: logging.Logger,
    lease: SlotLease,
) -> dict[str, Any]:
    """Tell Optuna (if not yet told), prune study-wide, and write the report."""
    trained_by = frozen.user_attrs.get(OWNER_ATTR)
    if state is None and frozen.state != TrialState.RUNNING and trained_by:
        where = f"{trained_by['host']}:{trained_by['workdir']}"
        if where != f"{lease.owner.host}:{lease.owner.workdir}":
            raise SlotTrainedElsewhereError(
                f"slot {report_path.parent.name} (Optuna trial {frozen.number}, "
                f"{frozen.state.name}) was trained by pid {trained_by['pid']} on "
                f"{trained_by['host']} in {trained_by['workdir']}; its state and checkpoints are "
                "in that folder, not in this one, so this driver did not train it again. To "
                "report or evaluate the study here, copy that trial folder into "
                f"{report_path.parent.parent} and rerun (see docs/scale.md)."
            )
    if state is None or state.get("status") not in FINISHED_STATUSES:
        raise RuntimeError(
            f"Optuna trial {frozen.number} of slot {report_path.parent.name} is {frozen.state.name} but its "
            f"state file {report_path.parent / 'state.json'} is missing or unfinished; the trial cannot be "
            "reported. Restore the state file, or start a new study.name."
        )
    current = study._storage.get_trial(frozen._trial_id)
    if current.state == TrialState.RUNNING:
        lease.fence()
        if state["status"] == "pruned":  # the last reported value becomes the trial's value
            study.tell(current.number, state=TrialState.PRUNED)
        elif state["status"] == "completed" and state["outcome"]["best_value"] is not None:
            study.tell(current.number, state["outcome"]["best_value"])
        else:
            study.tell(current.number, state=TrialState.FAIL)
        event(log, f"told Optuna: trial {current.number} {state['status']}", kind="tell")
    # Settles this trial's own checkpoints too (its best only, weights only; none when pruned):
    # done here, once state.json says finished, so a kill before that still finds the trial's
    # resume point.
    prune_study_checkpoints(
        report_path.parent.parent, config["retention"], config["study"]["metric"], log
    )
    report = build_report(state, study_info, study._storage.get_trial(frozen._trial_id))
    write_report(report_path, report, TRIAL_SCHEMA)
    event(log, f"report written: {report_path}", kind="report", status=report["status"])
    return report
