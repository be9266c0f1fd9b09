"""One compact terminal line per finished epoch, so a person can follow a study.

The trial's full log (stdout.log, trial.jsonl) keeps every event; this handler listens to the
same `epoch_start`/`epoch_end` events and writes a summary line where Snakemake shows its own
(leanhpo.workflow.to_terminal). It reads only finished trial reports beside the trial, so it
works the same for sequential and parallel trials, and a resumed one.

    leanhpo  trial 2 of 3  epoch 1/2  val_criteria_f1_macro 0.412  best 0.455 (trial 1)  ETA 3 min

Trials are numbered from 1 here as everywhere a person reads them (leanhpo.paths.trial_label):
trial 2 of 3 is slot 1, folder trial_0001.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leanhpo.fsutil import read_json
from leanhpo.paths import trial_label

PREFIX = "leanhpo"
REPORT_GLOB = "trial_[0-9][0-9][0-9][0-9]/report.json"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def finished_reports(study_dir: Path, skip_slot: int | None = None) -> list[dict[str, Any]]:
    """The readable trial reports of the study (a report being rewritten is skipped)."""
    reports = []
    for path in sorted(study_dir.glob(REPORT_GLOB)):
        try:
            report = read_json(path)
        except (OSError, ValueError):
            continue
        if report.get("slot") != skip_slot:
            reports.append(report)
    return reports


class EpochProgress(logging.Handler):
    """Turns the trial logger's epoch events into terminal lines (see the module docstring)."""

    def __init__(
        self,
        study_dir: Path,
        slot: int,
        n_trials: int,
        write: Callable[[str], None],
        label: str | None = None,
    ) -> None:
        super().__init__(logging.INFO)
        self.study_dir, self.slot, self.n_trials, self.write = study_dir, slot, n_trials, write
        # Whom the lines name: "trial 2 of 3", or a study.confirm run's "trial 2 seed 1 (...)"
        self.label = label or trial_label(slot, n_trials)
        self.started: float | None = None
        self.epoch_seconds: list[float] = []
        self.best_here: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        context = getattr(record, "context", None) or {}
        kind = context.get("kind")
        if kind == "epoch_start":
            self.started = time.monotonic()
        elif kind == "epoch_end":
            try:
                self.write(self.line(context))
            except Exception:  # a progress line must never stop a trial
                self.handleError(record)
        elif kind == "trial_failed":  # in full: what failed and how to fix it
            self.write(f"{PREFIX}  {self.label}  {record.getMessage()}")
        elif kind == "pruned":
            self.write(
                f"{PREFIX}  {self.label}  pruned after epoch "
                f"{context['epoch']} (study.pruner); it keeps no checkpoint"
            )

    def line(self, context: dict[str, Any]) -> str:
        if self.started is not None:
            self.epoch_seconds.append(time.monotonic() - self.started)
            self.started = None
        epoch, epochs = context["epoch"], context.get("epochs") or context["epoch"]
        value, metric = context.get("value"), context.get("metric", "score")
        if value is not None and (self.best_here is None or value > self.best_here):
            self.best_here = value
        others = finished_reports(self.study_dir, skip_slot=self.slot)
        shown = "n/a" if value is None else f"{value:.3f}"
        return (
            f"{PREFIX}  {self.label}  epoch {epoch}/{epochs}  "
            f"{metric} {shown}  {self._best(others)}  "
            f"ETA {format_duration(self._eta(others, epoch, epochs))}"
        )

    def _best(self, others: list[dict[str, Any]]) -> str:
        scored = [
            (r["best_validation_score"], r["slot"])
            for r in others  # a pruned trial's score is not a result: it stopped early
            if r.get("best_validation_score") is not None and r.get("status") == "completed"
        ]
        if self.best_here is not None:
            scored.append((self.best_here, self.slot))
        if not scored:
            return "best n/a"
        value, slot = max(scored, key=lambda pair: (pair[0], -pair[1]))
        return f"best {value:.3f} ({trial_label(slot)})"

    def _eta(self, others: list[dict[str, Any]], epoch: int, epochs: int) -> float | None:
        """Mean epoch time so far in the study times the epochs still to run (this trial's
        epochs stand for those of the trials not started yet)."""
        seconds = list(self.epoch_seconds)
        total_seconds, total_epochs = sum(seconds), len(seconds)
        for report in others:
            trained = len(report.get("history") or [])
            if trained:
                total_seconds += (report.get("timings") or {}).get("train_seconds") or 0.0
                total_epochs += trained
        if not total_epochs:
            return None
        trials_left = max(self.n_trials - len(others) - 1, 0)
        epochs_left = (epochs - epoch) + trials_left * epochs
        return total_seconds / total_epochs * epochs_left
