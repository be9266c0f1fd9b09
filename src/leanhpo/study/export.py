"""The export_model step: the model the study report evaluated, as experiments/<study>/best_model/.

The model is the study report's primary checkpoint: the best trial's first co-best epoch, the
one whose scores are the report's `test_metrics`. It is loaded from the trial's checkpoint store
(every file verified against its manifest, and the manifest against the SHA-256 the report
lists), rebuilt from the config stored inside it, and written by `leanhpo.export`. When no
checkpoint is on disk (the study ran with train.checkpointing off, or it is gone), the trial is
retrained in memory to that epoch, as evaluate_study does; training is deterministic, so that
is the same model.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leanhpo import __version__
from leanhpo.checkpoints import CheckpointStore, CorruptCheckpointError
from leanhpo.commands import current_invocation
from leanhpo.config import Config, validate_config
from leanhpo.data import load_split
from leanhpo.export import ExportError, model_card, write_export
from leanhpo.fsutil import read_json
from leanhpo.logs import event, setup_logging
from leanhpo.models import compatibility_metadata
from leanhpo.paths import exported_folder
from leanhpo.study.evaluate import (
    thresholds_by_symptom,
    validation_decision_thresholds,
    validation_null_threshold,
)
from leanhpo.study.publish import publish_model
from leanhpo.training.compute import describe_compute
from leanhpo.training.setup import Network, build_network
from leanhpo.trial import state as ckpt_state
from leanhpo.trial.epoch import replay_training


def export_best_model(
    study_dir: Path,
    study_report_path: Path,
    out_dir: Path,
    data_dir: Path | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the study's best model to `out_dir` (replacing an earlier export atomically).
    With `config` (at least its tracking section), then log it to the study's parent MLflow run
    as a pyfunc model (study/publish.py); an MLflow outage leaves that for later."""
    log = setup_logging()
    tracking = None if config is None else validate_config(config)["tracking"]
    study_dir, out_dir = Path(study_dir), Path(out_dir)
    if not Path(study_report_path).is_file():
        raise ExportError(
            f"{study_report_path} does not exist: evaluate the study first "
            f"(`{current_invocation().snakemake('--cores', 'all')}` runs every step in order)"
        )
    report = read_json(study_report_path)
    primary = min(report["checkpoints"], key=lambda c: c["epoch"])
    slot = report["best_trial"]["slot"]
    folder = exported_folder(report["best_trial"])
    trial = read_json(study_dir / folder / "report.json")
    network, raw_config, metrics, source = _restore(
        report, trial, primary, study_dir, data_dir or study_dir / "data", log
    )
    typed = Config.from_stored(raw_config)
    null_threshold = validation_null_threshold(metrics, typed)
    evaluated = report["test_metrics"]["evidence_binding"].get("null_threshold")
    if evaluated is not None and not math.isclose(evaluated, null_threshold, rel_tol=1e-12):
        raise ExportError(
            f"{study_report_path} decoded evidence at null threshold {evaluated}, the checkpoint "
            f"gives {null_threshold}: the report is stale; rerun the evaluation"
        )
    given = (report["test_metrics"].get("joint") or {}).get("evidence_for")
    if given is not None and given != typed.model.evidence_for:
        raise ExportError(
            f"{study_report_path} gave test evidence for {given!r} symptoms, the checkpoint's "
            f"config says model.evidence_for {typed.model.evidence_for!r}: the report is stale; "
            "rerun the evaluation"
        )
    info = {
        "leanhpo_version": __version__,
        "config": raw_config,
        "decision_thresholds": _decision_thresholds(
            metrics, raw_config, primary, study_report_path
        ),
        "null_threshold": null_threshold,
        # Which symptoms predict gives evidence for (also in config.model): as the test
        # evaluation gave it.
        "evidence_for": typed.model.evidence_for,
        "seed": report["seeds"]["trial"],
        # Device and precision of the test scores, which predict reproduces (export/precision.py).
        # A report of an older leanhpo has none: its evaluation ran as this restore does, with
        # the same config, on this machine's device.
        "compute": report.get("compute")
        or describe_compute(network.device.type, typed.train.amp, typed.train.deterministic),
        "encoder": {
            "id": network.encoder_info.requested,
            "resolved": network.encoder_info.resolved,
            "source": network.encoder_info.source,
            "revision": network.encoder_info.revision,
        },
        "study": {"id": report["study_id"], "name": report["study_name"]},
        "best_trial": {
            **report["best_trial"],
            "epoch": primary["epoch"],
            "params": trial["params"],
        },
        "optimization_metric": report["optimization_metric"],
        "best_validation_score": report["best_validation_score"],
        "dataset": report["dataset"],
        "source_checkpoint": source,
        "metrics": {
            "test": report["test_metrics"],
            "test_ci": report.get("test_metrics_ci"),  # bootstrap intervals, when computed
            "validation": {k: v for k, v in metrics.items() if k.startswith("val_")},
            "test_posts": report["test_split"]["posts"],
        },
        "study_report_generated_at": report["generated_at"],
        "exported_at": datetime.now(UTC).isoformat(),
    }
    files = write_export(network, info, model_card(info), out_dir)
    event(log, f"best model exported: {out_dir}", slot=slot, epoch=primary["epoch"])
    result = {
        "path": str(out_dir),
        "files": files,
        "source_checkpoint": source,
        "bytes": sum(entry["bytes"] for entry in files.values()),
    }
    if tracking is not None:
        result["mlflow"] = publish_model(study_dir, out_dir, tracking, log)
    return result


def _decision_thresholds(
    metrics: dict[str, Any],
    raw_config: dict[str, Any],
    primary: dict[str, Any],
    study_report_path: Path,
) -> dict[str, float]:
    """Per symptom, the checkpoint's decision threshold (stored with its validation metrics),
    which must be the one the study report decided the test split with."""
    stored = thresholds_by_symptom(
        validation_decision_thresholds(metrics, Config.from_stored(raw_config))
    )
    evaluated = primary.get("decision_thresholds")  # absent in reports of older versions
    if evaluated is not None and any(
        not math.isclose(evaluated[name], value, rel_tol=1e-12) for name, value in stored.items()
    ):
        raise ExportError(
            f"{study_report_path} decided the test symptoms at thresholds {evaluated}, the "
            f"checkpoint gives {stored}: the report is stale; rerun the evaluation"
        )
    return stored


def _restore(
    report: dict[str, Any],
    trial: dict[str, Any],
    primary: dict[str, Any],
    study_dir: Path,
    data_dir: Path,
    log: logging.Logger,
) -> tuple[Network, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(network, its stored config, its validation metrics, where it came from)."""
    seed = report["seeds"]["trial"]
    store = CheckpointStore(
        study_dir / exported_folder(report["best_trial"]) / "checkpoints", log=log
    )
    reason = "the study report lists no checkpoint on disk (checkpointing off)"
    if primary.get("sha256") and (store.root / primary["id"]).is_dir():
        try:
            loaded = store.load(primary["epoch"])  # verifies every file against the manifest
        except CorruptCheckpointError as error:
            reason = f"checkpoint {primary['id']} does not verify: {error.reason}"
            event(log, f"{reason}; retraining instead", logging.WARNING)
        else:
            if loaded.info.saved_sha256 != primary["sha256"]:  # the same after stripping
                raise ExportError(
                    f"{loaded.info.path} differs from the checkpoint the study report evaluated "
                    "(another SHA-256): the report is stale; rerun the evaluation"
                )
            raw = loaded.meta["config"]
            config = Config.from_stored(raw)
            network = build_network(config, seed)
            expected = compatibility_metadata(network.model, config.model.id, __version__)
            ckpt_state.check_compatible(loaded, network, expected)
            ckpt_state.restore(loaded, network, optimisation=None)
            source = {
                "kind": "checkpoint",
                "id": primary["id"],
                "path": str(loaded.info.path),
                "sha256": loaded.info.saved_sha256,
                "checkpoint_kind": loaded.info.kind,
                "epoch": primary["epoch"],
            }
            return network, raw, loaded.meta["metrics"], source
    elif primary.get("sha256"):
        reason = f"checkpoint {primary['id']} is no longer on disk"
    event(
        log, f"{reason}: retraining slot {report['best_trial']['slot']} to epoch {primary['epoch']}"
    )
    raw = report["config"]
    rows = (trial.get("memory") or {}).get("rows_per_pass")  # auto, as the trial resolved it
    network = replay_training(
        Config.from_stored(raw), seed, load_split(data_dir, "train"), primary["epoch"], rows
    )
    metrics = next(h["metrics"] for h in trial["history"] if h["epoch"] == primary["epoch"])
    source = {"kind": "retrained", "epoch": primary["epoch"], "reason": reason, "sha256": None}
    return network, raw, metrics, source
