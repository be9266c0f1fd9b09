"""Build the per-trial report (SPEC 7) from the trial's state file.

The report is derived, never the source of truth: the state file and the checkpoints are, so a
report lost to a kill is rebuilt identically by the next run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from leanhpo import __version__
from leanhpo.checkpoints import checkpoint_info
from leanhpo.metric_names import undefined_symptoms

STATUS = {TrialState.COMPLETE: "completed", TrialState.FAIL: "failed", TrialState.PRUNED: "pruned"}
EMPTY_OUTCOME: dict[str, Any] = {
    "history": [],
    "ledger": [],
    "retained": [],
    "best_epochs": [],
    "best_value": None,
    "baseline": {"metrics": {}, "best": None, "optimization_metric_value": None},
    "evidence_window": {},
    "resumed_from_epoch": 0,
    "train_seconds": 0.0,
    "quarantined": [],
    "tmp_cleaned": 0,
    "encoder": {},
    "compute": None,
}


def checkpoint_rows(outcome: dict[str, Any]) -> list[dict[str, Any]]:
    retained, best = set(outcome["retained"]), set(outcome["best_epochs"])
    rows = []
    for entry in outcome["ledger"]:
        info = checkpoint_info(Path(entry["path"])) if entry["epoch"] in retained else None
        rows.append(
            {
                "id": entry["id"],
                "path": entry["path"],
                "epoch": entry["epoch"],
                "metric": entry["metric"],
                "co_best": entry["epoch"] in best,
                "sha256": entry["sha256"],
                "retained": info is not None,
                "bytes": entry["bytes"],
                "kind": info.kind if info else None,
                "retained_bytes": info.bytes if info else 0,
            }
        )
    return rows


def _analysis(state: dict[str, Any]) -> dict[str, Any] | None:
    found = state.get("test_metrics_for_analysis")
    if found is None:
        return None
    return {k: v for k, v in found.items() if k not in ("flat", "flat_ci")}


def _validation_metrics(outcome: dict[str, Any]) -> dict[str, float]:
    if not outcome["best_epochs"]:
        return {}
    best = min(outcome["best_epochs"])
    metrics = next(h["metrics"] for h in outcome["history"] if h["epoch"] == best)
    return {k: v for k, v in metrics.items() if k.startswith("val_")}


def build_report(
    state: dict[str, Any], study_info: dict[str, Any], trial: FrozenTrial | None
) -> dict[str, Any]:
    """The report of a trial (`trial`: its Optuna record, whose state wins), or of a
    study.confirm run (`trial` None: not an Optuna trial; state.json's `confirm` block)."""
    outcome = {**EMPTY_OUTCOME, **(state.get("outcome") or {})}
    checkpoints = checkpoint_rows(outcome)
    written = sum(c["bytes"] for c in checkpoints)
    retained = sum(c["retained_bytes"] for c in checkpoints)
    config = state.get("config") or {}
    encoder = outcome["encoder"]
    return {
        "schema_version": 2,
        "study": {"id": study_info["study_id"], "name": study_info["name"]},
        "slot": state["slot"],
        "trial_uuid": state["trial_uuid"],
        "optuna_number": None if trial is None else trial.number,
        "status": state["status"] if trial is None else STATUS.get(trial.state, state["status"]),
        "confirm": state.get("confirm"),
        "params": state.get("params", {}),
        "config": config,
        "optimization_metric": study_info["optimization_metric"],
        "best_validation_score": outcome["best_value"],
        "best_epochs": outcome["best_epochs"],
        "baseline": outcome["baseline"],
        "checkpoints": checkpoints,
        "validation_metrics": _validation_metrics(outcome),
        # Symptoms no validation post shows: undefined, left out of the macro averages (and so
        # of a macro study.metric) in every epoch alike; null before the first epoch.
        "validation_undefined_symptoms": (
            undefined_symptoms(outcome["history"][0]["metrics"], "val_")
            if outcome["history"]
            else None
        ),
        "history": outcome["history"],
        "seeds": {
            "study": study_info["seed"],
            # study.seed for every trial; study.seed + k for a confirm run's k-th extra seed
            "trial": state.get("seed", study_info["seed"]),
            # Each parameter's draw is seeded by (this, the trial number, its name).
            "sampler": study_info["seed"],
            "data_split": config.get("data", {}).get("split", {}).get("seed", 0),
        },
        "dataset": {
            "source": state["data"]["source"],
            "id": state["data"]["dataset_id"],
            "revision": state["data"]["revision"],
            "resolved_revision": state["data"]["resolved_revision"],
            "fingerprint": state["data"]["fingerprint"],
        },
        "model": {
            "id": config.get("model", {}).get("id"),
            "resolved": encoder.get("resolved"),
            "source": encoder.get("source"),
            "revision": encoder.get("revision"),
        },
        # Device, precision and train.deterministic of the last run (a note when not bitwise).
        "compute": outcome["compute"],
        "code_version": __version__,
        "mlflow": state.get("mlflow", {"run_id": None, "experiment_id": None}),
        "timings": {
            "started_at": state.get("started_at"),
            "finished_at": state.get("finished_at"),
            "train_seconds": round(outcome["train_seconds"], 3),
            "wall_seconds_last_run": round(state.get("wall_seconds", 0.0), 3),
            "resumed_from_epoch": outcome["resumed_from_epoch"],
        },
        "storage": {
            "bytes_written": written,
            "bytes_pruned": written - retained,
            "bytes_retained": retained,
            "quarantined": outcome["quarantined"],
            "tmp_cleaned": outcome["tmp_cleaned"],
            "pressure_steps": (state.get("disk") or {}).get("pressure_steps", []),
            "lowest_free_disk": (state.get("disk") or {}).get("lowest_free"),
        },
        "evidence_window": outcome["evidence_window"],
        # Config values the trial resolved from its data (model.max_answer_tokens: auto)
        "resolved_settings": outcome.get("resolved_settings") or {},
        "failure": state.get("failure"),
        # rows per pass (train.max_batch_rows resolved), the limit, and the peaks over attempts
        "memory": state.get("memory"),
        # study.pruner: its decision after each epoch, and the epoch it stopped the trial at
        "pruning": state.get("pruning"),
        # evaluation.per_trial_test only: analysis, never selection (see trial/analysis.py)
        "test_metrics_for_analysis": _analysis(state),
        "tracking": state.get("tracking", {"spool_pending": 0, "max_wait_s": 0.0}),
        "generated_at": datetime.now(UTC).isoformat(),
    }
