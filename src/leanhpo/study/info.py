"""study.json: what identifies a study (SPEC 7), written once by create_study and read by every
later step. A light module, so the steps that read it need not import Optuna or MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leanhpo.exit_codes import EXIT_BAD_INPUT
from leanhpo.fsutil import read_json


class StudyNotCreatedError(FileNotFoundError):
    """A step that needs the study ran before create_study: only by hand, since Snakemake
    orders the steps by their inputs."""

    exit_code = EXIT_BAD_INPUT


def read_study_info(study_json: Path) -> dict[str, Any]:
    """study.json, or an error that names the step that writes it."""
    try:
        info: dict[str, Any] = read_json(study_json)
    except FileNotFoundError:
        raise StudyNotCreatedError(
            f"{study_json} does not exist: the study {study_json.parent.name!r} has not been "
            "created yet. Fix: run `python -m leanhpo create-study` first, with the same "
            "--config and --configfile options (or `snakemake --cores 1`, which runs every step "
            "in order)."
        ) from None
    return info
