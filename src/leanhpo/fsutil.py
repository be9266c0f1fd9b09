"""Crash-safe small-file writes shared by every layer (reports, state files, data splits).

A reader must see the old file or the new one, never a mix: write to a temporary name in the
same folder, fsync, rename, then fsync the folder so that the rename survives a power loss.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

HASH_CHUNK_BYTES = 1 << 20


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb", mtime_ns: int | None = None) -> Iterator[IO[Any]]:
    """A file object that becomes `path` only when the block ends without an error: written
    under a temporary name in the same folder, fsynced, renamed, the folder fsynced. On an
    error the temporary file is removed and `path` is left as it was. `mtime_ns` stamps the
    new file before the rename, so the stamp is as atomic as the content (for files whose
    change must not look new to Snakemake)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(handle, mode, encoding=encoding) as tmp_file:
            yield tmp_file
            tmp_file.flush()
            os.fsync(tmp_file.fileno())
        if mtime_ns is not None:
            os.utime(tmp_name, ns=(mtime_ns, mtime_ns))
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, payload: bytes, mtime_ns: int | None = None) -> None:
    with atomic_file(path, "wb", mtime_ns) as handle:
        handle.write(payload)


def atomic_write_text(path: Path, text: str, mtime_ns: int | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mtime_ns)


def atomic_write_json(path: Path, obj: Any, mtime_ns: int | None = None) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_text(path, text, mtime_ns)


def read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(folder: Path) -> None:
    """Persist a rename or unlink in `folder`; without this a power loss can undo it."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems cannot open folders; the rename still happened
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///relative` or `sqlite:////absolute` URL; None for other URLs and
    in-memory databases."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def create_sqlite_atomically(url: str, initialise: Callable[[str], None]) -> None:
    """Make the SQLite database of `url` whole or not at all.

    A library creating its tables commits them step by step (MLflow's alembic migrations do on
    SQLite), so a kill -9 in the middle left a database every later run refused ("table
    _alembic_tmp_experiment_tags already exists"). `initialise(tmp_url)` builds the tables in
    a temporary file, which is then linked into place: a link never replaces a database that
    another process made meanwhile, so the first one made wins and the other is dropped.
    """
    path = sqlite_path(url)
    if path is None or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        initialise(f"sqlite:///{tmp}")
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # made by another process meanwhile
            os.link(tmp, path)
        fsync_dir(path.parent)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def flock_within(handle: IO[Any] | int, wait_s: float, poll_s: float = 0.1) -> bool:
    """Take an exclusive flock on an open file (or descriptor), trying again every `poll_s`
    for at most `wait_s`; whether it was taken. The kernel drops it with the descriptor, so a
    process killed while holding it leaves no stale lock."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)
