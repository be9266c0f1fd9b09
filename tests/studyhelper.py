"""An in-process study for tests: prepared sample data, an Optuna study and trial jobs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
from conftest import tiny_config_dict

from leanhpo.data import load_split, prepare_dataset
from leanhpo.metric_names import SYMPTOMS
from leanhpo.study.create import create_study
from leanhpo.study.evaluate import evaluate_study, structure_metrics
from leanhpo.study.export import export_best_model
from leanhpo.study.setup import open_study
from leanhpo.tracking import Tracker
from leanhpo.training.evaluation import evidence_pairs
from leanhpo.training.metrics import criteria_metrics, evidence_metrics
from leanhpo.training.setup import encode
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


def exported_study(root: Path, overrides: dict) -> SimpleNamespace:
    """A one-trial study, its test evaluation and its export (best_model/)."""
    study = Study(root, **overrides)
    study.run(0)
    report_path = study.dir / "study_report.json"
    report = evaluate_study(
        study.study_json, study.data, [study.report_path(0)], report_path, study.config
    )
    out = study.dir / "best_model"
    result = export_best_model(study.dir, report_path, out)
    return SimpleNamespace(study=study, report=report, folder=out, result=result)


def gold_posts(study: Study) -> list[dict]:
    return load_split(study.data, "test")


def score_predictions(model, gold: list[dict], rows: list[dict]) -> dict:
    """The study report's test_metrics layout (losses aside) of predict's output: criteria from
    the probabilities, evidence from the spans, with the study's own pair exclusions."""
    probabilities = np.array(
        [[row["symptoms"][s]["probability"] for s in SYMPTOMS] for row in rows]
    )
    labels = np.array([post["labels"] for post in gold])
    examples, _ = evidence_pairs(encode(model.network, model.config, gold), {})
    spans = [
        None
        if row["evidence"][s] is None
        else (row["evidence"][s]["start"], row["evidence"][s]["end"])
        for row in rows
        for s in SYMPTOMS
    ]
    predicted = [replace(pair, pred_span=span) for pair, span in zip(examples, spans, strict=True)]
    flat: dict = {f"criteria_{k}": v for k, v in criteria_metrics(labels, probabilities).items()}
    flat.update({f"evidence_{k}": v for k, v in evidence_metrics(predicted).items()})
    flat["evidence_null_threshold"] = model.null_threshold
    return structure_metrics(flat)
