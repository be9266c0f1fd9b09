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
