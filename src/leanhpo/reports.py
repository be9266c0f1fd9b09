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
    """Clear the `retained` flag (and fix the byte counts) of every checkpoint a trial report
    lists that is no longer on disk: study-wide retention and disk pressure remove checkpoints
    of finished trials long after their report was written. Returns whether it changed.

    The report keeps its mtime: the flags describe the disk, not the trial's result, and a
    newer report would make Snakemake rerun every later slot (each takes the previous report
    as input). Flags only ever go from retained to removed; nothing comes back.
    """
    if not report_path.is_file():
        return False
    report = read_json(report_path)
    folder = report_path.parent / "checkpoints"
    changed = False
    for row in report["checkpoints"]:
        if row["retained"] and not (folder / row["id"]).is_dir():
            row["retained"] = False
            changed = True
    if not changed:
        return False
    storage = report["storage"]
    storage["bytes_retained"] = sum(c["bytes"] for c in report["checkpoints"] if c["retained"])
    storage["bytes_pruned"] = storage["bytes_written"] - storage["bytes_retained"]
    validate_report(report, TRIAL_SCHEMA)
    atomic_write_json(report_path, report, mtime_ns=report_path.stat().st_mtime_ns)
    return True
