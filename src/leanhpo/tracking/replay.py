"""Replaying the spool: first the runs created while MLflow was down (parents before children),
then the entries in the order they were written, a group of one run's consecutive entries of
one kind at a time. A group's rows are deleted only after its upload returned, and every upload
is idempotent (metrics through the (key, step) check against the server's history, params skip
present keys, tags/status/artifacts overwrite), so a drain killed anywhere is simply repeated.

A study folder holds one spool file per host. A job replays its own host's file (and the single
file of older versions); `sync-tracking` replays them all (drain(every_host=True)), each under
its own drain lock, in name order: so no SQLite file is written from two machines while the
study runs. A placeholder is looked up in whichever file made it (a trial spooled on one host
may have a parent run spooled on another); one made on another host and not yet a run is found
or created by its tags, and the mapping kept in this host's file. A group MLflow refuses for good
(errors.is_refusal) becomes a dead letter, and the replay goes on with the rest.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.tracking import MlflowClient

from leanhpo.commands import current_invocation
from leanhpo.logs import mask_secrets
from leanhpo.tracking.errors import TrackingUnavailable, is_refusal, reason_of
from leanhpo.tracking.spool import (
    LEGACY_SPOOL_FILE,
    Entry,
    PendingRun,
    Spool,
    backlog_of,
    spool_files,
)
from leanhpo.tracking.upload import StepCache, upload

LOG = logging.getLogger("leanhpo.tracking")
DRAIN_LOCK_WAIT_S = 30.0  # an explicit drain waits this long for another process's drain
ENTRIES_PER_READ = 200
MAX_GROUP = 100  # entries uploaded (and deleted) together
_warned_dead = False  # the dead-letter warning is given once per process


class LostPlaceholder(RuntimeError):
    """A placeholder id that no spool file holds any more (the spool was emptied or deleted):
    its run can be made again only from the study's files (study.runids)."""


def warn_dead(count: int) -> None:
    global _warned_dead
    if count and not _warned_dead:
        _warned_dead = True
        sync = current_invocation().leanhpo("sync-tracking")
        LOG.warning(
            "%d MLflow spool entr%s refused by MLflow for good and set aside (dead letters);"
            " training goes on. See them with `%s --show-dead`, then `%s --retry-dead` (after"
            " restoring the run) or `%s --drop-dead`",
            count,
            "y was" if count == 1 else "ies were",
            sync,
            sync,
            sync,
        )


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
    _spool_cache: dict[Path, Spool]
    busy: Path | None = None  # the spool file whose drain lock another process held
    _every_host: bool = False  # this drain may write other hosts' spool files

    if TYPE_CHECKING:

        @property
        def client(self) -> MlflowClient: ...

        def _server(self) -> AbstractContextManager[None]: ...

        def _go_offline(self, error: TrackingUnavailable) -> None: ...

        def _known_real_id(self, run_id: str) -> str | None: ...

        def _find_or_create(self, run: PendingRun, parent: str | None) -> str: ...

        def _experiment_id(self, name: str) -> str: ...

    # --- the study's spool files -------------------------------------------------------------

    def spools(self) -> list[Spool]:
        """Every spool file of the study folder, this host's included (it writes only there)."""
        if self.spool is None:
            return []
        found = []
        for path in spool_files(self.spool.path.parent, self.spool.path):
            if path == self.spool.path:
                found.append(self.spool)
            else:
                found.append(self._spool_cache.setdefault(path, Spool(path)))
        return found

    def _has_pending(self) -> bool:
        return any(spool.has_pending() for spool in self._drained())

    def _drained(self) -> list[Spool]:
        """The spool files this drain replays: this host's and the legacy shared one, or with
        every_host all of them."""
        return [s for s in self.spools() if self._writable(s)]

    def _writable(self, spool: Spool) -> bool:
        return self._every_host or spool is self.spool or spool.path.name == LEGACY_SPOOL_FILE

    def _spool_with_run(self, placeholder: str) -> Spool | None:
        return next((s for s in self.spools() if s.has_run(placeholder)), None)

    def _mapped(self, placeholder: str) -> str | None:
        return next(filter(None, (s.real_id(placeholder) for s in self.spools())), None)

    def remember_run(self, run: PendingRun, real: str) -> None:
        """Record that a placeholder no spool file held any more is the MLflow run `real`
        (found or made again by its tags), so entries spooled under it, dead ones included,
        reach that run."""
        if self.spool is not None:
            self.spool.add_run(run)
            self.spool.map_run(run.placeholder, real)
        self._real[run.placeholder] = real

    def holds_run(self, placeholder: str) -> bool:
        """Whether a spool file of the study still holds this placeholder's run."""
        return self._spool_with_run(placeholder) is not None

    def backlog(self) -> dict[str, int]:
        """What the study's spool files still hold (spool.backlog_of): entries waiting, the
        distinct runs they concern (or placeholders still to create), and dead letters."""
        return backlog_of(self.spools())

    def dead_letters(self) -> list[tuple[Path, list[Any]]]:
        """(spool file, its dead letters) for every file that holds any."""
        found = [(s.path, s.dead_entries()) for s in self.spools()]
        return [(path, dead) for path, dead in found if dead]

    def retry_dead(self) -> int:
        """Every dead letter back into its spool, in its original place (drain() next)."""
        return sum(s.retry_dead() for s in self.spools())

    def drop_dead(self) -> int:
        return sum(s.drop_dead() for s in self.spools())

    def drain(self, within_s: float | None = None, every_host: bool = False) -> int:
        """Replay this host's spool file now (every host's with every_host), or what `within_s`
        seconds allow (plus at most one write_timeout_s for the upload under way); return how
        many entries (runs included) went up. Leaves the rest, without raising, if MLflow is
        still down; waits up to DRAIN_LOCK_WAIT_S (at most within_s) for a drain of a file
        running in another process, then sets `busy` to that file. Also sets experiment_id if
        it was still None. replayed_runs counts, per MLflow run id, the entries this tracker
        replayed."""
        before = self._replayed
        deadline = None if within_s is None else time.monotonic() + within_s
        lock_wait_s = DRAIN_LOCK_WAIT_S if within_s is None else min(within_s, DRAIN_LOCK_WAIT_S)
        self.busy = None
        self._every_host = every_host
        try:
            with self._server():
                if self._has_pending():
                    self._drain(deadline, lock_wait_s)
                if self.experiment_id is None:  # opened while MLflow was down
                    self._experiment_id(self.experiment)
        except TrackingUnavailable as error:
            self._go_offline(error)
        finally:
            self._every_host = False
        return self._replayed - before

    def _catch_up(self, deadline: float) -> None:
        """Before a live write: replay what the spool holds, for at most the write's budget,
        and not at all if another process is draining (it will replay ours too)."""
        if self._has_pending():
            self._drain(deadline, lock_wait_s=0.0)

    def _drain(self, deadline: float | None, lock_wait_s: float) -> None:
        before = self._replayed
        try:
            for spool in self._drained():
                if not spool.has_pending():
                    continue
                with spool.drain_lock(lock_wait_s) as held:
                    if not held:
                        self.busy = spool.path
                        continue
                    if not self._replay_runs(spool, deadline):
                        return
                    self._replay_entries(spool, deadline)
        finally:
            if self._replayed > before:
                LOG.info(
                    "replayed %d buffered MLflow writes to %s; %d still buffered",
                    self._replayed - before,
                    mask_secrets(self.uri),
                    sum(spool.pending_count() for spool in self.spools()),
                )
            warn_dead(sum(spool.dead_count() for spool in self.spools()))

    def _replay_runs(self, spool: Spool, deadline: float | None) -> bool:
        for placeholder in spool.unmapped_runs():
            if _past(deadline):
                return False
            try:
                # Known already when another host's file holds the mapping: record it here too.
                spool.map_run(placeholder, self._resolve(placeholder))
            except Exception as error:
                if not self._refused(error):
                    raise
                spool.bury_run(placeholder, reason_of(error))
        return True

    def _refused(self, error: Exception) -> bool:
        return isinstance(error, LostPlaceholder) or is_refusal(error, self.uri)

    def _resolve(self, run_id: str) -> str:
        """The MLflow id for a run id or placeholder, creating the run (find by tags first, so
        a drain killed between creating and recording it makes no second one). Only under the
        drain lock."""
        known = self._known_real_id(run_id)
        if known is not None:
            return known
        holder = self._spool_with_run(run_id)
        run = holder.pending_run(run_id) if holder is not None else None
        if holder is None or run is None:
            raise LostPlaceholder(
                f"MLflow run {run_id} is in no spool file of {self.spool_folder}: the spool was"
                " emptied or deleted since; the study's own files name it again (`sync-tracking`"
                " re-creates it), then `sync-tracking --retry-dead`"
            )
        parent = self._resolve(run.parent) if run.parent else None
        real = self._find_or_create(run, parent)
        if not self._writable(holder):  # another host's file: keep the mapping in ours
            assert self.spool is not None
            self.spool.add_run(run)
            holder = self.spool
        holder.map_run(run_id, real)
        self._real[run_id] = real
        self._replayed += 1
        return real

    @property
    def spool_folder(self) -> Path | None:
        return self.spool.path.parent if self.spool is not None else None

    def _replay_entries(self, spool: Spool, deadline: float | None) -> None:
        cache: StepCache = {}  # fresh from the server: what a killed drain uploaded counts
        while entries := spool.next_entries(ENTRIES_PER_READ):
            for group in _groups(entries):
                if _past(deadline):
                    return
                seqs = [e.seq for e in group]
                try:
                    real = self._resolve(group[0].run_ref)
                    upload(self.client, real, group[0].kind, [e.payload for e in group], cache)
                except Exception as error:
                    if not self._refused(error):
                        raise
                    spool.bury(seqs, reason_of(error))
                    LOG.info(
                        "MLflow refused %d spooled %s entries: %s",
                        len(seqs),
                        group[0].kind,
                        reason_of(error),
                    )
                    continue
                spool.delete(seqs)
                self._replayed += len(group)
                self.replayed_runs[real] += len(group)
