"""An in-process study for tests: prepared sample data, an Optuna study and trial jobs."""

from __future__ import annotations

from pathlib import Path

import optuna
from conftest import tiny_config_dict

from leanhpo.data import prepare_dataset
from leanhpo.study.create import create_study
from leanhpo.study.setup import open_study
from leanhpo.tracking import Tracker
from leanhpo.trial.job import run_trial_job


class Study:
    def __init__(self, root: Path, **overrides):
        self.root = root
        self.config = tiny_config_dict(root, **overrides)
        self.dir = root / "experiments" / self.config["study"]["name"]
        self.data = self.dir / "data"
        prepare_dataset(self.config["data"], self.data)
        self.study_json = self.dir / "study.json"
        create_study({k: self.config[k] for k in ("study", "tracking")}, self.study_json)

    def report_path(self, slot: int) -> Path:
        return self.dir / f"trial_{slot:04d}" / "report.json"

    def run(self, slot: int, config=None) -> dict:
        return run_trial_job(
            slot, config or self.config, self.study_json, self.data, self.report_path(slot)
        )

    def tracker(self) -> Tracker:
        return Tracker(self.config["tracking"]["uri"], self.config["tracking"]["experiment"])

    def optuna(self) -> optuna.Study:
        return open_study(self.config["study"]["name"], self.config["study"]["storage"], 0)

    def set_retention(self, **values):
        self.config["retention"].update(values)
