"""The durable spool: MLflow writes that could not reach the server, in the order they were made,
and the runs that were created while it was down.

SQLite, because several processes of one study (trial jobs, evaluate, sync-tracking) append to
it at once and a kill -9 must never leave half an entry. synchronous=FULL makes an append
durable before the training goes on. The default rollback journal, not WAL: a study folder may
sit on a network file system shared by cluster nodes, where WAL's shared-memory index does not
work. A run's placeholder id stays mapped to its MLflow id here for good, so any later process
handed a placeholder (from state.json or study.json) finds the real run.

One file per host (tracking_spool.<host>.sqlite): SQLite's locks are not to be trusted across
machines on a network file system, so while a study runs no file is written from two. A job
reads every spool file of the study folder (spool_files, the older single tracking_spool.sqlite
included) and replays its own; `sync-tracking` replays them all (see replay.py).

Dead letters: an entry MLflow refuses for good (HTTP 400 or 404: its run was deleted, or the
tracking database is not the one the entry was written for) moves to the `dead` table with the
error, so that the entries behind it still go up; `sync-tracking --show-dead / --retry-dead /
--drop-dead` settle them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leanhpo.commands import current_invocation
from leanhpo.fsutil import flock_within

LOG = logging.getLogger("leanhpo.tracking")
BUSY_TIMEOUT_S = 30.0  # appends from other jobs wait this long for the write lock
WARN_BYTES = 100 * 1024 * 1024
PLACEHOLDER_PREFIX = "pending-"
LEGACY_SPOOL_FILE = "tracking_spool.sqlite"  # one file for all hosts, before per-host spools
SPOOL_GLOB = "tracking_spool*.sqlite"
DEAD_RUN_KIND = "run"  # a dead letter that is a placeholder run MLflow would not create
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    placeholder TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    name TEXT NOT NULL,
    tags TEXT NOT NULL,
    parent TEXT,
    created_ms INTEGER NOT NULL,
    run_id TEXT
);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_ref TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_run ON entries (run_ref);
CREATE TABLE IF NOT EXISTS dead (
    seq INTEGER PRIMARY KEY,
    run_ref TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    error TEXT NOT NULL,
    failed_ms INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class PendingRun:
    placeholder: str
    experiment: str
    name: str
    tags: dict[str, str]
    parent: str | None
    created_ms: int


@dataclass(frozen=True)
class Entry:
    seq: int
    run_ref: str
    kind: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class DeadEntry:
    seq: int
    run_ref: str
    kind: str
    payload: dict[str, Any]
    error: str
    failed_ms: int

    def summary(self, width: int = 60) -> str:
        """What the entry would have written, in a few words."""
        payload = self.payload
        if self.kind == "metrics":
            text = f"step {payload['step']}: {', '.join(sorted(payload['values']))}"
        elif self.kind in ("params", "tags"):
            text = ", ".join(sorted(payload[self.kind]))
        elif self.kind == "status":
            text = str(payload["status"])
        elif self.kind == "dict":
            text = str(payload["file"])
        else:  # a run
            text = f"{payload.get('name')} {json.dumps(payload.get('tags'), sort_keys=True)}"
        return text if len(text) <= width else text[: width - 3] + "..."


def spool_file_name(host: str | None = None) -> str:
    """This host's spool file: tracking_spool.<host>.sqlite, the host name cut to characters
    that are safe in a file name on any file system."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", host or socket.gethostname()).strip("_")
    return f"tracking_spool.{name or 'host'}.sqlite"


def spool_files(folder: Path, own: Path | None = None) -> list[Path]:
    """Every spool file in a study folder (LEGACY_SPOOL_FILE included), in name order, and
    `own` too even before it exists or when its name is not a spool name."""
    found = sorted(folder.glob(SPOOL_GLOB)) if folder.is_dir() else []
    if own is not None and own not in found:
        found.append(own)
    return found


def now_ms() -> int:
    return int(time.time() * 1000)


def placeholder_id(experiment: str, tags: dict[str, str]) -> str:
    """Stable across processes, so a job rerun while MLflow is still down gets the same one."""
    digest = hashlib.sha256(json.dumps([experiment, tags], sort_keys=True).encode()).hexdigest()
    return PLACEHOLDER_PREFIX + digest[:24]


def is_placeholder(run_id: str) -> bool:
    return run_id.startswith(PLACEHOLDER_PREFIX)


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._warned_size = False

    def _open(self, create: bool) -> sqlite3.Connection | None:
        """The connection, made (with the file) only when something is first spooled, so a study
        whose MLflow never failed has no spool file."""
        if self._db is None and (create or self.path.exists()):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            self._db = db
        return self._db

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._open(create=True)
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        db = self._open(create=False)
        return db.execute(sql, args).fetchall() if db is not None else []

    def append(self, run_ref: str, kind: str, payload: dict[str, Any]) -> int:
        """Queue one entry; return its seq."""
        with self._write() as db:
            seq = db.execute(
                "INSERT INTO entries (run_ref, kind, payload, created_ms) VALUES (?, ?, ?, ?)",
                (run_ref, kind, json.dumps(payload, separators=(",", ":")), now_ms()),
            ).lastrowid
        self._warn_if_large()
        return int(seq or 0)

    def add_run(self, run: PendingRun) -> None:
        """Record a run created while MLflow is down; a second call for the same tags keeps
        the first record (and so its creation time)."""
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (
                    run.placeholder,
                    run.experiment,
                    run.name,
                    json.dumps(run.tags, sort_keys=True),
                    run.parent,
                    run.created_ms,
                ),
            )

    def pending_run(self, placeholder: str) -> PendingRun | None:
        rows = self._rows(
            "SELECT placeholder, experiment, name, tags, parent, created_ms FROM runs"
            " WHERE placeholder = ?",
            placeholder,
        )
        if not rows:
            return None
        ph, experiment, name, tags, parent, created = rows[0]
        return PendingRun(ph, experiment, name, json.loads(tags), parent, created)

    def has_run(self, placeholder: str) -> bool:
        return bool(self._rows("SELECT 1 FROM runs WHERE placeholder = ?", placeholder))

    def real_id(self, placeholder: str) -> str | None:
        rows = self._rows("SELECT run_id FROM runs WHERE placeholder = ?", placeholder)
        return str(rows[0][0]) if rows and rows[0][0] else None

    def map_run(self, placeholder: str, run_id: str) -> None:
        with self._write() as db:
            db.execute("UPDATE runs SET run_id = ? WHERE placeholder = ?", (run_id, placeholder))

    def unmapped_runs(self) -> list[str]:
        rows = self._rows("SELECT placeholder FROM runs WHERE run_id IS NULL ORDER BY created_ms")
        return [str(row[0]) for row in rows]

    def has_pending(self) -> bool:
        return bool(
            self._rows(
                "SELECT 1 WHERE EXISTS (SELECT 1 FROM entries)"
                " OR EXISTS (SELECT 1 FROM runs WHERE run_id IS NULL)"
            )
        )

    def holds_entries_for(self, run_id: str) -> bool:
        """Whether a write to this run must queue behind spooled ones (under the id itself or
        under a placeholder that became it)."""
        return bool(
            self._rows(
                "SELECT 1 FROM entries WHERE run_ref = ?1 OR run_ref IN"
                " (SELECT placeholder FROM runs WHERE run_id = ?1) LIMIT 1",
                run_id,
            )
        )

    def next_entries(self, limit: int) -> list[Entry]:
        rows = self._rows(
            "SELECT seq, run_ref, kind, payload FROM entries ORDER BY seq LIMIT ?", limit
        )
        return [Entry(seq, ref, kind, json.loads(payload)) for seq, ref, kind, payload in rows]

    def delete(self, seqs: list[int]) -> None:
        with self._write() as db:
            db.executemany("DELETE FROM entries WHERE seq = ?", [(seq,) for seq in seqs])

    def _count(self, sql: str) -> int:
        """The one number `sql` selects; 0 while the spool file does not exist."""
        rows = self._rows(sql)
        return int(rows[0][0]) if rows else 0

    def pending_count(self) -> int:
        return self._count(
            "SELECT (SELECT COUNT(*) FROM entries)"
            " + (SELECT COUNT(*) FROM runs WHERE run_id IS NULL)"
        )

    def entry_count(self) -> int:
        return self._count("SELECT COUNT(*) FROM entries")

    def backlog_refs(self) -> set[str]:
        """The runs with something to replay: entries waiting, or a placeholder not yet a run."""
        rows = self._rows(
            "SELECT DISTINCT run_ref FROM entries"
            " UNION SELECT placeholder FROM runs WHERE run_id IS NULL"
        )
        return {str(row[0]) for row in rows}

    def mapped_runs(self) -> dict[str, str]:
        """placeholder -> MLflow run id, for the placeholders that became runs."""
        rows = self._rows("SELECT placeholder, run_id FROM runs WHERE run_id IS NOT NULL")
        return {str(placeholder): str(run_id) for placeholder, run_id in rows}

    # --- dead letters ----------------------------------------------------------------------

    def bury(self, seqs: list[int], error: str) -> None:
        """Move entries MLflow refused for good to `dead`, with the error, in one transaction."""
        failed = now_ms()
        with self._write() as db:
            for seq in seqs:
                db.execute(
                    "INSERT OR REPLACE INTO dead SELECT seq, run_ref, kind, payload, created_ms,"
                    " ?, ? FROM entries WHERE seq = ?",
                    (error, failed, seq),
                )
                db.execute("DELETE FROM entries WHERE seq = ?", (seq,))

    def bury_run(self, placeholder: str, error: str) -> int:
        """Move a placeholder run MLflow would not create, and every entry of it, to `dead`;
        return how many rows moved. The run's dead letter gets a negative seq (runs have
        none), so it lists, and comes back, before its entries."""
        failed = now_ms()
        with self._write() as db:
            moved = db.execute(
                "INSERT OR REPLACE INTO dead SELECT -rowid, placeholder, ?, json_object("
                "'experiment', experiment, 'name', name, 'tags', json(tags), 'parent', parent),"
                " created_ms, ?, ? FROM runs WHERE placeholder = ? AND run_id IS NULL",
                (DEAD_RUN_KIND, error, failed, placeholder),
            ).rowcount
            db.execute("DELETE FROM runs WHERE placeholder = ? AND run_id IS NULL", (placeholder,))
            moved += db.execute(
                "INSERT OR REPLACE INTO dead SELECT seq, run_ref, kind, payload, created_ms,"
                " ?, ? FROM entries WHERE run_ref = ?",
                (f"its run could not be created: {error}", failed, placeholder),
            ).rowcount
            db.execute("DELETE FROM entries WHERE run_ref = ?", (placeholder,))
        return int(moved)

    def dead_count(self) -> int:
        return self._count("SELECT COUNT(*) FROM dead")

    def dead_entries(self) -> list[DeadEntry]:
        rows = self._rows(
            "SELECT seq, run_ref, kind, payload, error, failed_ms FROM dead ORDER BY seq"
        )
        return [
            DeadEntry(seq, ref, kind, json.loads(payload), error, failed)
            for seq, ref, kind, payload, error, failed in rows
        ]

    def retry_dead(self) -> int:
        """Put every dead letter back where it was (entries keep their seq, so the original
        order holds); return how many."""
        if not self.path.exists():
            return 0
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO runs SELECT run_ref, json_extract(payload, '$.experiment'),"
                " json_extract(payload, '$.name'), json(json_extract(payload, '$.tags')),"
                " json_extract(payload, '$.parent'), created_ms, NULL FROM dead WHERE kind = ?",
                (DEAD_RUN_KIND,),
            )
            db.execute(
                "INSERT OR IGNORE INTO entries SELECT seq, run_ref, kind, payload, created_ms"
                " FROM dead WHERE kind != ?",
                (DEAD_RUN_KIND,),
            )
            return int(db.execute("DELETE FROM dead").rowcount)

    def drop_dead(self) -> int:
        if not self.path.exists():
            return 0
        with self._write() as db:
            return int(db.execute("DELETE FROM dead").rowcount)

    def size_bytes(self) -> int:
        files = (self.path, self.path.with_name(self.path.name + "-journal"))
        return sum(f.stat().st_size for f in files if f.exists())

    def _warn_if_large(self) -> None:
        if not self._warned_size and self.size_bytes() > WARN_BYTES:
            self._warned_size = True
            LOG.warning(
                "MLflow spool %s has passed %d MB; it keeps growing until MLflow answers again"
                " (run `%s` then)",
                self.path,
                WARN_BYTES // (1024 * 1024),
                current_invocation().leanhpo("sync-tracking"),
            )

    @contextlib.contextmanager
    def drain_lock(self, wait_s: float) -> Iterator[bool]:
        """One drainer at a time, so two processes never check-then-upload the same point.
        flock on a side file (SQLite's own locks are fcntl locks on the database, which an NFS
        client would mix up with ours) dies with its process, so a kill -9 leaves no stale lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as handle:
            if not flock_within(handle, wait_s):
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def backlog_of(spools: list[Spool]) -> dict[str, int]:
    """What spool files still hold: entries waiting, the distinct runs they concern (a
    placeholder and the run it became, in any of the files, count once; a placeholder not yet
    a run counts too), and dead letters. Read from the files alone, without MLflow."""
    real: dict[str, str] = {}
    for spool in spools:
        real.update(spool.mapped_runs())
    runs = {real.get(ref, ref) for spool in spools for ref in spool.backlog_refs()}
    return {
        "entries": sum(spool.entry_count() for spool in spools),
        "runs": len(runs),
        "dead": sum(spool.dead_count() for spool in spools),
    }
