"""Report writing: every report is validated against its shipped JSON Schema, then written
atomically, so a report on disk is always complete and always valid."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from leanhpo.fsutil import atomic_write_json

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
