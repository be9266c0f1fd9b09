"""The Tracker: every MLflow write of a trial or of the study, exactly once, through outages.

A run is found again by its tags (never by a remembered id alone), so a kill between creating a
run and recording its id cannot create a second one. A write goes to MLflow when it answers
within write_timeout_s; otherwise it is appended to the study's spool and training goes on.
While MLflow is down the server is tried again at most once per probe interval, so an epoch's
writes do not each wait the full timeout. When it answers again, the spool is replayed before
any new write, in order, and each entry is deleted only once its upload is confirmed.

A run created while MLflow is down gets a stable placeholder id ("pending-" + a hash of the
experiment and tags) that every method accepts. Placeholders are turned into runs only under the
spool's drain lock, with find-by-tags-or-create, so two processes never make two runs of one.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leanhpo.logs import mask_secrets
from leanhpo.tracking.artifacts import ArtifactMixin
from leanhpo.tracking.errors import (
    AUTH_STATUS,
    TrackingUnavailable,
    bounded_http,
    classify,
    client_uri,
    http_status,
    is_refusal,
    make_client,
    reason_of,
)
from leanhpo.tracking.replay import ReplayMixin, warn_dead
from leanhpo.tracking.spool import PendingRun, Spool, is_placeholder, now_ms, placeholder_id
from leanhpo.tracking.upload import StepCache, flatten, upload

LOG = logging.getLogger("leanhpo.tracking")
DEFAULT_WRITE_TIMEOUT_S = 5.0
MIN_PROBE_INTERVAL_S = 1.0
MAX_PARAM_CHARS = 6000
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
# The MLflow 3 UI reads the kind of an experiment from this tag; without it the experiment may
# open as a GenAI one (traces, "evaluation runs"). A kind set by hand is left as it is.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
LOCAL_SCHEMES = ("sqlite:", "file:", "postgresql", "mysql", "mssql")


class Tracker(ReplayMixin, ArtifactMixin):
    def __init__(
        self,
        uri: str,
        experiment: str,
        artifact_root: Path | None = None,
        spool_path: Path | None = None,
        write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
    ) -> None:
        """Without a spool_path an outage raises TrackingUnavailable (nothing is buffered).
        Never fails because the server is down: the experiment is then looked up later."""
        self.uri = client_uri(uri)
        self.experiment = experiment
        self.artifact_root = artifact_root
        self.timeout = write_timeout_s
        self._client: MlflowClient | None = None
        self.spool = Spool(spool_path) if spool_path is not None else None
        self._spool_cache: dict[Path, Spool] = {}  # other hosts' spool files, read to merge
        self.experiment_id: str | None = None
        self._points: StepCache = {}
        self._real: dict[str, str] = {}  # placeholder -> MLflow run id, once known
        self._offline_reason: str | None = None
        self._next_probe = 0.0
        self._max_wait_s = 0.0
        self.replayed_runs: Counter[str] = Counter()
        try:
            with self._server():
                self.experiment_id = self._experiment_id(experiment)
        except TrackingUnavailable as error:
            self._go_offline(error)

    # --- reaching the server -----------------------------------------------------------------

    @property
    def client(self) -> MlflowClient:
        """Made on first use, inside a bounded call: with a database URI, making it connects."""
        if self._client is None:
            self._client = make_client(self.uri, self.timeout)
        return self._client

    @contextmanager
    def _server(self, timeout: float | None = None) -> Iterator[None]:
        """MLflow calls with a bounded wait (`timeout`, default tracking.write_timeout_s);
        failures come out classified (errors.classify)."""
        with bounded_http(timeout if timeout is not None else self.timeout):
            try:
                yield
            except Exception as error:
                converted = classify(error, self.uri)
                if converted is error:
                    raise
                raise converted from error
        self._offline_reason = None

    def _may_try_server(self) -> bool:
        return self._offline_reason is None or time.monotonic() >= self._next_probe

    def _go_offline(self, error: TrackingUnavailable) -> None:
        self._next_probe = time.monotonic() + max(self.timeout, MIN_PROBE_INTERVAL_S)
        if self._offline_reason is None and self.spool is not None:
            LOG.warning(
                "MLflow at %s did not answer (%s); buffering its writes in %s until it does",
                mask_secrets(self.uri),
                error,
                self.spool.path,
            )
        self._offline_reason = str(error)

    def _require_spool(self) -> None:
        if self.spool is None:
            raise TrackingUnavailable(
                f"MLflow at {mask_secrets(self.uri)} is down ({self._offline_reason}) and this"
                " tracker has no spool"
            )

    def _timed(self, started: float) -> None:
        self._max_wait_s = max(self._max_wait_s, time.monotonic() - started)

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            experiment_id = str(found.experiment_id)
            if EXPERIMENT_KIND_TAG not in found.tags:  # made by hand or by an older leanhpo
                self._tag_kind(experiment_id)
        else:
            experiment_id = self._create_experiment(name)
        if name == self.experiment:
            self.experiment_id = experiment_id
        return experiment_id

    def _tag_kind(self, experiment_id: str) -> None:
        """Best effort on an experiment someone else made: a user who may write runs but not
        the experiment's tags (HTTP 403) must still be told so at their first write, as
        before, not here; and the tag only labels the experiment."""
        try:
            self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        except MlflowException as error:
            if http_status(error) not in AUTH_STATUS:
                raise
            LOG.info("experiment %s: kind tag not set (HTTP %s)", experiment_id, http_status(error))

    def _create_experiment(self, name: str) -> str:
        location = None
        # A database store would put artifacts in ./mlruns of whatever folder runs the job;
        # keep them beside the study instead.
        if self.artifact_root is not None and self.uri.startswith(LOCAL_SCHEMES):
            self.artifact_root.mkdir(parents=True, exist_ok=True)
            location = self.artifact_root.resolve().as_uri()
        try:
            return str(
                self.client.create_experiment(
                    name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND}
                )
            )
        except MlflowException:  # created concurrently by another job (which tags it too)
            again = self.client.get_experiment_by_name(name)
            if again is None:
                raise
            return str(again.experiment_id)

    # --- runs ----------------------------------------------------------------------------------

    def _search(self, experiment_id: str, tags: dict[str, str]) -> str | None:
        clauses = " and ".join(f"tags.`{k}` = '{v}'" for k, v in sorted(tags.items()))
        runs = self.client.search_runs(
            [experiment_id],
            filter_string=clauses,
            order_by=["attributes.start_time ASC"],
            max_results=5,
        )
        if len(runs) > 1:
            LOG.warning("found %d MLflow runs with tags %s; using the oldest", len(runs), tags)
        return runs[0].info.run_id if runs else None

    def _find_or_create(self, run: PendingRun, parent: str | None) -> str:
        if run.experiment == self.experiment and self.experiment_id is not None:
            experiment_id = self.experiment_id
        else:
            experiment_id = self._experiment_id(run.experiment)
        existing = self._search(experiment_id, run.tags)
        if existing is not None:
            return existing
        all_tags = {**run.tags, RUN_NAME_TAG: run.name}
        if parent:
            all_tags[PARENT_TAG] = parent
        created = self.client.create_run(
            experiment_id, start_time=run.created_ms, tags=all_tags, run_name=run.name
        )
        return str(created.info.run_id)

    def _known_real_id(self, run_id: str) -> str | None:
        """The MLflow id of a run, or None for a placeholder not yet turned into a run."""
        if not is_placeholder(run_id):
            return run_id
        if run_id not in self._real:
            real = self._mapped(run_id)
            if real is not None:
                self._real[run_id] = real
        return self._real.get(run_id)

    def real_run_id(self, run_id: str) -> str:
        """The MLflow id behind a placeholder once its run exists (else the id as given), for
        callers to store in state.json / study.json after a drain."""
        return self._known_real_id(run_id) or run_id

    def find_run(self, tags: dict[str, str]) -> str | None:
        """The oldest run with these tags; while MLflow is down, the placeholder that stands for
        them if this study made one (TrackingUnavailable if it did not)."""
        placeholder = placeholder_id(self.experiment, tags)
        if self._may_try_server():
            try:
                with self._server():
                    return self._search(
                        self.experiment_id or self._experiment_id(self.experiment), tags
                    )
            except TrackingUnavailable as error:
                self._go_offline(error)
        if self._spool_with_run(placeholder) is not None:
            return self._known_real_id(placeholder) or placeholder
        raise TrackingUnavailable(f"MLflow is down ({self._offline_reason}) and has no run {tags}")

    def find_or_create_run(
        self, tags: dict[str, str], name: str, parent_run_id: str | None = None
    ) -> str:
        """The run with these tags, made if absent; a placeholder id while MLflow is down (or
        while the parent is itself still a placeholder)."""
        started = time.monotonic()
        run = PendingRun(
            placeholder_id(self.experiment, tags),
            self.experiment,
            name,
            tags,
            parent_run_id,
            now_ms(),
        )
        try:
            found = self._find_or_create_now(run)
            if found is not None:
                return found
            self._require_spool()
            assert self.spool is not None
            self.spool.add_run(run)
            return run.placeholder
        finally:
            self._timed(started)

    def _find_or_create_now(self, run: PendingRun) -> str | None:
        if not self._may_try_server():
            return None
        try:
            with self._server():
                self._catch_up(deadline=time.monotonic() + self.timeout)
                known = self._known_real_id(run.placeholder)
                if known is not None:
                    return known
                if self._spool_with_run(run.placeholder) is not None:
                    return None  # another process is turning it into a run right now
                parent = self._known_real_id(run.parent) if run.parent else None
                if run.parent and parent is None:
                    return None
                return self._find_or_create(run, parent)
        except TrackingUnavailable as error:
            self._go_offline(error)
            return None

    # --- writes --------------------------------------------------------------------------------

    def _write(self, run_id: str, kind: str, payload: dict[str, Any]) -> int | None:
        """Upload now, or spool; return the upload's result, or None when spooled."""
        started = time.monotonic()
        try:
            if self._may_try_server():
                try:
                    with self._server():
                        self._catch_up(deadline=started + self.timeout)
                        real = self._known_real_id(run_id)
                        # Behind spooled entries of the same run, a write keeps its place;
                        # and one whose budget went on replaying waits for the next write.
                        if (
                            real is not None
                            and not any(s.holds_entries_for(real) for s in self.spools())
                            and time.monotonic() < started + self.timeout
                        ):
                            return self._upload_or_bury(real, kind, payload)
                except TrackingUnavailable as error:
                    self._go_offline(error)
            self._require_spool()
            assert self.spool is not None
            self.spool.append(self._known_real_id(run_id) or run_id, kind, payload)
            return None
        finally:
            self._timed(started)

    def _upload_or_bury(self, run_id: str, kind: str, payload: dict[str, Any]) -> int | None:
        """A live upload; one MLflow refuses for good (its run deleted in the UI, say) becomes
        a dead letter at once, so training goes on."""
        try:
            return upload(self.client, run_id, kind, [payload], self._points)
        except MlflowException as error:
            if self.spool is None or not is_refusal(error, self.uri):
                raise
            self.spool.bury([self.spool.append(run_id, kind, payload)], reason_of(error))
            warn_dead(sum(spool.dead_count() for spool in self.spools()))
            return None

    def log_metrics_once(self, run_id: str, metrics: dict[str, float], step: int) -> int:
        """Log every finite metric whose (key, step) the run does not hold yet; return the count
        (while spooled: the points this process had not logged yet). Each point keeps the time
        of this call."""
        step = int(step)
        cache_id = self._known_real_id(run_id) or run_id
        values = {
            key: float(value)
            for key, value in sorted(metrics.items())
            if value is not None
            and math.isfinite(float(value))
            and step not in self._points.get((cache_id, key), set())
        }
        if not values:
            return 0
        logged = self._write(run_id, "metrics", {"step": step, "ts": now_ms(), "values": values})
        if logged is not None:
            return logged
        for key in values:  # spooled: this process will not log these points again
            self._points.setdefault((cache_id, key), set()).add(step)
        return len(values)

    def log_params_once(self, run_id: str, params: dict[str, Any]) -> None:
        """Log params not yet on the run (masked, cut to MLflow's length)."""
        texts = {
            key: mask_secrets(str(value))[:MAX_PARAM_CHARS]
            for key, value in flatten(params).items()
        }
        if texts:
            self._write(run_id, "params", {"params": texts})

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        if tags:
            masked = {key: mask_secrets(str(value)) for key, value in tags.items()}
            self._write(run_id, "tags", {"tags": masked})

    def log_dict(self, run_id: str, obj: dict[str, Any], artifact_file: str) -> None:
        self._write(run_id, "dict", {"obj": obj, "file": artifact_file})

    def set_status(self, run_id: str, status: str) -> None:
        """RUNNING, or a terminal status (FINISHED, FAILED, KILLED) with its end time."""
        self._write(run_id, "status", {"status": status, "ts": now_ms()})

    # --- reads ---------------------------------------------------------------------------------

    def metric_history(self, run_id: str) -> dict[str, list[tuple[int, float]]]:
        """Every (step, value) of every metric the server holds for a run, for audits and
        tests (call drain() first to include spooled points)."""
        real = self._known_real_id(run_id)
        if real is None:
            raise TrackingUnavailable(f"run {run_id} is not in MLflow yet; drain the spool first")
        with self._server():
            keys = self.client.get_run(real).data.metrics
            return {
                key: sorted(
                    (int(m.step), float(m.value)) for m in self.client.get_metric_history(real, key)
                )
                for key in keys
            }

    def run_name(self, run_id: str) -> str:
        """A run's name as MLflow shows it, or "" when MLflow does not say (for messages)."""
        try:
            with self._server():
                return str(self.client.get_run(run_id).info.run_name or "")
        except (TrackingUnavailable, MlflowException):
            return ""

    def spool_stats(self) -> dict[str, Any]:
        """For the trial report: entries still waiting and dead letters (in every spool file of
        the study), the spool files' size, the longest wait of one Tracker call in this
        process, and whether MLflow was answering at the last call."""
        spools = self.spools()
        return {
            "pending": sum(spool.pending_count() for spool in spools),
            "dead": sum(spool.dead_count() for spool in spools),
            "bytes": sum(spool.size_bytes() for spool in spools),
            "max_wait_s": round(self._max_wait_s, 3),
            "online": self._offline_reason is None,
        }
