"""The trial's MLflow record: announced when training starts, closed when the trial ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna

from leanhpo import __version__
from leanhpo.commands import current_invocation
from leanhpo.config import Config
from leanhpo.fsutil import atomic_write_json
from leanhpo.logs import event
from leanhpo.study.runids import settle_run_ids, settle_trial_run
from leanhpo.study.setup import progress, progress_tags
from leanhpo.tracking import SPOOL_FILE, Tracker, open_tracker

MAX_TAG_CHARS = 5000  # MLflow's limit on a tag value is 8000 characters
MIB = 1 << 20


def announce(
    tracker: Tracker,
    study: optuna.Study,
    study_info: dict[str, Any],
    config: dict[str, Any],
    slot: int,
    run_id: str,
    state: dict[str, Any],
    params: dict[str, Any],
    resolved: Config,
    log: logging.Logger,
) -> None:
    info = progress(study, slot, config["study"]["n_trials"])
    event(
        log,
        f"{info['trial']} (best so far {info['best_so_far']}, ETA {info['eta_seconds']} s)",
        kind="trial_start",
        params=params,
        **info,
    )
    tracker.set_tags(study_info["mlflow"]["parent_run_id"], progress_tags(info))
    tracker.set_tags(
        run_id,
        {
            "leanhpo.trial_uuid": state["trial_uuid"],
            "leanhpo.folder": f"trial_{slot:04d}",  # trial 3's folder is trial_0002
            "optuna.trial_number": state["optuna_number"],
            "leanhpo.status": "running",
            "leanhpo.code_version": __version__,
            **{f"leanhpo.dataset.{k}": v for k, v in state["data"].items()},
        },
    )
    tracker.log_params_once(run_id, {**params, "config": resolved.to_dict()})
    tracker.log_dict(run_id, resolved.to_dict(), "resolved_config.json")


def close_tracking(
    state_path: Path,
    state: dict[str, Any],
    study_info: dict[str, Any],
    config: dict[str, Any],
    log: logging.Logger,
    tracker: Tracker | None = None,
) -> None:
    """Finish the trial's MLflow record (score, status tags, terminal status), then drain the
    spool, which holds what an MLflow outage kept from the server.

    Every step is idempotent, and closing is redone on every rerun until state.json records it
    done: a kill (or an MLflow error) between the final state write and the terminal status
    would otherwise leave the run RUNNING forever, without its score."""
    record = state.setdefault("mlflow", {})
    tracker = tracker or open_tracker(config["tracking"], state_path.parent.parent)
    # Found (or made) by its tags when state.json has no id, or a placeholder no spool holds.
    run_id = settle_trial_run(tracker, study_info, state, record.get("run_id"))
    if not record.get("closed"):
        if state["status"] == "completed":
            best = state["outcome"]["best_value"]
            scores = {"best_validation_score": best} if best is not None else {}
            tracker.log_metrics_once(run_id, scores, step=0)
            tags = {
                "leanhpo.status": "completed",
                "leanhpo.best_epochs": state["outcome"]["best_epochs"],
            }
            status = "FINISHED"
        elif state["status"] == "pruned":  # stopped by study.pruner: ended normally, not killed
            pruning = state["pruning"]
            tags = {
                "leanhpo.status": "pruned",
                "leanhpo.pruned_at_epoch": pruning["pruned_at_epoch"],
                "leanhpo.pruner": pruning["pruner"],
            }
            status = "FINISHED"
        else:
            failure = state["failure"]
            tags = {
                "leanhpo.status": "failed",
                "leanhpo.failure": failure["reason"][:MAX_TAG_CHARS],
                "leanhpo.failure_message": failure.get("message", failure["reason"])[
                    :MAX_TAG_CHARS
                ],
            }
            status = "FAILED"
        tags.update(_memory_record(tracker, run_id, state.get("memory")))
        tracker.set_tags(run_id, tags)
        tracker.set_status(run_id, status)
        event(log, f"MLflow run closed as {status}", kind="tracking_closed", run_id=run_id)
    tracker.drain()
    settle_run_ids(state_path.parent.parent, tracker)  # study.json, finished trials' states
    spool = tracker.spool_stats()
    record.update(
        {
            "run_id": tracker.real_run_id(run_id),
            "experiment_id": tracker.experiment_id or record.get("experiment_id"),
            "closed": True,
        }
    )
    state["tracking"] = {
        "spool_pending": spool["pending"],
        "max_wait_s": round(
            max(spool["max_wait_s"], state.get("tracking", {}).get("max_wait_s", 0)), 3
        ),
    }
    atomic_write_json(state_path, state)
    if spool["pending"]:
        event(
            log,
            f"{spool['pending']} MLflow write(s) still spooled in {SPOOL_FILE}: they are replayed "
            "by the next job that reaches MLflow, or by "
            f"`{current_invocation().leanhpo('sync-tracking')}`",
            logging.WARNING,
            kind="tracking_spooled",
            **spool,
        )


def _memory_record(tracker: Tracker, run_id: str, memory: dict[str, Any] | None) -> dict[str, Any]:
    """The trial's peak memory as a metric (step 0, like best_validation_score), and its rows
    per pass and memory limit as tags."""
    if not memory:
        return {}
    if memory.get("peak_rss_bytes") is not None:
        peak = {"peak_memory_mb": round(memory["peak_rss_bytes"] / MIB, 1)}
        tracker.log_metrics_once(run_id, peak, step=0)
    limit = memory.get("limit_bytes")
    tags = {
        "leanhpo.max_batch_rows": memory.get("max_batch_rows"),
        "leanhpo.rows_per_pass": memory.get("rows_per_pass"),
        "leanhpo.memory_limit_mb": round(limit / MIB) if limit else None,
        "leanhpo.memory_limit_source": memory.get("limit_source"),
    }
    return {key: value for key, value in tags.items() if value is not None}
