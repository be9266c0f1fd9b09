"""An export folder on disk: its manifest, its verification, and its atomic replacement.

The folder is written into a hidden sibling (`.<name>.tmp-*`), every file fsynced and listed with
its size and SHA-256 in manifest.json (written last), then swapped into place. A rerun
replaces an existing export with one `renameat2(RENAME_EXCHANGE)` where the kernel and the
filesystem offer it, so a reader sees the old export or the new one, never a mix and never none;
elsewhere the old folder is renamed aside first (a reader may then briefly find no folder, but
never half of one). Leftover siblings of a killed export are removed by the next one.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leanhpo.checkpoints.manifest import write_hashed
from leanhpo.checkpoints.safetensors_stream import sha256_of_file
from leanhpo.commands import current_invocation
from leanhpo.export.errors import ExportError
from leanhpo.fsutil import fsync_dir

LOG = logging.getLogger(__name__)

EXPORT_FORMAT = "leanhpo-export/1"
MANIFEST_NAME = "manifest.json"
TMP_INFIX = ".tmp-"
OLD_INFIX = ".old-"
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
# Files that a loader could unpickle (torch.load, joblib): never part of an export.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
# Snakemake stamps a directory() output with this file after the job; it is not ours to list.
SNAKEMAKE_STAMP = ".snakemake_timestamp"
# renameat2(2): swap two paths atomically (Linux >= 3.15, glibc >= 2.28).
AT_FDCWD = -100
RENAME_EXCHANGE = 2


def file_digest(path: Path, sync: bool = False) -> dict[str, Any]:
    """Size and SHA-256 of a file in one read; with `sync`, fsync it too.

    Used on the files another library wrote (save_pretrained), which cannot be hashed while
    they are written as checkpoints.manifest.write_hashed and safetensors_stream do."""
    with open(path, "rb", buffering=0) as handle:
        sha, size = sha256_of_file(handle.fileno())
        if sync:
            os.fsync(handle.fileno())
    return {"sha256": sha, "bytes": size}


def write_manifest(folder: Path, files: dict[str, dict[str, Any]]) -> bytes:
    manifest = {
        "format": EXPORT_FORMAT,
        "files": dict(sorted(files.items())),
        "created_at": datetime.now(UTC).isoformat(),
    }
    raw = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
    write_hashed(folder / MANIFEST_NAME, raw)
    return raw


def read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """The manifest's files, checked: a folder without one is not an export."""
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a folder; --model must name an exported model folder")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ExportError(
            f"{folder} is not a leanhpo export: it has no {MANIFEST_NAME}. Export the best "
            f"model of a study with `{current_invocation().snakemake('--cores', 'all')}`, which "
            "writes experiments/<study>/best_model/"
        )
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError as error:
        raise ExportError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise ExportError(
            f"{path} is not in format {EXPORT_FORMAT} (found "
            f"{manifest.get('format') if isinstance(manifest, dict) else manifest!r}); "
            "export the model again with this leanhpo version"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ExportError(f"{path} lists no files")
    for name, entry in files.items():
        _check_entry(path, name, entry)
    return files


def _check_entry(path: Path, name: Any, entry: Any) -> None:
    parts = Path(name).parts if isinstance(name, str) else ()
    if not parts or Path(name).is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise ExportError(f"{path} lists an invalid file name {name!r}")
    if name == MANIFEST_NAME or str(name).endswith(PICKLE_SUFFIXES):
        raise ExportError(f"{path} lists {name!r}, which no export holds")
    if not isinstance(entry, dict) or not SHA256_PATTERN.match(str(entry.get("sha256"))):
        raise ExportError(f"{path} has no valid sha256 for {name}")
    size = entry.get("bytes")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ExportError(f"{path} has no valid size for {name}")


def verify_folder(folder: Path) -> dict[str, dict[str, Any]]:
    """Check every listed file's size and SHA-256 before anything is loaded; refuse pickles.

    Raises ExportError naming the first file that does not match."""
    files = read_manifest(folder)
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise ExportError(f"{path} is listed in {MANIFEST_NAME} but missing")
        found = file_digest(path)
        if found["bytes"] != entry["bytes"] or found["sha256"] != entry["sha256"]:
            raise ExportError(
                f"{path} does not match its SHA-256 in {folder / MANIFEST_NAME} (it has "
                f"{found['bytes']} bytes, the manifest says {entry['bytes']}): the export is "
                "corrupt or was edited; export the model again"
            )
    for extra in sorted(_files(folder) - set(files) - {MANIFEST_NAME, SNAKEMAKE_STAMP}):
        if extra.endswith(PICKLE_SUFFIXES):
            raise ExportError(
                f"{folder / extra} is not part of the export and could hold pickled code; "
                "remove it (an export holds safetensors and JSON only)"
            )
        LOG.warning("%s is not listed in %s; ignored", folder / extra, MANIFEST_NAME)
    return files


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@contextlib.contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """A fresh temporary sibling of `final` to fill; on a clean exit it replaces `final`.

    Refuses to replace a folder that is not an export (an --out pointing at user data)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _refuse_foreign(final)
    _remove_leftovers(final)
    tmp = final.with_name(f".{final.name}{TMP_INFIX}{uuid.uuid4().hex[:12]}")
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        _swap_into_place(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap
    fsync_dir(final.parent)


def _refuse_foreign(final: Path) -> None:
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise ExportError(f"{final} exists and is not a folder; choose another --out")
    found = [p for p in final.iterdir() if p.name != SNAKEMAKE_STAMP] if final.is_dir() else []
    if found and not (final / MANIFEST_NAME).is_file():
        raise ExportError(
            f"{final} exists and is not a leanhpo export (no {MANIFEST_NAME}); refusing to "
            "replace it. Choose another --out, or move that folder away"
        )


def _remove_leftovers(final: Path) -> None:
    for infix in (TMP_INFIX, OLD_INFIX):
        for leftover in final.parent.glob(f".{final.name}{infix}*"):
            shutil.rmtree(leftover, ignore_errors=True)


def fsync_tree(folder: Path) -> None:
    """Persist the names of every sub-folder (the files are fsynced as they are written)."""
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        fsync_dir(sub)
    fsync_dir(folder)


def _swap_into_place(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.rename(tmp, final)
        return
    if _exchange(tmp, final):  # tmp now holds the previous export
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = final.with_name(f".{final.name}{OLD_INFIX}{uuid.uuid4().hex[:12]}")
    os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """renameat2(RENAME_EXCHANGE); False where the platform or filesystem cannot.

    Hand-written with ctypes: os has no renameat2 and no package wraps it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    result = renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    return bool(result == 0)
