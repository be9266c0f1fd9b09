"""Report writing: every report is validated against its shipped JSON Schema, then written
atomically, so a report on disk is always complete and always valid."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from leanhpo.fsutil import atomic_write_json, read_json

TRIAL_SCHEMA = "trial_report.schema.json"
STUDY_SCHEMA = "study_report.schema.json"


@cache
def load_schema(name: str) -> dict[str, Any]:
    text = resources.files("leanhpo.schemas").joinpath(name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate_report(report: dict[str, Any], schema_name: str) -> None:
    """Raise jsonschema.ValidationError naming the first bad field."""
    jsonschema.validate(report, load_schema(schema_name))


def write_report(path: Path, report: dict[str, Any], schema_name: str) -> None:
    validate_report(report, schema_name)
    atomic_write_json(path, report)


def refresh_retained(report_path: Path) -> bool:
    """Bring the checkpoint rows of a trial report (and its byte counts) in line with the disk:
    study-wide retention, stripping and disk pressure change the checkpoints of finished trials
    long after their report was written. A row whose folder is gone loses its `retained` flag;
    one that was stripped gets its new `kind` and `retained_bytes`. Returns whether it changed.

    The report keeps its mtime: the flags describe the disk, not the trial's result, and a
    newer report would make Snakemake rerun every later slot (each takes the previous report
    as input). Flags only ever go from retained to removed; nothing comes back.
    """
    from leanhpo.checkpoints import checkpoint_info  # torch: only where checkpoints are touched

    if not report_path.is_file():
        return False
    report = read_json(report_path)
    folder = report_path.parent / "checkpoints"
    changed = False
    for row in report["checkpoints"]:
        if not row["retained"]:
            continue
        info = checkpoint_info(folder / row["id"])
        now = {
            "retained": info is not None,
            "kind": info.kind if info else None,
            "retained_bytes": info.bytes if info else 0,
        }
        if any(row.get(key) != value for key, value in now.items()):
            row.update(now)
            changed = True
    if not changed:
        return False
    storage = report["storage"]
    storage["bytes_retained"] = sum(
        c.get("retained_bytes", c["bytes"]) for c in report["checkpoints"] if c["retained"]
    )
    storage["bytes_pruned"] = storage["bytes_written"] - storage["bytes_retained"]
    validate_report(report, TRIAL_SCHEMA)
    atomic_write_json(report_path, report, mtime_ns=report_path.stat().st_mtime_ns)
    return True
