"""Every Optuna storage call has a deadline, so a database that hangs counts as down.

A server that stops answering after the connection was made (frozen, SIGSTOP, a failover that
leaves the old primary half alive) or a network that drops packets does not raise anything: the
driver waits on its socket forever, or for the ~15 minutes of TCP retransmission. Three layers,
all derived from `study.storage_timeout_s`:

1. The server bounds its own work: `statement_timeout` (PostgreSQL) cancels a slow statement.
2. The kernel bounds the socket: `tcp_user_timeout` drops a connection whose data goes
   unacknowledged, TCP keepalives one whose peer is gone while it idles in the pool.
3. The client bounds the call: a watchdog (`call_deadline`) shuts down the socket of a call still
   running after `call_s + WATCHDOG_SLACK_S` (a frozen server still ACKs at the TCP level, so
   only this catches SIGSTOP). The blocked driver call then fails at once with an
   OperationalError, which the retrier treats as transient, so a call that outlives its
   deadline is tried again and, once `storage_timeout_s` has passed, ends in exit 69.

No library does the watchdog: SQLAlchemy has no per-call timeout and psycopg's is per
statement on the server. It shuts the socket down rather than calling psycopg's cancel(): a
cancel is a new connection to the same frozen server, and the statement_timeout already cancels
on a live one.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sqlite3
import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy.event
import sqlalchemy.pool

from leanhpo.logs import event

LOGGER = logging.getLogger("leanhpo.study")
# One call's bound is a quarter of storage_timeout_s: the retrier gets several attempts within
# the timeout, and the last attempt (started at the deadline at worst) ends soon after it.
CALLS_PER_TIMEOUT = 4
MIN_CALL_S = 2.0  # libpq's (and psycopg's) connect_timeout floor; a loaded host's slow query
MAX_CALL_S = 30.0  # no Optuna call of a healthy server takes this long
MAX_CONNECT_S = 10  # a server that accepts TCP but never answers the handshake
WATCHDOG_SLACK_S = 1.0  # the server's own statement_timeout answers first where it can
KEEPALIVE_PROBES = 3
SQLITE_BUSY_S = 5.0  # Python's sqlite3 default busy timeout, kept where the deadline allows


def call_seconds(timeout_s: float) -> float:
    """How long one storage call may take (the server-side and socket bounds)."""
    return min(MAX_CALL_S, max(MIN_CALL_S, timeout_s / CALLS_PER_TIMEOUT))


def watchdog_seconds(timeout_s: float) -> float:
    """When the watchdog closes the connection of a call that is still running."""
    return call_seconds(timeout_s) + WATCHDOG_SLACK_S


def postgres_connect_args(timeout_s: float, url_query: Mapping[str, Any]) -> dict[str, Any]:
    """libpq settings (psycopg 3) that bound connecting, idling and every statement. A setting
    the URL names itself (`?keepalives_idle=...`) is the user's and stays; `options` are joined,
    the user's after ours (PostgreSQL lets the last `-c` win)."""
    call_s = call_seconds(timeout_s)
    call_ms = int(call_s * 1000)
    ours: dict[str, Any] = {
        "connect_timeout": min(MAX_CONNECT_S, math.ceil(call_s)),
        "keepalives": 1,
        "keepalives_idle": max(1, int(call_s / 2)),
        "keepalives_interval": max(1, int(call_s / (2 * KEEPALIVE_PROBES))),
        "keepalives_count": KEEPALIVE_PROBES,
        "tcp_user_timeout": call_ms,
    }
    args = {key: value for key, value in ours.items() if key not in url_query}
    theirs = url_query.get("options")
    args["options"] = f"-c statement_timeout={call_ms}" + (f" {theirs}" if theirs else "")
    return args


def sqlite_connect_args(timeout_s: float) -> dict[str, Any]:
    """A busy (locked) database waits at most one call's bound, then the retrier decides; the
    watchdog interrupts anything slower (a database on a hung network filesystem)."""
    return {"timeout": min(SQLITE_BUSY_S, call_seconds(timeout_s))}


class WatchedPool(sqlalchemy.pool.QueuePool):
    """A QueuePool whose connections the watchdog can find by the thread that holds them."""


_lock = threading.Lock()
_records: weakref.WeakSet[Any] = weakref.WeakSet()  # every pooled connection, idle or not
_holders: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()  # record -> thread


@sqlalchemy.event.listens_for(WatchedPool, "connect")
def _connected(_dbapi_connection: Any, record: Any) -> None:
    with _lock:
        _records.add(record)


@sqlalchemy.event.listens_for(WatchedPool, "checkout")
def _checked_out(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    with _lock:
        _holders[record] = threading.get_ident()


@sqlalchemy.event.listens_for(WatchedPool, "checkin")
def _checked_in(_dbapi_connection: Any, record: Any) -> None:
    with _lock:
        _holders.pop(record, None)


def _shut_down(dbapi_connection: Any) -> bool:
    """Shut the socket of a psycopg connection down, which wakes a call blocked on it (SQLite:
    interrupt the running statement, which is what sqlite3 offers from another thread)."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        try:
            dbapi_connection.interrupt()
        except sqlite3.ProgrammingError:  # closed meanwhile
            return False
        return True
    try:
        if dbapi_connection.closed:
            return False
        fd = dbapi_connection.pgconn.socket
    except Exception:  # not psycopg, or already broken: nothing to wake
        return False
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        return False
    return True


def break_connections_of(thread: int) -> int:
    """Shut down the connections `thread` holds, and the unheld ones: a connection being made,
    or pinged on checkout, is not yet marked as held (an idle one is simply replaced later)."""
    with _lock:
        records = [r for r in _records if _holders.get(r, thread) == thread]
    return sum(_shut_down(r.dbapi_connection) for r in records if r.dbapi_connection is not None)


@contextmanager
def call_deadline(seconds: float, what: str, url: str) -> Iterator[None]:
    """Run the block under a watchdog that breaks its connections after `seconds`."""
    thread = threading.get_ident()

    def expire() -> None:
        broken = break_connections_of(thread)
        event(
            LOGGER,
            f"Optuna storage {url} gave no answer to {what} within {seconds:g} s (the call's "
            f"deadline, from study.storage_timeout_s); closed {broken} connection(s) so the "
            "call fails and is retried",
            logging.WARNING,
            kind="storage_deadline",
            deadline_s=seconds,
        )

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
