"""MLflow tracking with exactly-once metric points.

A run is found again by its tags (never by a remembered id alone), so a kill between creating a
run and recording its id cannot create a second one. A metric point (key, step) is logged only
if the run does not already hold it: the run's history is read once per key, then kept in memory,
because only the process holding the trial's lock writes to that run.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leanhpo.logs import mask_secrets

LOG = logging.getLogger(__name__)
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
MAX_PARAM_CHARS = 6000
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
LOCAL_SCHEMES = ("sqlite:", "file:", "postgresql", "mysql", "mssql")


SPOOL_FILE = "tracking_spool.sqlite"


def open_tracker(tracking: dict[str, Any], study_dir: Path) -> Tracker:
    """The study's tracker: every MLflow write of a trial or of the study goes through it.

    A database store would put artifacts in ./mlruns of whatever folder runs the job, so they
    are kept beside the studies, in experiments/mlartifacts."""
    return Tracker(tracking["uri"], tracking["experiment"], study_dir.parent / "mlartifacts")


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class Tracker:
    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None) -> None:
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self._experiment(experiment, artifact_root)
        self._points: dict[tuple[str, str], set[int]] = {}

    def _experiment(self, name: str, artifact_root: Path | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return str(found.experiment_id)
        location = None
        # A database store would put artifacts in ./mlruns of whatever folder runs the job;
        # keep them beside the study instead.
        if artifact_root is not None and self.uri.startswith(LOCAL_SCHEMES):
            artifact_root.mkdir(parents=True, exist_ok=True)
            location = artifact_root.resolve().as_uri()
        try:
            return str(self.client.create_experiment(name, artifact_location=location))
        except MlflowException:  # created concurrently by another job
            again = self.client.get_experiment_by_name(name)
            if again is None:
                raise
            return str(again.experiment_id)

    def find_run(self, tags: dict[str, str]) -> str | None:
        clauses = " and ".join(f"tags.`{k}` = '{v}'" for k, v in sorted(tags.items()))
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=clauses,
            order_by=["attributes.start_time ASC"],
            max_results=5,
        )
        if len(runs) > 1:
            LOG.warning("found %d MLflow runs with tags %s; using the oldest", len(runs), tags)
        return runs[0].info.run_id if runs else None

    def find_or_create_run(
        self, tags: dict[str, str], name: str, parent_run_id: str | None = None
    ) -> str:
        existing = self.find_run(tags)
        if existing is not None:
            return existing
        all_tags = {**tags, RUN_NAME_TAG: name}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        return str(run.info.run_id)

    def _known_steps(self, run_id: str, key: str, present: set[str]) -> set[int]:
        cache_key = (run_id, key)
        if cache_key not in self._points:
            steps: set[int] = set()
            if key in present:
                steps = {int(m.step) for m in self.client.get_metric_history(run_id, key)}
            self._points[cache_key] = steps
        return self._points[cache_key]

    def log_metrics_once(self, run_id: str, metrics: dict[str, float], step: int) -> int:
        """Log every finite metric whose (key, step) the run does not hold yet; return the count."""
        present: set[str] | None = None
        batch: list[Metric] = []
        now = int(time.time() * 1000)
        for key, value in sorted(metrics.items()):
            if value is None or not math.isfinite(float(value)):
                continue
            if (run_id, key) not in self._points and present is None:
                present = set(self.client.get_run(run_id).data.metrics)
            if step in self._known_steps(run_id, key, present or set()):
                continue
            batch.append(Metric(key=key, value=float(value), timestamp=now, step=int(step)))
        for start in range(0, len(batch), MAX_BATCH):
            self.client.log_batch(
                run_id, metrics=batch[start : start + MAX_BATCH], synchronous=True
            )
        for metric in batch:
            self._points[(run_id, metric.key)].add(metric.step)
        return len(batch)

    def log_params_once(self, run_id: str, params: dict[str, Any]) -> None:
        """Log params not yet on the run. MLflow params are immutable, so a changed value is
        reported and skipped rather than crashing a resumed trial."""
        existing = self.client.get_run(run_id).data.params
        fresh: list[Param] = []
        for key, value in sorted(flatten(params).items()):
            text = mask_secrets(str(value))[:MAX_PARAM_CHARS]
            if key in existing:
                if existing[key] != text:
                    LOG.warning(
                        "MLflow param %s already logged as %r; not changing it", key, existing[key]
                    )
                continue
            fresh.append(Param(key, text))
        for start in range(0, len(fresh), 100):
            self.client.log_batch(run_id, params=fresh[start : start + 100], synchronous=True)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        items = [RunTag(k, mask_secrets(str(v))) for k, v in tags.items()]
        if items:
            self.client.log_batch(run_id, tags=items, synchronous=True)

    def log_dict(self, run_id: str, obj: dict[str, Any], artifact_file: str) -> None:
        self.client.log_dict(run_id, obj, artifact_file)

    def set_status(self, run_id: str, status: str) -> None:
        """RUNNING, or a terminal status (FINISHED, FAILED, KILLED) with its end time."""
        if status == "RUNNING":
            self.client.update_run(run_id, status=status)
        else:
            self.client.set_terminated(run_id, status=status)

    def metric_history(self, run_id: str) -> dict[str, list[tuple[int, float]]]:
        """Every (step, value) of every metric of a run, for audits and tests."""
        keys = self.client.get_run(run_id).data.metrics
        return {
            key: sorted(
                (int(m.step), float(m.value)) for m in self.client.get_metric_history(run_id, key)
            )
            for key in keys
        }
