"""Who trains a slot: one live process anywhere, recorded as a lease row in the Optuna database.

Several drivers (Snakemake runs on several hosts, or a cluster job resubmitted on another node)
may reach the same slot. A local flock cannot see across hosts, and Optuna's own heartbeat
covers only `study.optimize` (not the ask/tell trials we run), so ownership lives in the one
place every driver shares: a table `leanhpo_slot_leases` in the Optuna storage's database.

- Acquiring is a compare-and-set in one transaction: insert the row, or update it only where it
  still holds the owner we read (its token and heartbeat). Two drivers can never both win.
- Time is the database server's clock, so hosts with skewed clocks agree on a lease's age.
- The owner renews its heartbeat every `grace_s / 8` seconds from a thread. Another driver takes
  the slot over only when (a) the owner released it (finished or stopped cleanly), (b) the
  owner was on the same host and its process is gone (a kill -9, then a rerun: no waiting), or
  (c) the owner has not renewed for `grace_s`. An owner elsewhere that does not renew while we
  watch (a few beats) is waited for until its grace runs out; one that renews, or a live
  process on this host, is left alone (SlotBusyError, exit 75).
- An owner that finds its lease taken (it was cut off from the database longer than the grace
  period) stops at its next checkpoint or publish: `fence()` confirms ownership first, so a
  checkpoint or a metric is never written by a process that no longer owns the slot.
- Every lease call has the storage's deadline (study/deadline.py). An owner that cannot confirm
  its lease (a database that hangs or is down) does not know whether it still owns the slot:
  its fence retries for study.storage_timeout_s and then stops the job with exit 69, as any
  storage call does; a rerun takes the slot back (same host) or finds it taken over.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import psutil
import sqlalchemy as sa

from leanhpo.exit_codes import EXIT_LOCKED
from leanhpo.logs import event
from leanhpo.study.retry import StorageRetrier, StorageUnavailableError

LOGGER = logging.getLogger("leanhpo.study")
HOST_ENV = "LEANHPO_HOST_ID"  # names this host where hostnames are not unique (containers)
TABLE = "leanhpo_slot_leases"
BEATS_PER_GRACE = 8
# An owner that missed this many beats is probably gone: wait for its grace to run out.
MISSED_BEATS_TO_WAIT = 2

METADATA = sa.MetaData()
LEASES = sa.Table(
    TABLE,
    METADATA,
    sa.Column("study_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("slot", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("token", sa.String(64), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("process_start", sa.Float, nullable=False),
    sa.Column("workdir", sa.Text, nullable=False),
    sa.Column("acquired_at", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
    sa.Column("released", sa.Boolean, nullable=False),
)


class SlotBusyError(RuntimeError):
    """Another live process owns the slot; this job leaves it alone."""

    exit_code = EXIT_LOCKED

    def __init__(self, message: str, token: str, heartbeat_at: float, alive: bool) -> None:
        super().__init__(message)
        # alive: known to run (a live pid on this host), not just recently heard from
        self.token, self.heartbeat_at, self.alive = token, heartbeat_at, alive


class SlotLostError(RuntimeError):
    """This process's lease was taken over (it was cut off longer than the grace period)."""

    exit_code = EXIT_LOCKED


@dataclass(frozen=True)
class Owner:
    token: str
    host: str
    pid: int
    process_start: float
    workdir: str

    @classmethod
    def this_process(cls) -> Owner:
        return cls(
            token=uuid.uuid4().hex,
            host=os.environ.get(HOST_ENV) or socket.gethostname(),
            pid=os.getpid(),
            process_start=psutil.Process().create_time(),
            workdir=os.getcwd(),
        )

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} (working folder {self.workdir})"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "token"}


def process_alive(pid: int, started: float) -> bool:
    """True if `pid` runs on this host and is the process that started at `started` (a pid is
    reused once its process is gone)."""
    try:
        return abs(psutil.Process(pid).create_time() - started) < 0.01
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # it exists; we cannot look closer


def db_now(connection: sa.Connection) -> float:
    """Seconds since the epoch by the database server's clock (one clock for every host)."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        query = "SELECT EXTRACT(EPOCH FROM clock_timestamp())"
    elif dialect == "sqlite":
        query = "SELECT (julianday('now') - 2440587.5) * 86400.0"
    elif dialect in ("mysql", "mariadb"):
        query = "SELECT UNIX_TIMESTAMP(NOW(6))"
    else:
        return time.time()
    return float(connection.execute(sa.text(query)).scalar_one())


def ensure_table(engine: sa.Engine) -> None:
    """Create the lease table; two drivers creating it at once is fine."""
    try:
        METADATA.create_all(engine, checkfirst=True)
    except (sa.exc.ProgrammingError, sa.exc.IntegrityError, sa.exc.OperationalError):
        if not sa.inspect(engine).has_table(TABLE):
            raise


def _key(study_id: int, slot: int) -> Any:
    return sa.and_(LEASES.c.study_id == study_id, LEASES.c.slot == slot)


def _owner_of(row: Any) -> Owner:
    return Owner(row.token, row.host, row.pid, row.process_start, row.workdir)


class SlotLease:
    """The lease of one slot, held by this process from `acquire()` to `release()`."""

    def __init__(
        self,
        engine: sa.Engine,
        retrier: StorageRetrier,
        study_id: int,
        slot: int,
        grace_s: float,
        log: logging.Logger | None = None,
    ) -> None:
        self.engine, self.retrier = engine, retrier
        self.study_id, self.slot, self.grace_s = study_id, slot, grace_s
        self.interval_s = grace_s / BEATS_PER_GRACE
        self.owner = Owner.this_process()
        self.log = log or LOGGER
        self.previous: Owner | None = None  # whom we took the slot over from, if anyone
        self.takeover_reason: str | None = None
        self.lost: str | None = None
        self._confirmed = 0.0  # monotonic time of the last renewal the database accepted
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return f"slot {self.slot:04d}" if self.slot >= 0 else "the study's set-up"

    # -- acquire -----------------------------------------------------------------------------

    def acquire(self, wait_for_live_s: float = 0.0) -> SlotLease:
        """Own the slot, waiting for an owner that looks dead; SlotBusyError if it is alive
        (after waiting up to `wait_for_live_s` for it to release the slot)."""
        self.retrier.call("lease table", lambda _n: ensure_table(self.engine))
        waited_for: str | None = None
        deadline = time.monotonic() + wait_for_live_s
        first_heard: dict[str, float] = {}  # owner token -> the heartbeat we first saw
        while True:
            try:
                wait_s = self.retrier.call("slot lease", lambda _n: self._try_acquire())
            except SlotBusyError as busy:
                # A recent heartbeat alone does not prove life (a host that died a moment ago
                # looks the same): refuse once the owner has renewed while we watched.
                renewed = first_heard.setdefault(busy.token, busy.heartbeat_at) != busy.heartbeat_at
                if (busy.alive or renewed) and time.monotonic() >= deadline:
                    raise
                wait_s = 0.0
            if wait_s is None:
                break
            owner = self.previous.token if self.previous else None
            if wait_s > 0 and owner != waited_for:  # once per owner, not per look
                waited_for = owner
                event(
                    self.log,
                    f"{self.name}: its owner "
                    f"{self.previous.describe() if self.previous else '?'} stopped renewing its "
                    f"lease; waiting up to {wait_s:.0f} s for the grace period "
                    "(study.lease_grace_s) to run out, then taking it over",
                    kind="lease_wait",
                    wait_s=round(wait_s, 1),
                )
            time.sleep(min(wait_s, self.interval_s / 4) + 0.05)
        self._confirmed = time.monotonic()
        if self.takeover_reason:
            event(
                self.log,
                f"{self.name} taken over from {self.previous.describe() if self.previous else '?'}: "
                f"{self.takeover_reason}",
                logging.WARNING,
                kind="lease_takeover",
                previous=self.previous.to_dict() if self.previous else None,
                reason=self.takeover_reason,
            )
        self._thread = threading.Thread(target=self._beat, name="slot-lease", daemon=True)
        self._thread.start()
        return self

    def _try_acquire(self) -> float | None:
        """None when acquired; seconds to wait when the owner looks dead but may not be taken
        over yet; SlotBusyError when it is alive."""
        me = self.owner
        try:
            with self.engine.begin() as connection:
                now = db_now(connection)
                row = connection.execute(
                    sa.select(LEASES).where(_key(self.study_id, self.slot))
                ).first()
                if row is None:
                    connection.execute(
                        LEASES.insert().values(
                            study_id=self.study_id,
                            slot=self.slot,
                            **self._values(now),
                            acquired_at=now,
                        )
                    )
                    return None
                age = now - row.heartbeat_at
                previous = _owner_of(row)
                reason = self._takeover_reason(row, age)
                if reason is None:
                    if age > MISSED_BEATS_TO_WAIT * self.interval_s:
                        self.previous = previous
                        return max(self.grace_s - age, 0.0)
                    alive = row.host == me.host  # else _takeover_reason found it gone
                    raise SlotBusyError(
                        self._busy_message(previous, row, age), row.token, row.heartbeat_at, alive
                    )
                taken = connection.execute(
                    LEASES.update()
                    .where(_key(self.study_id, self.slot))
                    .where(LEASES.c.token == row.token, LEASES.c.heartbeat_at == row.heartbeat_at)
                    .values(**self._values(now), acquired_at=now)
                )
                if taken.rowcount != 1:
                    return 0.0  # someone else changed it between our read and write: look again
                if row.token != me.token and not row.released:
                    self.previous, self.takeover_reason = previous, reason
                return None
        except sa.exc.IntegrityError:
            return 0.0  # another driver inserted the row first: look again

    def _values(self, now: float) -> dict[str, Any]:
        me = self.owner
        return {
            "token": me.token,
            "host": me.host,
            "pid": me.pid,
            "process_start": me.process_start,
            "workdir": me.workdir,
            "heartbeat_at": now,
            "released": False,
        }

    def _takeover_reason(self, row: Any, age: float) -> str | None:
        me = self.owner
        if row.released or row.token == me.token:
            return "released" if row.released else "this lease"
        if row.host == me.host:
            if row.pid == me.pid and abs(row.process_start - me.process_start) < 0.01:
                return "an earlier attempt of this same process"
            if not process_alive(row.pid, row.process_start):
                return f"its process (pid {row.pid}) is gone from this host"
        if age > self.grace_s:
            return f"no heartbeat for {age:.0f} s (study.lease_grace_s = {self.grace_s:g})"
        return None

    def _busy_message(self, owner: Owner, row: Any, age: float) -> str:
        return (
            f"{self.name} is held by {owner.describe()}, which owns it since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(row.acquired_at))} UTC (last "
            f"heartbeat {age:.0f} s ago), so this job does not train it. Nothing is lost: the "
            "slot finishes there. If that process is gone, a rerun takes the slot over "
            f"{self.grace_s:g} s after its last heartbeat (study.lease_grace_s), at once when "
            "it ran on this host."
        )

    # -- hold --------------------------------------------------------------------------------

    def _renew(self) -> bool:
        """Renew the heartbeat; False (and `lost` set) if another process owns the slot now."""
        with self.engine.begin() as connection:
            now = db_now(connection)
            renewed = connection.execute(
                LEASES.update()
                .where(_key(self.study_id, self.slot), LEASES.c.token == self.owner.token)
                .values(heartbeat_at=now)
            )
            if renewed.rowcount == 1:
                self._confirmed = time.monotonic()
                return True
            row = connection.execute(
                sa.select(LEASES).where(_key(self.study_id, self.slot))
            ).first()
        holder = _owner_of(row).describe() if row is not None else "nobody"
        self.lost = (
            f"{self.name} was taken over by {holder} while this process could not "
            f"renew its lease for more than study.lease_grace_s = {self.grace_s:g} s (cut off "
            "from the Optuna database); this process stops here and the new owner carries on"
        )
        return False

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                # Bounded like any storage call: a beat stuck on a frozen server is cut off and
                # the next one tries again; the fence turns a lease left unconfirmed into
                # StorageUnavailableError (exit 69) after study.storage_timeout_s.
                with self.retrier.bounded("renew slot lease"):
                    renewed = self._renew()
                if not renewed:
                    event(self.log, self.lost or "lease lost", logging.ERROR, kind="lease_lost")
                    return
            except sa.exc.SQLAlchemyError as error:  # an outage: the fence decides, not us
                self.log.debug("lease renewal failed: %s", error)

    def fence(self) -> None:
        """Call before writing a checkpoint or publishing a metric: raises SlotLostError unless
        this process still owns the slot (confirmed within the last two beats)."""
        if self.lost is None and time.monotonic() - self._confirmed > 2 * self.interval_s:
            self.retrier.call("renew slot lease", lambda _n: self._renew())
        if self.lost is not None:
            raise SlotLostError(self.lost)

    def release(self) -> None:
        """Stop renewing and mark the lease released (best effort: an unreleased lease of a
        process that is gone is taken over by the rules above anyway)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost is not None:
            return
        try:
            with self.retrier.bounded("release slot lease"), self.engine.begin() as connection:
                connection.execute(
                    LEASES.update()
                    .where(_key(self.study_id, self.slot), LEASES.c.token == self.owner.token)
                    .values(released=True)
                )
        except sa.exc.SQLAlchemyError as error:
            self.log.warning("could not release the lease of %s: %s", self.name, error)

    def __enter__(self) -> SlotLease:
        return self if self._thread is not None else self.acquire()

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None and issubclass(kind, StorageUnavailableError):
            # The database is down or hangs: a release would only wait out another deadline
            # before the exit 69. The rerun takes the slot back (the rules above) anyway.
            self._stop.set()
            return
        self.release()


def lease_holders(engine: sa.Engine, study_id: int) -> dict[int, dict[str, Any]]:
    """Every slot's lease row (for status and tests)."""
    ensure_table(engine)
    with engine.connect() as connection:
        rows = connection.execute(sa.select(LEASES).where(LEASES.c.study_id == study_id)).all()
    return {row.slot: dict(row._mapping) for row in rows}
