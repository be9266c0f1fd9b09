"""Atomic, self-verifying checkpoint folders (SPEC section 5, "Storage guarantees").

One committed checkpoint is the folder ``<root>/epoch_<EEEE>/`` holding one
``<group>.safetensors`` per tensor group, ``meta.json`` and, written last,
``MANIFEST.json`` with the SHA-256 and size of every other file. A checkpoint is
written into a ``.tmp-*`` folder and renamed into place only once every byte is
fsynced, so a folder named ``epoch_<EEEE>`` is complete by construction, and a kill at
any instant leaves either the old state or the new one plus a ``.tmp-*`` folder that
the next ``CheckpointStore`` removes. Nothing is ever read with pickle.

Every save is *full* (a resume point). ``strip`` turns a committed checkpoint into a
*weights-only* one in place: the manifest that lists only the kept groups replaces the full
one in a single rename, and only then are the dropped files unlinked. A kill at any instant
leaves the full checkpoint or the weights-only one, each verifying; dropped files left behind
are no longer listed and the next ``CheckpointStore`` removes them.

One writer per ``root``: opening a store removes the ``.tmp-*``/``.trash-*`` folders of
the root, which would break a save running in another process on the same root.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from leanhpo.checkpoints.manifest import (
    CHECKPOINT_FORMAT,
    FULL,
    MANIFEST_NAME,
    META_NAME,
    TENSOR_SUFFIX,
    WEIGHTS_ONLY,
    CorruptCheckpointError,
    encode_meta,
    epoch_id,
    fsync_dir,
    parse_meta,
    parse_tensors,
    read_checked,
    read_manifest,
    stream_check,
    weights_only_manifest,
    write_contents,
    write_hashed,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointInfo",
    "CheckpointStore",
    "CorruptCheckpointError",
    "LoadedCheckpoint",
    "epoch_id",
]

REASON_NAME = "REASON.txt"
QUARANTINE_DIRNAME = "quarantine"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
MAX_EPOCH = 9999  # folder names carry four digits
EPOCH_DIR_PATTERN = re.compile(r"^epoch_(\d{4})$")
GROUP_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
# What a weights-only checkpoint keeps: the model's tensors (meta.json is always kept).
WEIGHT_GROUPS = frozenset({"model"})


@dataclass(frozen=True)
class CheckpointInfo:
    """Cheap facts about one checkpoint folder; ``sha256`` is that of MANIFEST.json.

    ``saved_sha256`` is the SHA-256 of the manifest the checkpoint was saved with: the same as
    ``sha256`` for a full checkpoint, the full manifest's for a stripped one. Reports and
    ledgers name a checkpoint by it, so stripping does not change which checkpoint they list.
    """

    id: str
    epoch: int
    path: Path
    sha256: str
    bytes: int
    has_manifest: bool = True
    kind: str = FULL
    saved_sha256: str = ""

    def __post_init__(self) -> None:
        if not self.saved_sha256:
            object.__setattr__(self, "saved_sha256", self.sha256)

    @property
    def resumable(self) -> bool:
        return self.kind == FULL

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A verified checkpoint in memory: tensor groups by name plus the parsed meta.json."""

    info: CheckpointInfo
    groups: dict[str, dict[str, torch.Tensor]]
    meta: dict[str, Any]


class CheckpointStore:
    """The checkpoints of one trial under ``root``; knows nothing of what they contain."""

    def __init__(
        self,
        root: Path,
        quarantine_dir: Path | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.root = Path(root)
        default_quarantine = self.root.parent / QUARANTINE_DIRNAME
        self.quarantine_dir = default_quarantine if quarantine_dir is None else Path(quarantine_dir)
        self.log = log or logging.getLogger(__name__)
        self.quarantined: list[dict[str, Any]] = []
        self.cleaned_tmp = self._clean_uncommitted()

    # -- writing ---------------------------------------------------------------------

    def save(
        self, epoch: int, groups: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]
    ) -> CheckpointInfo:
        """Write and commit ``epoch``; a previous folder of that epoch goes to quarantine."""
        _check_epoch(epoch)
        _check_group_names(groups)
        meta_bytes = encode_meta(meta)  # fail on bad meta before touching the disk
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}{epoch_id(epoch)}-{uuid.uuid4().hex}"
        tmp.mkdir()
        final = self._folder(epoch)
        try:
            manifest_raw, total = write_contents(tmp, epoch, groups, meta_bytes)
            fsync_dir(tmp)
            if final.exists():
                self._supersede(final, epoch)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(self.root)
        sha = hashlib.sha256(manifest_raw).hexdigest()
        return CheckpointInfo(epoch_id(epoch), epoch, final, sha, total)

    def _supersede(self, final: Path, epoch: int) -> None:
        """Make way for a new save of ``epoch``: a weights-only copy is deleted (a trial that
        restarted from scratch recomputes the same epoch, this time as a resume point); any
        other folder goes to quarantine, since it may be the only record of something."""
        if _folder_info(final, epoch).kind == WEIGHTS_ONLY:
            self.delete(epoch)
        else:
            self.quarantine(epoch, "superseded")

    def strip(self, epoch: int, keep_groups: frozenset[str] = WEIGHT_GROUPS) -> int:
        """Make ``epoch`` weights-only; return the bytes freed (0 when it already is).

        The new manifest replaces the old one with one atomic rename (the commit point), and
        only then are the dropped files unlinked, so no checkpoint ever lacks its optimizer
        while its manifest says full. Raises CorruptCheckpointError when the manifest does not
        verify: a checkpoint that cannot be read is left for ``load`` to quarantine.
        """
        folder = self._existing_folder(epoch)
        files, raw = read_manifest(folder, epoch)
        if json.loads(raw).get("kind", FULL) == WEIGHTS_ONLY:
            return self._drop_unlisted(folder, files)
        stripped, dropped = weights_only_manifest(raw, epoch, keep_groups)
        tmp = folder / f"{TMP_PREFIX}{MANIFEST_NAME}-{uuid.uuid4().hex}"
        try:
            write_hashed(tmp, stripped)
            os.replace(tmp, folder / MANIFEST_NAME)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        fsync_dir(folder)
        freed = self._drop_unlisted(folder, {name: None for name in files if name not in dropped})
        self.log.info(
            "stripped checkpoint %s to weights only (%d bytes freed)", epoch_id(epoch), freed
        )
        return freed

    def _drop_unlisted(self, folder: Path, listed: dict[str, Any]) -> int:
        """Unlink the files a weights-only manifest no longer lists (a strip's second half)."""
        freed = 0
        for entry in folder.iterdir():
            if entry.name in listed or entry.name == MANIFEST_NAME or not entry.is_file():
                continue
            size = entry.stat().st_size
            with contextlib.suppress(FileNotFoundError):  # another process finished it first
                entry.unlink()
                freed += size
        if freed:
            fsync_dir(folder)
        return freed

    def delete(self, epoch: int) -> bool:
        """Remove ``epoch``; False when it is already gone (a resumed prune may repeat).

        The rename to ``.trash-*`` comes first so that a kill inside ``rmtree`` never
        leaves a half-deleted folder that still looks committed.
        """
        source = self._folder(epoch)
        if not source.is_dir():
            return False
        trash = self.root / f"{TRASH_PREFIX}{epoch_id(epoch)}-{uuid.uuid4().hex}"
        try:
            os.rename(source, trash)
        except FileNotFoundError:  # another process deleted it first
            return False
        fsync_dir(self.root)
        # Another process opening this store clears trash folders too; gone is gone.
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(trash)
        return True

    def quarantine(self, epoch: int, reason: str) -> Path:
        """Move ``epoch`` aside (never delete it) with a REASON.txt saying why."""
        source = self._folder(epoch)
        if not source.is_dir():
            raise FileNotFoundError(f"no checkpoint {epoch_id(epoch)} in {self.root}")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        dest = self.quarantine_dir / f"{epoch_id(epoch)}-{stamp}-{uuid.uuid4().hex[:8]}"
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        self._move(source, dest, epoch)
        text = f"{epoch_id(epoch)} from {self.root}\nquarantined at {stamp}\nreason: {reason}\n"
        write_hashed(dest / REASON_NAME, text.encode())
        fsync_dir(dest)
        fsync_dir(self.quarantine_dir)
        fsync_dir(self.root)
        self.quarantined.append(
            {"id": epoch_id(epoch), "epoch": epoch, "reason": reason, "destination": str(dest)}
        )
        self.log.warning("quarantined checkpoint %s (%s) to %s", epoch_id(epoch), reason, dest)
        return dest

    # -- reading ---------------------------------------------------------------------

    def list(self) -> list[CheckpointInfo]:
        """All ``epoch_<EEEE>`` folders by epoch, flagged when MANIFEST.json is missing.

        Cheap: reads only the small manifests, never hashes the tensor files.
        """
        if not self.root.is_dir():
            return []
        infos = []
        for entry in self.root.iterdir():
            match = EPOCH_DIR_PATTERN.match(entry.name)
            if match and entry.is_dir():
                infos.append(_folder_info(entry, int(match.group(1))))
        return sorted(infos, key=lambda info: info.epoch)

    def total_bytes(self) -> int:
        """Disk bytes of all ``epoch_<EEEE>`` folders (tmp and trash folders excluded)."""
        return sum(info.bytes for info in self.list())

    def verify(self, epoch: int) -> None:
        """Stream-hash every file against the manifest; raise CorruptCheckpointError."""
        folder = self._existing_folder(epoch)
        files, _ = read_manifest(folder, epoch)
        for name, entry in files.items():
            stream_check(folder / name, name, entry, epoch)
        self._log_extra_files(folder, files, epoch)

    def load(self, epoch: int, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
        """Read each file once, check its hash, then parse it with safetensors / json."""
        folder = self._existing_folder(epoch)
        files, manifest_raw = read_manifest(folder, epoch)
        if META_NAME not in files:
            raise CorruptCheckpointError(epoch, f"{META_NAME} is not listed in the manifest")
        groups: dict[str, dict[str, torch.Tensor]] = {}
        meta: dict[str, Any] = {}
        for name, entry in files.items():
            data = read_checked(folder / name, name, entry, epoch)
            if name == META_NAME:
                meta = parse_meta(data, epoch)
            elif name.endswith(TENSOR_SUFFIX):
                group = name.removesuffix(TENSOR_SUFFIX)
                groups[group] = parse_tensors(data, name, epoch, map_location)
        self._log_extra_files(folder, files, epoch)
        info = _folder_info(folder, epoch, manifest_raw)
        return LoadedCheckpoint(info, groups, meta)

    def load_latest_valid(
        self, map_location: str | torch.device = "cpu", resumable_only: bool = False
    ) -> LoadedCheckpoint | None:
        """Newest checkpoint that verifies; corrupt newer ones are quarantined on the way.

        With ``resumable_only`` weights-only checkpoints are passed over: a resume needs the
        optimizer, scheduler and RNG state, and never goes on with a fresh optimizer."""
        for info in reversed(self.list()):
            if resumable_only and not info.resumable:
                continue
            try:
                return self.load(info.epoch, map_location)
            except CorruptCheckpointError as exc:
                self.log.warning("%s; trying the previous checkpoint", exc)
                self.quarantine(info.epoch, exc.reason)
        return None

    # -- helpers ---------------------------------------------------------------------

    def _folder(self, epoch: int) -> Path:
        return self.root / epoch_id(epoch)

    def _existing_folder(self, epoch: int) -> Path:
        folder = self._folder(epoch)
        if not folder.is_dir():
            raise FileNotFoundError(f"no checkpoint {epoch_id(epoch)} in {self.root}")
        return folder

    def _clean_uncommitted(self) -> int:
        """Remove folders left by a killed save or delete: they were never committed. Finish
        any strip a kill interrupted (files its manifest no longer lists)."""
        if not self.root.is_dir():
            return 0
        leftovers = [
            entry
            for entry in self.root.iterdir()
            if entry.name.startswith((TMP_PREFIX, TRASH_PREFIX))
        ]
        for info in self.list():
            self._finish_strip(info)
        for entry in leftovers:
            with contextlib.suppress(FileNotFoundError):  # cleared by another process
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        if leftovers:
            self.log.warning(
                "removed %d uncommitted checkpoint folder(s) from %s", len(leftovers), self.root
            )
        return len(leftovers)

    def _finish_strip(self, info: CheckpointInfo) -> None:
        # Gone (another process deleted it) or corrupt (``load`` quarantines it): nothing to do.
        with contextlib.suppress(FileNotFoundError, CorruptCheckpointError):
            for entry in info.path.iterdir():
                if entry.name.startswith(TMP_PREFIX):  # a strip killed before its commit
                    entry.unlink()
            if info.kind == WEIGHTS_ONLY:  # a strip killed after its commit
                files, _ = read_manifest(info.path, info.epoch)
                if self._drop_unlisted(info.path, files):
                    self.log.warning("finished stripping checkpoint %s", info.id)

    def _move(self, source: Path, dest: Path, epoch: int) -> None:
        """Rename; across filesystems copy first, then delete, so the source never half-goes."""
        try:
            os.rename(source, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.copytree(source, dest)
            self.delete(epoch)

    def _log_extra_files(self, folder: Path, files: dict[str, Any], epoch: int) -> None:
        extra = sorted({p.name for p in folder.iterdir()} - set(files) - {MANIFEST_NAME})
        if extra:
            self.log.warning("checkpoint %s has unlisted files %s", epoch_id(epoch), extra)


def _check_epoch(epoch: int) -> None:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
        raise ValueError(f"epoch must be an int in [0, {MAX_EPOCH}], got {epoch!r}")


def _check_group_names(groups: dict[str, dict[str, torch.Tensor]]) -> None:
    for name in groups:
        if not isinstance(name, str) or not GROUP_NAME_PATTERN.match(name):
            raise ValueError(f"group name {name!r} must match {GROUP_NAME_PATTERN.pattern}")


def _folder_bytes(folder: Path) -> int:
    return sum(entry.stat().st_size for entry in folder.iterdir() if entry.is_file())


def checkpoint_info(folder: Path) -> CheckpointInfo | None:
    """Cheap facts about the checkpoint folder ``folder`` (``.../epoch_<EEEE>``), or None when
    it is not there; opens no store, so it is safe on a trial another process is running."""
    match = EPOCH_DIR_PATTERN.match(folder.name)
    if match is None or not folder.is_dir():
        return None
    try:
        return _folder_info(folder, int(match.group(1)))
    except FileNotFoundError:  # deleted while it was read
        return None


def _folder_info(folder: Path, epoch: int, raw: bytes | None = None) -> CheckpointInfo:
    """Facts from the manifest as it is (not verified: ``load`` and ``verify`` do that)."""
    manifest = folder / MANIFEST_NAME
    if raw is None and manifest.is_file():
        raw = manifest.read_bytes()
    if raw is None:
        return CheckpointInfo(epoch_id(epoch), epoch, folder, "", _folder_bytes(folder), False)
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = {}
    parsed = parsed if isinstance(parsed, dict) else {}
    return CheckpointInfo(
        epoch_id(epoch),
        epoch,
        folder,
        hashlib.sha256(raw).hexdigest(),
        _folder_bytes(folder),
        kind=str(parsed.get("kind", FULL)),
        saved_sha256=str(parsed.get("stripped_from", "")),
    )
