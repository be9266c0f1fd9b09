"""Crash-safe small-file writes shared by every layer (reports, state files, data splits).

A reader must see the old file or the new one, never a mix: write to a temporary name in the
same folder, fsync, rename, then fsync the folder so that the rename survives a power loss.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

HASH_CHUNK_BYTES = 1 << 20


def atomic_write_bytes(path: Path, payload: bytes, mtime_ns: int | None = None) -> None:
    """`mtime_ns` stamps the new file before the rename, so the stamp is as atomic as the
    content (for files whose change must not look new to Snakemake)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as tmp_file:
            tmp_file.write(payload)
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
