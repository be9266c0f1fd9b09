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


# study.confirm: the run of trial slot `slot`'s configuration with its `seed_index`-th extra
# seed (1, 2, ...), beside the trial folders; its glob never matches trial_[0-9]{4}.
CONFIRM_PREFIX = "confirm_trial_"


def confirm_folder(slot: int, seed_index: int) -> str:
    return f"{CONFIRM_PREFIX}{slot:04d}_seed_{seed_index}"


def confirm_plan(top_k: int) -> str:
    """The plan of study.confirm at top_k: one file per top_k, so growing it is a new target
    (only the new runs train) and never a changed one."""
    return f"confirm_plan_top{top_k}.json"


def confirm_label(slot: int, seed_index: int) -> str:
    """ "trial 3 seed 1": the configuration of trial 3, trained with its first extra seed."""
    return f"{trial_label(slot)} seed {seed_index}"


def run_folder(report: dict) -> str:
    """The folder of a trial report, or of a confirm run's (its `confirm` block)."""
    confirm = report.get("confirm")
    if confirm:
        return confirm_folder(confirm["source_slot"], confirm["seed_index"])
    return f"trial_{report['slot']:04d}"


def exported_folder(best_trial: dict) -> str:
    """The folder of the run a study report's `best_trial` names: its trial's, or with
    study.confirm possibly a seed's (reports before study.confirm name only the slot)."""
    return best_trial.get("folder") or f"trial_{best_trial.get('slot', -1):04d}"
