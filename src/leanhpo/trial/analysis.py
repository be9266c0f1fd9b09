"""The per-trial test evaluation (evaluation.per_trial_test, off by default): for analysis only.

A completed trial's best checkpoint (its first best epoch, as the study evaluation's primary) is
evaluated on the test split once the trial has finished training, with the study evaluation's
own functions (study/evaluate.py: the verified checkpoint, or the trial retrained in memory when
none is on disk, and the validation null and decision thresholds of that epoch). The result goes
to state.json, to the trial report as `test_metrics_for_analysis` and to the trial's MLflow run
as `analysis_test_*`.

Nothing reads it back: selection, pruning, retention, Optuna and the study report use
validation scores only. Resumable: until state.json holds the result it is computed again (a
kill during it costs the pass, nothing else), and the metrics go through log_metrics_once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from leanhpo.config.typed import EvaluationConfig
from leanhpo.data import load_split
from leanhpo.fsutil import atomic_write_json
from leanhpo.logs import event
from leanhpo.study.evaluate import (
    best_networks,
    bootstrap,
    score_test_split,
    structure_intervals,
    structure_metrics,
    thresholds_by_symptom,
)
from leanhpo.tracking import Tracker, open_tracker
from leanhpo.trial.report import checkpoint_rows

STATE_KEY = "test_metrics_for_analysis"
METRIC_PREFIX = "analysis_test_"
NOTE = (
    "The best checkpoint of this trial on the test split, for analysis only "
    "(evaluation.per_trial_test): never used for selection, pruning, retention or the study "
    "report, which use validation scores."
)


def score_for_analysis(
    state_path: Path,
    state: dict[str, Any],
    config: dict[str, Any],
    data_dir: Path,
    log: logging.Logger,
    tracker: Tracker | None = None,
) -> None:
    """Compute (unless state.json holds it) and log the trial's test metrics for analysis,
    when evaluation.per_trial_test is on and the trial completed with a score."""
    if not config.get("evaluation", {}).get("per_trial_test"):
        return
    outcome = state.get("outcome") or {}
    if state.get("status") != "completed" or not outcome.get("best_epochs"):
        return
    if state.get(STATE_KEY) is None:
        settings = EvaluationConfig.from_dict(config)
        state[STATE_KEY] = _evaluate(state, state_path.parent, data_dir, settings, log)
        atomic_write_json(state_path, state)
    run_id = (state.get("mlflow") or {}).get("run_id")
    if run_id:
        tracker = tracker or open_tracker(config["tracking"], state_path.parent.parent)
        result = state[STATE_KEY]
        metrics = {f"{METRIC_PREFIX}{k}": v for k, v in result["flat"].items()}
        for key, (low, high) in (result.get("flat_ci") or {}).items():
            metrics[f"{METRIC_PREFIX}{key}_ci_low"] = low
            metrics[f"{METRIC_PREFIX}{key}_ci_high"] = high
        tracker.log_metrics_once(run_id, metrics, step=result["checkpoint"]["epoch"])


def _evaluate(
    state: dict[str, Any],
    trial_dir: Path,
    data_dir: Path,
    settings: EvaluationConfig,
    log: logging.Logger,
) -> dict[str, Any]:
    outcome = state["outcome"]
    trial = {  # the fields of a trial report that best_networks reads
        "slot": state["slot"],
        "checkpoints": checkpoint_rows(outcome),
        "best_epochs": outcome["best_epochs"],
        "history": outcome["history"],
        "config": state["config"],
        "seeds": {"trial": state["config"]["study"]["seed"]},
    }
    networks = best_networks(trial, trial_dir.parent, data_dir, log)
    entry, network, model_config, threshold, decision = min(
        networks, key=lambda n: n.entry["epoch"]
    )
    test_posts, train_posts = load_split(data_dir, "test"), load_split(data_dir, "train")
    evaluation = score_test_split(network, model_config, test_posts, train_posts)
    seed = state["config"]["study"]["seed"]  # the study evaluation's resamples, too
    evidence_for = model_config.model.evidence_for
    intervals = bootstrap(
        evaluation, threshold, train_posts, settings, seed, decision, evidence_for
    )
    flat: dict[str, float | None] = {
        k: v
        for k, v in evaluation.metrics("", threshold, decision, evidence_for).items()
        if v is not None
    }
    event(
        log,
        f"test split scored for analysis only (epoch {entry['epoch']}); not used for selection",
        kind="analysis_test",
        epoch=entry["epoch"],
        f1_macro=flat.get("criteria_f1_macro"),
    )
    return {
        "note": NOTE,
        "checkpoint": {k: entry[k] for k in ("id", "epoch", "sha256")},
        "decision_thresholds": thresholds_by_symptom(decision),
        "test_posts": len(test_posts),
        "test_metrics": structure_metrics(flat, evidence_for),
        "test_metrics_ci": structure_intervals(intervals),
        "baseline_comparison": None if intervals is None else intervals.baseline_comparison,
        "flat": flat,
        "flat_ci": {
            key: (interval["low"], interval["high"])
            for key, interval in (intervals.intervals if intervals else {}).items()
            if interval is not None
        },
    }
