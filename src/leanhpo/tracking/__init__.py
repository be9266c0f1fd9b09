"""MLflow tracking: exactly-once metric points, runs found again by tags, and a durable spool
that keeps training going through MLflow outages (see client.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leanhpo.tracking.client import DEFAULT_WRITE_TIMEOUT_S, Tracker
from leanhpo.tracking.errors import TrackingAuthError, TrackingUnavailable
from leanhpo.tracking.spool import (
    LEGACY_SPOOL_FILE,
    Spool,
    backlog_of,
    is_placeholder,
    placeholder_id,
    spool_file_name,
    spool_files,
)
from leanhpo.tracking.upload import flatten

# This host's spool file in the study folder; the other hosts' (and LEGACY_SPOOL_FILE) are
# read and replayed too, never written.
SPOOL_FILE = spool_file_name()


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
    """What the study's spool files (every host's) still hold, read without asking MLflow."""
    return backlog_of([Spool(path) for path in spool_files(study_dir)])


__all__ = [
    "LEGACY_SPOOL_FILE",
    "SPOOL_FILE",
    "Tracker",
    "TrackingAuthError",
    "TrackingUnavailable",
    "flatten",
    "is_placeholder",
    "open_tracker",
    "placeholder_id",
    "study_backlog",
]
