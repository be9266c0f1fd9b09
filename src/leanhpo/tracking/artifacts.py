"""Folders as run artifacts and registered model versions: the Tracker's writes that are too
big, or too late in a study, for the spool. They go to MLflow now or raise TrackingUnavailable;
the caller keeps the folder on disk and tries again later (the export step, sync-tracking).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

# One upload request may carry a file of hundreds of MB: the write timeout (seconds) is for
# metric writes, not for this. A server that is down still fails at once (connection refused).
UPLOAD_TIMEOUT_S = 600.0


class ArtifactMixin:
    """Artifact folders and the model registry, for Tracker (it supplies client and uri)."""

    uri: str
    timeout: float

    if TYPE_CHECKING:

        @property
        def client(self) -> MlflowClient: ...

        def _server(self, timeout: float | None = None) -> AbstractContextManager[None]: ...

    def _uploading(self) -> AbstractContextManager[None]:
        """As every MLflow call, with a wait long enough for a model's files."""
        return self._server(max(self.timeout, UPLOAD_TIMEOUT_S))

    def run_tag(self, run_id: str, key: str) -> str | None:
        """A tag of a run as the server holds it now (TrackingUnavailable while it is down)."""
        with self._server():
            return self.client.get_run(run_id).data.tags.get(key)

    def upload_folder(self, run_id: str, folder: Path, artifact_path: str) -> str:
        """Upload a folder's files under `artifact_path` of the run (files already there are
        overwritten, so a repeated upload leaves one copy); return the artifact URI."""
        with self._server():
            root = self.client.get_run(run_id).info.artifact_uri
        with self._uploading():
            self.client.log_artifacts(run_id, str(folder), artifact_path)
        return f"{root.rstrip('/')}/{artifact_path}"

    def register_version(self, name: str, run_id: str, source: str, tags: dict[str, str]) -> str:
        """The version of registered model `name` from this run whose tags hold `tags`, made if
        there is none (and the registered model too); return its version number."""
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
            created = self.client.create_model_version(name, source, run_id=run_id, tags=tags)
            return str(created.version)
