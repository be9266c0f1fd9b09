"""The exported model as an MLflow pyfunc model on the study's parent run (artifact `model`),
registered under tracking.register_model when that names a model.

Once per model: the parent run's tag leanhpo.model_fingerprint holds the fingerprint of the
model it carries (export.pyfunc.model_fingerprint: the export's files and settings, not its
timestamps), so a rerun of the export step, or a re-export of the same model, uploads nothing;
a registered version carries the same tag, so it is made once too. A kill between the upload and
the tag repeats the upload into the same artifact path: still one model.

An MLflow outage does not fail the export: best_model/ is already written, the step logs a
warning and returns "pending", and the next run of the step or `python -m leanhpo sync-tracking`
logs the model. Wrong credentials (TrackingAuthError) still stop it, as everywhere.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from leanhpo.export import MANIFEST_NAME
from leanhpo.fsutil import read_json
from leanhpo.logs import event
from leanhpo.tracking import TrackingUnavailable, is_placeholder, open_tracker

MODEL_ARTIFACT = "model"
FINGERPRINT_TAG = "leanhpo.model_fingerprint"
MODEL_URI_TAG = "leanhpo.model_uri"
LOG = logging.getLogger("leanhpo.export")


def has_export(study_dir: Path, export_dir: Path | None = None) -> bool:
    folder = export_dir or study_dir / "best_model"
    return (study_dir / "study.json").is_file() and (folder / MANIFEST_NAME).is_file()


def publish_model(
    study_dir: Path,
    export_dir: Path,
    tracking: dict[str, Any],
    log: logging.Logger | None = None,
) -> dict[str, Any]:
    """Log (once) and register (once, when asked) the export; return what happened:
    {"status": "logged" | "already_logged" | "pending", "run_id", "model_uri",
    "registered": {"name", "version"} | None, "reason" (pending only)}."""
    from leanhpo.export.pyfunc import model_fingerprint, save_pyfunc

    log = log or LOG
    study_info = read_json(study_dir / "study.json")
    fingerprint = model_fingerprint(export_dir)
    tracker = open_tracker(tracking, study_dir)
    name = tracking.get("register_model")
    result: dict[str, Any] = {"status": "pending", "run_id": None, "model_uri": None}
    result["registered"] = None
    try:
        tracker.drain()  # the parent run itself may still be in the spool (made offline)
        parent = tracker.real_run_id(study_info["mlflow"]["parent_run_id"])
        if is_placeholder(parent):
            raise TrackingUnavailable("the study's parent run is not in MLflow yet")
        result.update(run_id=parent, model_uri=f"runs:/{parent}/{MODEL_ARTIFACT}")
        logged = tracker.run_tag(parent, FINGERPRINT_TAG) == fingerprint
        if logged:
            source = tracker.run_tag(parent, MODEL_URI_TAG) or ""
        else:
            with tempfile.TemporaryDirectory(dir=study_dir, prefix=".mlflow_model.") as tmp:
                folder = save_pyfunc(export_dir, Path(tmp) / MODEL_ARTIFACT)
                source = tracker.upload_folder(parent, folder, MODEL_ARTIFACT)
        if name:
            version = tracker.register_version(name, parent, source, {FINGERPRINT_TAG: fingerprint})
            result["registered"] = {"name": name, "version": version}
        if not logged:
            tracker.set_tags(parent, {FINGERPRINT_TAG: fingerprint, MODEL_URI_TAG: source})
    except TrackingUnavailable as error:
        result["reason"] = str(error)
        event(
            log,
            f"MLflow did not answer ({error}); {export_dir} is written, but the MLflow model is "
            "not logged yet: rerun the export step or `python -m leanhpo sync-tracking` once "
            "MLflow is back",
            logging.WARNING,
            kind="model_not_logged",
        )
        return result
    result["status"] = "already_logged" if logged else "logged"
    event(
        log,
        f"MLflow model {result['status']}: {result['model_uri']}",
        kind="model_logged",
        registered=result["registered"],
    )
    return result
