"""The exported model as an MLflow pyfunc model of the study's parent run: a logged model named
`model` whose source is the parent run (listed under the run's "Logged models", found by
`search_logged_models` with the parent as source run), so `runs:/<parent>/model` loads it;
registered under tracking.register_model when that names a model.

Once per model: the logged model carries the tag leanhpo.model_fingerprint, the fingerprint of
the export it holds (export.pyfunc.model_fingerprint: the export's files and settings, not its
timestamps), so a rerun of the export step, or a re-export of the same model, uploads nothing; a
registered version carries the same tag, so it is made once too. A kill at any point is redone by
the next run: it finds the same logged model by its tag, uploads its files again if it is not
READY yet, and links it to the run if it is not linked yet. A re-export of another model (a
grown study) adds a second logged model `model` to the run; `runs:/<parent>/model` resolves to
the newest, and the earlier one stays loadable as `models:/<model id>`. The parent run's tags
leanhpo.model_fingerprint and leanhpo.model_uri name the latest.

An MLflow outage does not fail the export: best_model/ is already written, the step logs a
warning and returns "pending", and the next run of the step or `python -m leanhpo sync-tracking`
logs the model. Wrong credentials (TrackingAuthError) still stop it, as everywhere.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from mlflow.entities import LoggedModelStatus
from mlflow.models import Model

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
    {"status": "logged" | "already_logged" | "pending", "run_id", "model_uri" (runs:/...),
    "model_id" (the logged model's; not when pending), "registered": {"name", "version"} | None,
    "reason" (pending only)}."""
    from leanhpo.export.pyfunc import model_fingerprint, save_pyfunc

    log = log or LOG
    study_info = read_json(study_dir / "study.json")
    fingerprint = model_fingerprint(export_dir)
    tracker = open_tracker(tracking, study_dir)
    name = tracking.get("register_model")
    result: dict[str, Any] = {"status": "pending", "run_id": None, "model_uri": None}
    result["registered"] = None
    tags = {FINGERPRINT_TAG: fingerprint}
    try:
        tracker.drain()  # the parent run itself may still be in the spool (made offline)
        parent = tracker.real_run_id(study_info["mlflow"]["parent_run_id"])
        if is_placeholder(parent):
            raise TrackingUnavailable("the study's parent run is not in MLflow yet")
        result.update(run_id=parent, model_uri=f"runs:/{parent}/{MODEL_ARTIFACT}")
        model = tracker.find_logged_model(parent, MODEL_ARTIFACT, tags)
        logged = model is not None and model.status == LoggedModelStatus.READY
        if model is None:
            model = tracker.create_logged_model(parent, MODEL_ARTIFACT, tags)
        if not logged:
            with tempfile.TemporaryDirectory(dir=study_dir, prefix=".mlflow_model.") as tmp:
                # What MLflow's own log_model records in MLmodel: where the model is logged.
                where = Model(
                    artifact_path=model.artifact_location,
                    run_id=parent,
                    model_id=model.model_id,
                    model_uuid=model.model_id,
                )
                folder = save_pyfunc(export_dir, Path(tmp) / MODEL_ARTIFACT, where)
                tracker.upload_logged_model(model.model_id, folder)
        logged = not tracker.link_model_output(parent, model.model_id) and logged
        result["model_id"] = model.model_id
        if name:
            # The files' location, not models:/<id>: with a database URI MLflow would look the
            # logged model up in the process's default tracking store instead of ours.
            version = tracker.register_version(
                name, parent, model.artifact_location, tags, model_id=model.model_id
            )
            result["registered"] = {"name": name, "version": version}
        tracker.set_tags(parent, {**tags, MODEL_URI_TAG: model.model_uri})
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
