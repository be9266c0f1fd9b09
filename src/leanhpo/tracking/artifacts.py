"""Logged models and registered model versions: the Tracker's writes that are too big, or too
late in a study, for the spool. They go to MLflow now or raise
TrackingUnavailable; the caller keeps the folder on disk and tries again later (the export step,
sync-tracking).

A logged model (MLflow 3's LoggedModel) is what the UI lists under a run's "Logged models" and
what `runs:/<run>/<name>` resolves to when the run's own artifacts hold no `<name>` folder. It is
made as `mlflow.pyfunc.log_model` makes one (created PENDING with the run as its source, files
uploaded, finalized READY, recorded as an output of the run), but step by step through the
client, so that each step is bounded like every Tracker call and a rerun finds the model by its
tags instead of making a second one.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.entities import LoggedModel, LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

# One upload request may carry a file of hundreds of MB: the write timeout (seconds) is for
# metric writes, not for this. A server that is down still fails at once (connection refused).
UPLOAD_TIMEOUT_S = 600.0


class ArtifactMixin:
    """Logged models and the model registry, for Tracker (it supplies client and uri)."""

    uri: str
    timeout: float

    if TYPE_CHECKING:

        @property
        def client(self) -> MlflowClient: ...

        def _server(self, timeout: float | None = None) -> AbstractContextManager[None]: ...

    def _uploading(self) -> AbstractContextManager[None]:
        """As every MLflow call, with a wait long enough for a model's files."""
        return self._server(max(self.timeout, UPLOAD_TIMEOUT_S))

    def find_logged_model(self, run_id: str, name: str, tags: dict[str, str]) -> LoggedModel | None:
        """The newest logged model `name` of this run whose tags hold `tags`, in any status."""
        clauses = [f"name = '{name}'", f"source_run_id = '{run_id}'"]
        clauses += [f"tags.`{key}` = '{value}'" for key, value in sorted(tags.items())]
        with self._server():
            experiment_id = self.client.get_run(run_id).info.experiment_id
            found = self.client.search_logged_models(
                [experiment_id], filter_string=" AND ".join(clauses), max_results=1
            )  # newest first: MLflow's default order
        return found[0] if found else None

    def create_logged_model(self, run_id: str, name: str, tags: dict[str, str]) -> LoggedModel:
        """A new logged model `name` of this run, PENDING until upload_logged_model."""
        with self._server():
            experiment_id = self.client.get_run(run_id).info.experiment_id
            return self.client.create_logged_model(
                experiment_id, name=name, source_run_id=run_id, tags=tags
            )

    def upload_logged_model(self, model_id: str, folder: Path) -> None:
        """Upload an MLflow model folder as the logged model's files (a repeated upload
        overwrites them), then mark the model READY."""
        with self._uploading():
            self.client.log_model_artifacts(model_id, str(folder))
        with self._server():
            self.client.finalize_logged_model(model_id, LoggedModelStatus.READY)

    def link_model_output(self, run_id: str, model_id: str) -> bool:
        """Record the logged model as an output of the run, once; return whether it was new.
        Each output gets the next step, so the newest model has the largest (MLflow registers
        the largest-step model of `runs:/<run>/<name>`)."""
        with self._server():
            outputs = self.client.get_run(run_id).outputs
            linked = list(outputs.model_outputs) if outputs is not None else []
            if any(output.model_id == model_id for output in linked):
                return False
            step = max((output.step for output in linked), default=-1) + 1
            self.client.log_outputs(run_id, [LoggedModelOutput(model_id, step=step)])
            return True

    def register_version(
        self,
        name: str,
        run_id: str,
        source: str,
        tags: dict[str, str],
        model_id: str | None = None,
    ) -> str:
        """The version of registered model `name` from this run whose tags hold `tags`, made if
        there is none (and the registered model too); return its version number. `model_id`
        ties the version to a logged model (`source` being where its files are)."""
        with self._server():
            try:
                self.client.create_registered_model(name)
            except MlflowException as error:
                if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
            for version in self.client.search_model_versions(
                f"name = '{name}' and run_id = '{run_id}'"
            ):
                if all(version.tags.get(k) == v for k, v in tags.items()):
                    return str(version.version)
            created = self.client.create_model_version(
                name, source, run_id=run_id, tags=tags, model_id=model_id
            )
            return str(created.version)
