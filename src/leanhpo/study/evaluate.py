"""The evaluate_study step: one test-set evaluation of the best trial, the study report.

This is the only code that reads the test split. The best trial's best checkpoints (all of
them when co-best) are verified, rebuilt from the config stored inside them and evaluated once.
When the study ran with checkpointing off, the best trial is retrained in memory up to its best
epoch instead; training is deterministic, so that gives the same model.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from leanhpo import __version__
from leanhpo.checkpoints import CheckpointStore, CorruptCheckpointError, LoadedCheckpoint
from leanhpo.config import Config, validate_config
from leanhpo.config.typed import EvaluationConfig
from leanhpo.data import load_split
from leanhpo.fsutil import read_json
from leanhpo.logs import event, setup_logging
from leanhpo.metric_names import (
    CRITERIA_PER_SYMPTOM,
    CRITERIA_SUMMARY,
    DECISION_THRESHOLD_KEYS,
    EVIDENCE_SUMMARY,
    JOINT_SUMMARY,
    SYMPTOMS,
    TEN_LABEL_SUMMARY,
    undefined_symptoms,
)
from leanhpo.models import compatibility_metadata
from leanhpo.paths import run_folder
from leanhpo.reports import STUDY_SCHEMA, write_report
from leanhpo.study.confirm import choose_over_seeds, read_confirm, run_row
from leanhpo.study.info import read_study_info
from leanhpo.study.setup import final_progress, open_study, progress_tags, trial_counts
from leanhpo.tracking import open_tracker
from leanhpo.training.bootstrap import BootstrapResult, Interval, bootstrap_test_metrics
from leanhpo.training.compute import describe_compute
from leanhpo.training.evaluation import Evaluation, evaluate
from leanhpo.training.features import train_prevalence
from leanhpo.training.metrics import NO_SYMPTOMS, threshold_vector
from leanhpo.training.setup import Network, build_network, class_weights, encode
from leanhpo.trial import state as ckpt_state
from leanhpo.trial.epoch import replay_training

PER_CRITERION = (*CRITERIA_PER_SYMPTOM, "support")
JOINT_KEYS = (*JOINT_SUMMARY, "n_pairs", "n_excluded", "n_evidence", "n_evidence_absent")
EVIDENCE_KEYS = (
    *EVIDENCE_SUMMARY,
    "null_threshold",
    "n_positive_pairs",
    "n_null_pairs",
    "n_excluded",
)


class BestNetwork(NamedTuple):
    """A network to evaluate on test, with the thresholds its trial chose on validation."""

    entry: dict[str, Any]  # the checkpoint row of the trial report
    network: Network
    config: Config
    null_threshold: float
    decision_thresholds: np.ndarray  # per symptom, in SYMPTOMS order


def pick_best(reports: list[dict[str, Any]]) -> dict[str, Any]:
    scored = [
        r for r in reports if r["status"] == "completed" and r["best_validation_score"] is not None
    ]
    if not scored:
        raise RuntimeError(
            "no trial of the study completed with a score, so there is no model to evaluate; "
            "read the failure reasons in experiments/<study>/trial_*/report.json"
        )
    return sorted(scored, key=lambda r: (-r["best_validation_score"], r["slot"]))[0]


def structure_metrics(flat: dict[str, float | None], evidence_for: str) -> dict[str, Any]:
    """Flat evaluation metrics -> the study report's test_metrics layout (SPEC 7), with the
    symptoms left out of the macro averages (no post of the split shows them) named, and the
    joint block under the model.evidence_for the evidence was given with."""
    criteria: dict[str, Any] = {k: flat.get(f"criteria_{k}") for k in CRITERIA_SUMMARY}
    criteria["per_criterion"] = {
        symptom: {k: flat.get(f"criteria_{k}_{symptom}") for k in PER_CRITERION}
        for symptom in SYMPTOMS
    }
    criteria["undefined_symptoms"] = undefined_symptoms(flat)
    ten_label: dict[str, Any] = {k: flat.get(f"criteria_ten_label_{k}") for k in TEN_LABEL_SUMMARY}
    ten_label["labels_left_out"] = criteria["undefined_symptoms"] + (
        [NO_SYMPTOMS] if ten_label["f1_no_symptoms"] is None else []
    )
    criteria["ten_label"] = ten_label
    evidence = {k: flat.get(f"evidence_{k}") for k in EVIDENCE_KEYS}
    joint: dict[str, Any] = {k: flat.get(f"joint_{k}") for k in JOINT_KEYS}
    joint["evidence_for"] = evidence_for
    losses = {k: flat.get(k) for k in ("loss", "criteria_loss", "evidence_loss")}
    return {
        "criteria_matching": criteria,
        "evidence_binding": evidence,
        "joint": joint,
        "losses": losses,
    }


def structure_intervals(result: BootstrapResult | None) -> dict[str, Any] | None:
    """Bootstrap intervals -> `test_metrics_ci`, the test_metrics layout with an interval
    ({low, high, undefined}) where test_metrics has a figure; None when the bootstrap is off."""
    if result is None:
        return None
    flat: dict[str, Interval | None] = result.intervals
    criteria: dict[str, Any] = {k: flat[f"criteria_{k}"] for k in CRITERIA_SUMMARY}
    criteria["per_criterion"] = {
        symptom: {k: flat[f"criteria_{k}_{symptom}"] for k in CRITERIA_PER_SYMPTOM}
        for symptom in SYMPTOMS
    }
    criteria["ten_label"] = {k: flat[f"criteria_ten_label_{k}"] for k in TEN_LABEL_SUMMARY}
    return {
        "method": "post-level percentile bootstrap",
        "samples": result.samples,
        "level": result.level,
        "seed": result.seed,
        "criteria_matching": criteria,
        "evidence_binding": {k: flat[f"evidence_{k}"] for k in EVIDENCE_SUMMARY},
        "joint": {k: flat[f"joint_{k}"] for k in JOINT_SUMMARY},
    }


def bootstrap(
    evaluation: Evaluation,
    threshold: float,
    train_posts: list[dict[str, Any]],
    settings: EvaluationConfig,
    seed: int,
    decision_thresholds: float | np.ndarray,
    evidence_for: str,
) -> BootstrapResult | None:
    """The test figures' intervals, on resamples seeded by the study seed (so a rerun, and
    every co-best checkpoint, gets the same resamples); `threshold` decodes the evidence,
    `decision_thresholds` decide the symptoms, `evidence_for` says which get evidence."""
    if evaluation.pair_posts is None:
        raise ValueError("the evaluation does not say which post each evidence pair belongs to")
    return bootstrap_test_metrics(
        evaluation.labels,
        evaluation.probabilities,
        evaluation.evidence(threshold, evidence_for, decision_thresholds),
        evaluation.pair_posts,
        np.array(train_prevalence(train_posts)),
        settings.bootstrap_samples,
        settings.ci_level,
        seed,
        decision_thresholds,
    )


def validation_null_threshold(validation_metrics: dict[str, Any], config: Config) -> float:
    """The null threshold the trial used on validation at that epoch (calibrated with `auto`),
    so the test split is decoded exactly as the checkpoint was selected."""
    value = validation_metrics.get("val_evidence_null_threshold")
    if value is not None:
        return float(value)
    if config.model.null_threshold == "auto":
        raise RuntimeError(
            "the best trial's validation metrics hold no val_evidence_null_threshold, so its "
            "calibrated null threshold is unknown; rerun the trial with this leanhpo version"
        )
    return float(config.model.null_threshold)


def validation_decision_thresholds(
    validation_metrics: dict[str, Any], config: Config
) -> np.ndarray:
    """The nine decision thresholds the trial scored that epoch's validation with (tuned with
    `auto`), so the test split is decided exactly as the checkpoint was selected, never tuned
    on test. A snapshot from before they were logged holds none: then model.decision_threshold
    (0.5 by default), unless it is `auto`."""
    found = [validation_metrics.get(f"val_{key}") for key in DECISION_THRESHOLD_KEYS]
    if all(value is not None for value in found):
        return threshold_vector(np.array(found, dtype=float))
    if any(value is not None for value in found) or config.model.decision_threshold == "auto":
        missing = [
            f"val_{k}" for k, v in zip(DECISION_THRESHOLD_KEYS, found, strict=True) if v is None
        ]
        raise RuntimeError(
            f"the best trial's validation metrics lack {', '.join(missing)}, so the decision "
            "thresholds it was selected with are unknown; rerun the trial with this leanhpo version"
        )
    return threshold_vector(float(config.model.decision_threshold))


def thresholds_by_symptom(decision_thresholds: np.ndarray) -> dict[str, float]:
    return {name: float(value) for name, value in zip(SYMPTOMS, decision_thresholds, strict=True)}


def best_networks(
    best: dict[str, Any], study_dir: Path, data_dir: Path, log: logging.Logger
) -> list[BestNetwork]:
    """A BestNetwork (checkpoint entry, restored network, config, thresholds) for each co-best
    checkpoint of a trial report that is on disk and verifies; else the trial retrained in
    memory to its first best epoch. Also the per-trial test evaluation's (trial/analysis.py)."""
    # a trial's folder, or a study.confirm run's
    store = CheckpointStore(study_dir / run_folder(best) / "checkpoints", log=log)
    wanted = _verified_co_best(best, store, log)
    seed = best["seeds"]["trial"]
    if not wanted:
        config = Config.from_stored(best["config"])
        epoch = min(best["best_epochs"])
        event(
            log,
            f"no verified best checkpoint on disk (checkpointing off?): retraining slot "
            f"{best['slot']} to epoch {epoch}",
            logging.WARNING if config.train.checkpointing else logging.INFO,
        )
        rows = (best.get("memory") or {}).get("rows_per_pass")  # auto, as the trial resolved it
        network = replay_training(config, seed, load_split(data_dir, "train"), epoch, rows)
        metrics = next(h["metrics"] for h in best["history"] if h["epoch"] == epoch)
        return [
            BestNetwork(
                {"id": f"epoch_{epoch:04d}", "path": "", "epoch": epoch, "sha256": None},
                network,
                config,
                validation_null_threshold(metrics, config),
                validation_decision_thresholds(metrics, config),
            )
        ]
    result = []
    for entry, loaded in wanted:
        config = Config.from_stored(loaded.meta["config"])
        network = build_network(config, seed)
        ckpt_state.check_compatible(
            loaded, network, compatibility_metadata(network.model, config.model.id, __version__)
        )
        ckpt_state.restore(loaded, network, optimisation=None)
        metrics = loaded.meta["metrics"]
        result.append(
            BestNetwork(
                entry,
                network,
                config,
                validation_null_threshold(metrics, config),
                validation_decision_thresholds(metrics, config),
            )
        )
    return result


def _test_macro_f1(
    run: dict[str, Any],
    study_dir: Path,
    data_dir: Path,
    test_posts: list[dict[str, Any]],
    train_posts: list[dict[str, Any]],
    log: logging.Logger,
) -> float | None:
    """study.confirm: the test macro-F1 of one of the winner's other runs (its first best
    checkpoint), for the report's per-seed spread; never used to choose."""
    _, network, config, threshold, decision = min(
        best_networks(run, study_dir, data_dir, log), key=lambda b: b.entry["epoch"]
    )
    evaluation = score_test_split(network, config, test_posts, train_posts)
    flat = evaluation.metrics("", threshold, decision, config.model.evidence_for)
    return flat.get("criteria_f1_macro")


def score_test_split(
    network: Network,
    config: Config,
    test_posts: list[dict[str, Any]],
    train_posts: list[dict[str, Any]],
) -> Evaluation:
    """One pass over the test split, as validation does (the training split only gives the
    class weights of the losses)."""
    split = encode(network, config, test_posts)
    weights = class_weights(config, train_posts, network.device)
    return evaluate(
        network.model,
        split,
        config.model,
        config.train,
        network.device,
        network.pad_token_id,
        weights,
        "test",
    )


def _verified_co_best(
    best: dict[str, Any], store: CheckpointStore, log: logging.Logger
) -> list[tuple[dict[str, Any], LoadedCheckpoint]]:
    """The best trial's co-best checkpoints as they are on disk now, each loaded and verified.

    What is on disk decides, not the report's `retained` flags: disk pressure (step 3) may have
    removed a co-best after the report was written. A checkpoint that is gone is skipped; one
    that fails verification, or is not the one the report lists, is too, with a warning."""
    found = []
    for entry in (c for c in best["checkpoints"] if c["co_best"]):
        if not (store.root / entry["id"]).is_dir():
            continue
        try:
            loaded = store.load(entry["epoch"])  # verifies every file against the manifest
        except CorruptCheckpointError as error:
            event(log, f"skipping co-best checkpoint {entry['id']}: {error}", logging.WARNING)
            continue
        if loaded.info.saved_sha256 != entry["sha256"]:  # stripping keeps the saved identity
            event(
                log,
                f"skipping {loaded.info.path}: it differs from the checkpoint its trial report lists",
                logging.WARNING,
            )
            continue
        found.append((entry, loaded))
    return found


def evaluate_study(
    study_file: Path,
    data_dir: Path,
    report_paths: list[Path],
    output: Path,
    config: dict[str, Any],
    plan_path: Path | None = None,
    confirm_paths: list[Path] | None = None,
) -> dict[str, Any]:
    """`config` holds at least the study and tracking sections: the live storage and tracking
    URLs, which the stored configs only hold masked; its `evaluation` section (defaults when
    absent) sets the bootstrap. With study.confirm, `plan_path` (confirm_plan.json) and the
    confirm runs' reports: the winner is chosen over seeds (study/confirm.py)."""
    config = validate_config(config)
    settings = EvaluationConfig.from_dict(config)
    log = setup_logging()
    study_info = read_study_info(study_file)
    reports = [read_json(p) for p in report_paths]
    plan, confirm_reports = read_confirm(plan_path, confirm_paths or [])
    confirm_block: dict[str, Any] | None = None
    winner_runs: list[dict[str, Any]] = []
    if plan is not None and plan["slots"]:
        best, winner_runs, confirm_block = choose_over_seeds(reports, confirm_reports, plan)
    else:
        best = pick_best(reports)
    source = next(r for r in reports if r["slot"] == best["slot"])  # a confirm run's trial
    test_posts, train_posts = load_split(data_dir, "test"), load_split(data_dir, "train")
    evaluated = []
    for entry, network, model_config, threshold, decision in best_networks(
        best, study_file.parent, data_dir, log
    ):
        evaluation = score_test_split(network, model_config, test_posts, train_posts)
        evidence_for = model_config.model.evidence_for
        flat = evaluation.metrics("", threshold, decision, evidence_for)
        started = time.perf_counter()
        intervals = bootstrap(
            evaluation, threshold, train_posts, settings, study_info["seed"], decision, evidence_for
        )
        if intervals is not None:
            event(
                log,
                f"bootstrap intervals of {entry['id']}: {intervals.samples} resamples of "
                f"{len(test_posts)} test posts in {time.perf_counter() - started:.2f} s",
            )
        evaluated.append(
            {
                **{k: entry[k] for k in ("id", "path", "epoch", "sha256")},
                "decision_thresholds": thresholds_by_symptom(decision),
                "test_metrics": structure_metrics(flat, evidence_for),
                "test_metrics_ci": structure_intervals(intervals),
                "flat": flat,
                "bootstrap": intervals,
                "compute": describe_compute(
                    network.device.type, model_config.train.amp, model_config.train.deterministic
                ),
            }
        )
    primary = min(evaluated, key=lambda e: e["epoch"])
    if confirm_block is not None:
        confirm_block["winner_test_per_seed"] = [
            {
                **run_row(run),
                "exported": run is best,
                "test_criteria_f1_macro": (
                    primary["flat"].get("criteria_f1_macro")
                    if run is best
                    else _test_macro_f1(
                        run, study_file.parent, data_dir, test_posts, train_posts, log
                    )
                ),
            }
            for run in winner_runs
        ]
    study = open_study(
        study_info["name"],
        config["study"]["storage"],
        study_info["seed"],
        timeout_s=config["study"]["storage_timeout_s"],
    )
    report = {
        "schema_version": 2,
        "study_id": study_info["study_id"],
        "study_name": study_info["name"],
        "best_trial": {
            "uuid": best["trial_uuid"],
            "number": source["optuna_number"],
            "slot": best["slot"],
            # the exported run: the trial's folder, or with study.confirm possibly a seed's
            "folder": run_folder(best),
            "seed": best["seeds"]["trial"],
        },
        "optimization_metric": study_info["optimization_metric"],
        "best_validation_score": best["best_validation_score"],
        "baseline_validation_score": best["baseline"]["optimization_metric_value"],
        "config": best["config"],
        "checkpoints": [
            {k: v for k, v in e.items() if k not in ("flat", "bootstrap", "compute")}
            for e in evaluated
        ],
        "test_metrics": primary["test_metrics"],
        "test_metrics_ci": primary["test_metrics_ci"],
        "baseline_comparison": (
            None if primary["bootstrap"] is None else primary["bootstrap"].baseline_comparison
        ),
        "test_split": {"posts": len(test_posts)},
        "dataset": best["dataset"],
        "seeds": best["seeds"],
        # The device and precision of these test scores: the export records them, and predict
        # computes the same way (export/precision.py).
        "compute": primary["compute"],
        "trial_counts": trial_counts(study),
        "n_trials": len(reports),
        # study.confirm: every confirmed configuration's runs and spread, the winner by mean,
        # its test macro-F1 per seed; null when off (the single best trial is the winner)
        "confirm": confirm_block,
        "code_version": __version__,
        "generated_at": datetime.now(UTC).isoformat(),
    }
    write_report(output, report, STUDY_SCHEMA)
    _track(
        config,
        study_file.parent,
        study_info,
        primary,
        best,
        len(reports),
        confirm_block,
        # with study.confirm its runs count too: more seeds are a new evaluation, a new step
        step=len(reports) + len(confirm_reports),
    )
    event(
        log,
        f"study report written: {output}",
        best_slot=best["slot"],
        test_f1_macro=primary["flat"].get("criteria_f1_macro"),
    )
    return report


def _track(
    config: dict[str, Any],
    study_dir: Path,
    study_info: dict[str, Any],
    primary: dict[str, Any],
    best: dict[str, Any],
    n_trials: int,
    confirm: dict[str, Any] | None = None,
    step: int | None = None,
) -> None:
    """The test metrics and their intervals on the study's parent run, at step = the number of
    trial slots evaluated (with study.confirm, plus its runs): a grown study's evaluation is a
    new point (MLflow shows the latest step), while a rerun of the same evaluation adds nothing
    (the seeded intervals are the same too), so MLflow and study_report.json agree. The
    progress tags the trials left on the parent (trial i/N, best so far, ETA) are made final
    here, as the study is."""
    tracker = open_tracker(config["tracking"], study_dir)
    parent = study_info["mlflow"]["parent_run_id"]
    metrics = metrics_to_log(primary)
    if confirm is not None:
        winner = next(c for c in confirm["configurations"] if c["slot"] == confirm["winner_slot"])
        spread = {f"confirm_winner_validation_{k}": v for k, v in winner["validation"].items()}
        metrics.update({k: v for k, v in spread.items() if v is not None})
    tracker.log_metrics_once(parent, metrics, step=n_trials if step is None else step)
    tags = {
        "leanhpo.best_slot": best["slot"],
        "leanhpo.best_folder": run_folder(best),
        "leanhpo.best_trial_uuid": best["trial_uuid"],
        "leanhpo.evaluated_trials": n_trials,
        **progress_tags(final_progress(n_trials, best["best_validation_score"])),
    }
    if primary["bootstrap"] is not None:
        tags["leanhpo.test_baseline"] = primary["bootstrap"].baseline_comparison["baseline"]
    tracker.set_tags(parent, tags)
    tracker.set_status(parent, "FINISHED")
    tracker.drain()  # what an outage kept from MLflow during the study


def metrics_to_log(primary: dict[str, Any]) -> dict[str, float]:
    """`test_<metric>`, its `test_<metric>_ci_low`/`_ci_high`, and the baseline comparison
    (`test_baseline_f1_macro`, its interval, `test_baseline_share_not_better`)."""
    flat: dict[str, float | None] = primary["flat"]
    result: BootstrapResult | None = primary["bootstrap"]
    metrics = {f"test_{k}": v for k, v in flat.items() if v is not None}
    if result is None:
        return metrics
    comparison = result.baseline_comparison
    bounds = {**result.intervals, "baseline_f1_macro": comparison["baseline_ci"]}
    for key, interval in bounds.items():
        if interval is not None:
            metrics[f"test_{key}_ci_low"] = interval["low"]
            metrics[f"test_{key}_ci_high"] = interval["high"]
    metrics["test_baseline_f1_macro"] = comparison["baseline_f1_macro"]
    metrics["test_baseline_share_not_better"] = comparison["share_not_better"]
    return metrics
