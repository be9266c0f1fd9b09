"""Replaying the spool: first the runs created while MLflow was down (parents before children),
then the entries in the order they were written, a group of one run's consecutive entries of
one kind at a time. A group's rows are deleted only after its upload returned, and every upload
is idempotent (metrics through the (key, step) check against the server's history, params skip
present keys, tags/status/artifacts overwrite), so a drain killed anywhere is simply repeated.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from mlflow.tracking import MlflowClient

from leanhpo.logs import mask_secrets
from leanhpo.tracking.errors import TrackingUnavailable
from leanhpo.tracking.spool import Entry, PendingRun, Spool
from leanhpo.tracking.upload import StepCache, upload

LOG = logging.getLogger("leanhpo.tracking")
DRAIN_LOCK_WAIT_S = 30.0  # an explicit drain waits this long for another process's drain
ENTRIES_PER_READ = 200
MAX_GROUP = 100  # entries uploaded (and deleted) together


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _groups(entries: list[Entry]) -> Iterator[list[Entry]]:
    group: list[Entry] = []
    for entry in entries:
        if group and (
            (entry.run_ref, entry.kind) != (group[0].run_ref, group[0].kind)
            or len(group) >= MAX_GROUP
        ):
            yield group
            group = []
        group.append(entry)
    if group:
        yield group


class ReplayMixin:
    """The drain half of Tracker (split off to keep files small); it uses the Tracker's
    connection helpers declared below."""

    uri: str
    experiment: str
    experiment_id: str | None
    spool: Spool | None
    _real: dict[str, str]
    _replayed: int = 0
    replayed_runs: Counter[str]

    if TYPE_CHECKING:

        @property
        def client(self) -> MlflowClient: ...

        def _server(self) -> AbstractContextManager[None]: ...

        def _go_offline(self, error: TrackingUnavailable) -> None: ...

        def _known_real_id(self, run_id: str) -> str | None: ...

        def _find_or_create(self, run: PendingRun, parent: str | None) -> str: ...

        def _experiment_id(self, name: str) -> str: ...

    def drain(self, within_s: float | None = None) -> int:
        """Replay the whole spool now, or what `within_s` seconds allow (plus at most one
        write_timeout_s for the upload under way); return how many entries (runs included) went
        up. Leaves the rest, without raising, if MLflow is still down; waits up to 30 s (at most
        within_s) for a drain running in another process. Also sets experiment_id if it was
        still None. replayed_runs counts, per MLflow run id, the entries this tracker replayed."""
        before = self._replayed
        deadline = None if within_s is None else time.monotonic() + within_s
        lock_wait_s = DRAIN_LOCK_WAIT_S if within_s is None else min(within_s, DRAIN_LOCK_WAIT_S)
        try:
            with self._server():
                if self.spool is not None and self.spool.has_pending():
                    self._drain(deadline, lock_wait_s)
                if self.experiment_id is None:  # opened while MLflow was down
                    self._experiment_id(self.experiment)
        except TrackingUnavailable as error:
            self._go_offline(error)
        return self._replayed - before

    def _catch_up(self, deadline: float) -> None:
        """Before a live write: replay what the spool holds, for at most the write's budget,
        and not at all if another process is draining (it will replay ours too)."""
        if self.spool is not None and self.spool.has_pending():
            self._drain(deadline, lock_wait_s=0.0)

    def _drain(self, deadline: float | None, lock_wait_s: float) -> None:
        assert self.spool is not None
        before = self._replayed
        with self.spool.drain_lock(lock_wait_s) as held:
            if not held:
                return
            try:
                if self._replay_runs(deadline):
                    self._replay_entries(deadline)
            finally:
                if self._replayed > before:
                    LOG.info(
                        "replayed %d buffered MLflow writes to %s; %d still buffered",
                        self._replayed - before,
                        mask_secrets(self.uri),
                        self.spool.pending_count(),
                    )

    def _replay_runs(self, deadline: float | None) -> bool:
        assert self.spool is not None
        for placeholder in self.spool.unmapped_runs():
            if _past(deadline):
                return False
            self._resolve(placeholder)
        return True

    def _resolve(self, run_id: str) -> str:
        """The MLflow id for a run id or placeholder, creating the run (find by tags first, so
        a drain killed between creating and recording it makes no second one). Only under the
        drain lock."""
        known = self._known_real_id(run_id)
        if known is not None:
            return known
        assert self.spool is not None
        run = self.spool.pending_run(run_id)
        if run is None:
            raise RuntimeError(
                f"MLflow run {run_id} is not in the spool {self.spool.path}; was it deleted?"
            )
        parent = self._resolve(run.parent) if run.parent else None
        real = self._find_or_create(run, parent)
        self.spool.map_run(run_id, real)
        self._real[run_id] = real
        self._replayed += 1
        return real

    def _replay_entries(self, deadline: float | None) -> None:
        assert self.spool is not None
        cache: StepCache = {}  # fresh from the server: what a killed drain uploaded counts
        while entries := self.spool.next_entries(ENTRIES_PER_READ):
            for group in _groups(entries):
                if _past(deadline):
                    return
                real = self._resolve(group[0].run_ref)
                upload(self.client, real, group[0].kind, [e.payload for e in group], cache)
                self.spool.delete([e.seq for e in group])
                self._replayed += len(group)
                self.replayed_runs[real] += len(group)
