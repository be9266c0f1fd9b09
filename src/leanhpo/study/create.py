"""The create_study step: the Optuna study, the MLflow parent run, and study.json.

study.json holds only what identifies the study (name, storage, seed, metric, tracking), so it
never changes while the study grows: it is a plain input of every trial job. Idempotent:
rerunning it finds the same study and parent run and rewrites the same study.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leanhpo import __version__
from leanhpo.config import validate_config
from leanhpo.fsutil import atomic_write_json
from leanhpo.logs import event, mask_secrets, setup_logging
from leanhpo.study.setup import (
    CREATED_AT_ATTR,
    STUDY_LEASE_SLOT,
    STUDY_UUID_ATTR,
    create_or_load_study,
    slot_lease,
    study_lock,
)
from leanhpo.tracking import open_tracker

STUDY_ROLE_TAG = "leanhpo.role"
STUDY_UUID_TAG = "leanhpo.study_uuid"


def create_study(config: dict[str, Any], study_json: Path) -> dict[str, Any]:
    config = validate_config(config)
    log = setup_logging()
    study_cfg, tracking = config["study"], config["tracking"]
    # Any number of drivers on any hosts may create the same study at the same instant. The
    # study, its UUID, the tracking store's tables and the parent run are made under the study
    # lock: one driver at a time, and each later one finds what the first made.
    with study_lock(study_cfg["name"], study_cfg["storage"], study_cfg["storage_timeout_s"]):
        study = create_or_load_study(
            study_cfg["name"], study_cfg["storage"], timeout_s=study_cfg["storage_timeout_s"]
        )
        study_uuid = study.user_attrs[STUDY_UUID_ATTR]
        tracker = open_tracker(tracking, study_json.parent)
        # The lease stays for a driver of an earlier leanhpo, which takes no study lock.
        lease = slot_lease(study, STUDY_LEASE_SLOT, study_cfg["lease_grace_s"], log)
        with lease.acquire(wait_for_live_s=study_cfg["lease_grace_s"]):
            parent = tracker.find_or_create_run(
                {STUDY_UUID_TAG: study_uuid, STUDY_ROLE_TAG: "study"},
                name=f"study-{study_cfg['name']}",
            )
    tracker.log_params_once(parent, {"study": study_cfg})
    tracker.set_tags(
        parent, {"leanhpo.study_name": study_cfg["name"], "leanhpo.code_version": __version__}
    )
    info = {
        "study_id": study_uuid,
        "name": study_cfg["name"],
        "storage": mask_secrets(study_cfg["storage"]),
        "created_at": study.user_attrs[CREATED_AT_ATTR],
        "optimization_metric": study_cfg["metric"],
        "direction": "maximize",
        "seed": study_cfg["seed"],
        "mlflow": {
            "tracking_uri": mask_secrets(tracking["uri"]),
            "experiment_id": tracker.experiment_id,
            "parent_run_id": parent,
        },
        "code_version": __version__,
    }
    atomic_write_json(study_json, info)
    event(
        log,
        f"study {study_cfg['name']!r} ready",
        study_id=study_uuid,
    )
    return info
