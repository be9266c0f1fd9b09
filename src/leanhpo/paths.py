"""Where a study's files live (SPEC 7). One place, used by the Snakefile and the CLI alike."""

from __future__ import annotations

from pathlib import Path

EXPERIMENTS = Path("experiments")
SPLITS = ("train", "validation", "test")


def study_dir(name: str, root: Path = EXPERIMENTS) -> Path:
    return root / name


def data_dir(name: str, root: Path = EXPERIMENTS) -> Path:
    return study_dir(name, root) / "data"


def trial_dir(name: str, slot: int, root: Path = EXPERIMENTS) -> Path:
    return study_dir(name, root) / f"trial_{slot:04d}"


def trial_report(name: str, slot: int, root: Path = EXPERIMENTS) -> Path:
    return trial_dir(name, slot, root) / "report.json"


def trial_label(slot: int, n_trials: int | None = None) -> str:
    """The one name a person sees for a trial, numbered from 1: "trial 3 of 3" is slot 2, whose
    folder is trial_0002 (zero-based, so that folders sort) and whose Optuna number may differ
    (Optuna numbers trials in the order they were created, across hosts and restarts)."""
    return f"trial {slot + 1}" + (f" of {n_trials}" if n_trials else "")
