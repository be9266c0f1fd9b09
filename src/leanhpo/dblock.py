"""A lock that every process using one database sees, for the steps that must run one at a time
across all drivers and hosts: creating a study and its identity (study/setup.py), creating a
tracking database's tables (tracking/errors.py).

- PostgreSQL: a session advisory lock on a key derived from the lock's name, held on one
  connection of its own for the whole step. The server drops it with that connection, so a
  driver killed while holding it never leaves it behind. MySQL: GET_LOCK, the same idea.
- SQLite: an flock on a side file beside the database file (`<file>.lock`), which the kernel
  drops with the process. SQLite is one host's file (docs/scale.md), so a host-local lock is
  enough; every name shares the file's one lock.
- Anything else (an in-memory SQLite database): no other process can see it, so no lock.

Why our own code: neither Optuna nor SQLAlchemy offers a cross-process lock, and the libraries
that do (filelock, portalocker) cover only the SQLite half. The lock is re-entrant within a
process, so a step may call another step that takes the same lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from leanhpo.exit_codes import EXIT_UNAVAILABLE
from leanhpo.fsutil import flock_within, sqlite_path
from leanhpo.logs import mask_secrets

POLL_S = 0.05  # how often a waiting driver tries the lock again
LOCK_SUFFIX = ".lock"
# (try the lock, release it) per database; the PostgreSQL key is a signed 64-bit integer.
STATEMENTS = {
    "postgresql": ("SELECT pg_try_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"),
    "mysql": ("SELECT GET_LOCK(:name, 0)", "SELECT RELEASE_LOCK(:name)"),
}

_held: dict[tuple[str, str, int], int] = {}  # (database, name, thread) -> depth
_held_guard = threading.Lock()


class DatabaseLockTimeout(TimeoutError):
    """Another driver held the lock for longer than the bound: it hangs, or the database does."""

    exit_code = EXIT_UNAVAILABLE


def lock_key(name: str) -> int:
    """The advisory-lock key of `name`: the same on every host and in every version."""
    digest = hashlib.sha256(f"leanhpo:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def database_lock(
    url: str, name: str, timeout_s: float, engine_kwargs: dict[str, Any] | None = None
) -> Iterator[None]:
    """Hold the lock `name` on the database at `url` (a live URL, secrets filled in) for the
    with-block; wait at most `timeout_s` for it, then DatabaseLockTimeout (exit 69). A database
    that cannot be reached raises the driver's own error, for the caller's retry policy."""
    path = sqlite_path(url)
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    # Per thread: another thread of this process must wait like another process. A SQLite
    # file has one lock for every name, so a nested lock of another name is a re-entry.
    thread = threading.get_ident()
    identity = (str(path), "", thread) if path is not None else (url, name, thread)
    with _held_guard:
        depth = _held.get(identity, 0)
        if depth:
            _held[identity] = depth + 1
    if depth:  # re-entered in this process: the outer with-block holds it
        try:
            yield
        finally:
            _release_depth(identity)
        return
    if path is not None:
        lock = _file_lock(path.with_name(path.name + LOCK_SUFFIX), name, timeout_s)
    elif scheme in STATEMENTS:
        lock = _server_lock(url, scheme, name, timeout_s, engine_kwargs or {})
    else:
        lock = _no_lock()
    with lock:
        with _held_guard:
            _held[identity] = 1
        try:
            yield
        finally:
            _release_depth(identity)


def _release_depth(identity: tuple[str, str, int]) -> None:
    with _held_guard:
        _held[identity] -= 1
        if not _held[identity]:
            del _held[identity]


@contextmanager
def _no_lock() -> Iterator[None]:
    yield


def _timed_out(name: str, where: str, timeout_s: float) -> DatabaseLockTimeout:
    return DatabaseLockTimeout(
        f"waited {timeout_s:g} s for the lock {name!r} on {where}, which another driver holds "
        "while it creates the study or the tracking database's tables: that driver or the "
        "database hangs. Rerun once it has finished or been stopped."
    )


@contextmanager
def _file_lock(lock_file: Path, name: str, timeout_s: float) -> Iterator[None]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not flock_within(fd, timeout_s, POLL_S):
            raise _timed_out(name, str(lock_file), timeout_s)
        yield  # closing the file descriptor releases the lock
    finally:
        os.close(fd)


@contextmanager
def _server_lock(
    url: str, scheme: str, name: str, timeout_s: float, engine_kwargs: dict[str, Any]
) -> Iterator[None]:
    import sqlalchemy
    import sqlalchemy.exc
    from sqlalchemy.pool import NullPool

    take, release = (sqlalchemy.text(sql) for sql in STATEMENTS[scheme])
    # MySQL lock names are at most 64 characters; PostgreSQL wants an integer.
    values = {"key": lock_key(name), "name": f"leanhpo-{lock_key(name) & (2**63 - 1):x}"}
    kwargs = {key: value for key, value in engine_kwargs.items() if key != "poolclass"}
    engine = sqlalchemy.create_engine(url, poolclass=NullPool, **kwargs)
    try:
        # AUTOCOMMIT: the lock is the session's, and no transaction stays open while it waits.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            deadline = time.monotonic() + timeout_s
            while not connection.execute(take, values).scalar():
                if time.monotonic() >= deadline:
                    raise _timed_out(name, mask_secrets(url), timeout_s)
                time.sleep(POLL_S)
            try:
                yield
            finally:
                # A connection lost meanwhile took the lock with it: nothing left to release.
                with contextlib.suppress(sqlalchemy.exc.DBAPIError):
                    connection.execute(release, values)
    finally:
        engine.dispose()
