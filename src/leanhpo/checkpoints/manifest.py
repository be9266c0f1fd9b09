"""The byte-level format of one checkpoint folder: hashed writes and verified reads.

Every file is hashed while it is written (never by a second read) and listed with its
size and SHA-256 in MANIFEST.json, which is written last. Readers trust nothing: the
manifest is validated before its file names are used, and every byte is checked against
it before a caller sees any of it. Tensor files are streamed from and into tensor memory
(``safetensors_stream``), so neither a save nor a load holds a second copy of a group:
their header is parsed from the very bytes being hashed, only to learn where each tensor
goes (within the size the manifest gives), and the tensors are handed out only once the
digest of the whole file matches. Parsing uses json and that reader, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from leanhpo.checkpoints.safetensors_stream import read_tensors, sha256_of_file, write_file

CHECKPOINT_FORMAT = "leanhpo-checkpoint/1"
# A full checkpoint resumes training; a weights-only one (optimizer, scheduler and RNG state
# stripped) serves evaluation, export and predict. Manifests written before the kinds existed
# carry no "kind" and are full.
FULL, WEIGHTS_ONLY = "full", "weights"
KINDS = (FULL, WEIGHTS_ONLY)
MANIFEST_NAME = "MANIFEST.json"
META_NAME = "meta.json"
TENSOR_SUFFIX = ".safetensors"
# For the small JSON files; tensor files use safetensors_stream.IO_CHUNK_BYTES.
CHUNK_BYTES = 8 * 1024 * 1024
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class CorruptCheckpointError(Exception):
    """A checkpoint folder that fails verification; ``reason`` says which check failed."""

    def __init__(self, epoch: int, reason: str) -> None:
        super().__init__(epoch, reason)
        self.epoch = epoch
        self.reason = reason

    def __str__(self) -> str:
        return f"checkpoint {epoch_id(self.epoch)} is corrupt: {self.reason}"


def epoch_id(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def encode_meta(meta: dict[str, Any]) -> bytes:
    """JSON text; NaN is allowed because a metrics snapshot may legitimately hold one."""
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    return json.dumps(meta, indent=2).encode("utf-8")


def write_contents(
    tmp: Path, epoch: int, groups: dict[str, dict[str, torch.Tensor]], meta_bytes: bytes
) -> tuple[bytes, int]:
    """Write all files into ``tmp``, MANIFEST.json last; return (manifest bytes, total)."""
    files: dict[str, dict[str, Any]] = {}
    for group, tensors in groups.items():
        streamed = write_file(tmp / (group + TENSOR_SUFFIX), tensors)
        files[group + TENSOR_SUFFIX] = {"sha256": streamed.sha256, "bytes": streamed.bytes}
    files[META_NAME] = write_hashed(tmp / META_NAME, meta_bytes)
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "kind": FULL,
        "files": files,
        "created_at": datetime.now(UTC).isoformat(),
    }
    raw = json.dumps(manifest, indent=2).encode("utf-8")
    write_hashed(tmp / MANIFEST_NAME, raw)
    return raw, sum(entry["bytes"] for entry in files.values()) + len(raw)


def write_hashed(path: Path, data: bytes) -> dict[str, Any]:
    """Write in chunks, hashing each chunk as it goes out, then fsync the file."""
    digest = hashlib.sha256()
    view = memoryview(data)
    with open(path, "xb") as handle:
        for start in range(0, len(view), CHUNK_BYTES):
            chunk = view[start : start + CHUNK_BYTES]
            digest.update(chunk)
            handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return {"sha256": digest.hexdigest(), "bytes": len(data)}


def fsync_dir(path: Path) -> None:
    """Persist a folder's entries, i.e. a rename or a new file name in it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(folder: Path, epoch: int) -> tuple[dict[str, dict[str, Any]], bytes]:
    """(files listed, the raw manifest bytes) of a manifest that passes every check."""
    try:
        raw = (folder / MANIFEST_NAME).read_bytes()
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise CorruptCheckpointError(epoch, f"{MANIFEST_NAME} is missing") from exc
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise CorruptCheckpointError(epoch, f"{MANIFEST_NAME} is not valid JSON: {exc}") from exc
    _check_manifest(manifest, epoch)
    return manifest["files"], raw


def _check_manifest(manifest: Any, epoch: int) -> None:
    """Reject a manifest we did not write; names must be plain files inside the folder."""

    def fail(reason: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(epoch, f"{MANIFEST_NAME} {reason}")

    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        raise fail(f"is not in format {CHECKPOINT_FORMAT}")
    if manifest.get("epoch") != epoch:
        raise fail(f"names epoch {manifest.get('epoch')!r}, the folder epoch {epoch}")
    if manifest.get("kind", FULL) not in KINDS:
        raise fail(f"names an unknown kind {manifest.get('kind')!r}")
    if "stripped_from" in manifest and not SHA256_PATTERN.match(str(manifest["stripped_from"])):
        raise fail("has no valid sha256 in stripped_from")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise fail("lists no files")
    for name, entry in files.items():
        if name in {"", ".", "..", MANIFEST_NAME} or Path(name).name != name:
            raise fail(f"lists an invalid file name {name!r}")
        if not isinstance(entry, dict) or not SHA256_PATTERN.match(str(entry.get("sha256"))):
            raise fail(f"has no valid sha256 for {name}")
        size = entry.get("bytes")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise fail(f"has no valid size for {name}")


def weights_only_manifest(
    raw: bytes, epoch: int, keep_groups: frozenset[str]
) -> tuple[bytes, list[str]]:
    """The manifest of the weights-only version of the full checkpoint whose (checked) manifest
    is `raw`, and the names of the files it no longer lists.

    The kept files and their hashes are carried over unchanged: they are the very bytes on
    disk, hashed when they were written. `stripped_from` holds the SHA-256 of the full
    manifest, the checkpoint's identity in reports and ledgers, so a stripped checkpoint is
    still recognised as the one they list.
    """
    manifest = json.loads(raw)
    files = manifest["files"]
    kept = {
        name: entry
        for name, entry in files.items()
        if not name.endswith(TENSOR_SUFFIX) or name.removesuffix(TENSOR_SUFFIX) in keep_groups
    }
    missing = sorted(g for g in keep_groups if g + TENSOR_SUFFIX not in kept)
    if missing:
        raise CorruptCheckpointError(epoch, f"{MANIFEST_NAME} lists no {missing} to keep")
    stripped = {
        **manifest,
        "kind": WEIGHTS_ONLY,
        "files": kept,
        "stripped_from": hashlib.sha256(raw).hexdigest(),
        "stripped_at": datetime.now(UTC).isoformat(),
    }
    return json.dumps(stripped, indent=2).encode("utf-8"), sorted(set(files) - set(kept))


@dataclass(frozen=True)
class CheckedFile:
    """A listed file that matched the manifest: its bytes, or a tensor file's tensors."""

    data: bytes = b""
    tensors: dict[str, torch.Tensor] | None = None


def read_checked(path: Path, name: str, entry: dict[str, Any], epoch: int) -> CheckedFile:
    """Read a listed file once and check it; a tensor file goes straight into its tensors."""
    try:
        with open(path, "rb", buffering=0) as handle:
            _check_size(os.fstat(handle.fileno()).st_size, name, entry, epoch)
            if name.endswith(TENSOR_SUFFIX):
                return _read_tensor_file(handle.fileno(), name, entry, epoch)
            data = handle.readall()
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise CorruptCheckpointError(epoch, f"{name} is listed but missing") from exc
    _check_size(len(data), name, entry, epoch)
    _check_sha(hashlib.sha256(data).hexdigest(), name, entry, epoch)
    return CheckedFile(data=data)


def _read_tensor_file(fd: int, name: str, entry: dict[str, Any], epoch: int) -> CheckedFile:
    try:
        result = read_tensors(fd, entry["bytes"])
    except EOFError as exc:
        raise CorruptCheckpointError(epoch, f"{name} changed size while it was read") from exc
    _check_sha(result.sha256, name, entry, epoch)
    if result.error is not None:
        reason = f"{name} is not a valid safetensors file: {result.error}"
        raise CorruptCheckpointError(epoch, reason)
    return CheckedFile(tensors=result.tensors)


def stream_check(path: Path, name: str, entry: dict[str, Any], epoch: int) -> None:
    try:
        with open(path, "rb", buffering=0) as handle:
            _check_size(os.fstat(handle.fileno()).st_size, name, entry, epoch)
            sha, size = sha256_of_file(handle.fileno())
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise CorruptCheckpointError(epoch, f"{name} is listed but missing") from exc
    _check_size(size, name, entry, epoch)
    _check_sha(sha, name, entry, epoch)


def _check_size(size: int, name: str, entry: dict[str, Any], epoch: int) -> None:
    if size != entry["bytes"]:
        reason = f"{name} has {size} bytes, the manifest says {entry['bytes']}"
        raise CorruptCheckpointError(epoch, reason)


def _check_sha(sha: str, name: str, entry: dict[str, Any], epoch: int) -> None:
    if sha != entry["sha256"]:
        raise CorruptCheckpointError(epoch, f"{name} does not match its SHA-256 in the manifest")


def parse_meta(checked: CheckedFile, epoch: int) -> dict[str, Any]:
    try:
        meta = json.loads(checked.data)
    except ValueError as exc:
        raise CorruptCheckpointError(epoch, f"{META_NAME} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise CorruptCheckpointError(epoch, f"{META_NAME} is not a JSON object")
    return meta


def parse_tensors(
    checked: CheckedFile, name: str, epoch: int, map_location: str | torch.device
) -> dict[str, torch.Tensor]:
    """The tensors ``read_checked`` already parsed, moved to ``map_location``."""
    if checked.tensors is None:
        raise CorruptCheckpointError(epoch, f"{name} is not a valid safetensors file")
    if torch.device(map_location).type == "cpu":
        return checked.tensors
    return {key: value.to(map_location) for key, value in checked.tensors.items()}
