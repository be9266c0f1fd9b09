"""MLflow tracking: exactly-once metric points, runs found again by tags, and a durable spool
that keeps training going through MLflow outages (see client.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leanhpo.tracking.client import DEFAULT_WRITE_TIMEOUT_S, Tracker
from leanhpo.tracking.errors import TrackingAuthError, TrackingUnavailable
from leanhpo.tracking.spool import Spool, is_placeholder
from leanhpo.tracking.upload import flatten

SPOOL_FILE = "tracking_spool.sqlite"


def open_tracker(tracking: dict[str, Any], study_dir: Path) -> Tracker:
    """The study's tracker, spooling into the study folder. A database store would put
    artifacts in ./mlruns of whatever folder runs the job, so they are kept beside the studies,
    in experiments/mlartifacts."""
    return Tracker(
        tracking["uri"],
        tracking["experiment"],
        study_dir.parent / "mlartifacts",
        spool_path=study_dir / SPOOL_FILE,
        write_timeout_s=float(tracking.get("write_timeout_s", DEFAULT_WRITE_TIMEOUT_S)),
    )


def study_backlog(study_dir: Path) -> dict[str, int]:
    """What the study's spool still holds (Spool.backlog), read without asking MLflow."""
    path = study_dir / SPOOL_FILE
    if not path.is_file():
        return {"entries": 0, "runs": 0, "dead": 0}
    return Spool(path).backlog()


__all__ = [
    "SPOOL_FILE",
    "Tracker",
    "TrackingAuthError",
    "TrackingUnavailable",
    "flatten",
    "is_placeholder",
    "open_tracker",
    "study_backlog",
]
