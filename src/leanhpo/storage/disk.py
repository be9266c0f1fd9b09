"""Disk facts: usage of the filesystem holding a path, the largest artifacts, a monitor thread.

psutil does the measuring (one statvfs call per check), so a check before every save and a
background sample every half minute cost well under 0.1% of a core (bench/monitor_cpu.py).
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

LOG = logging.getLogger(__name__)
MONITOR_INTERVAL_S = 30.0
LARGEST_ARTIFACTS = 10


@dataclass(frozen=True)
class DiskUsage:
    path: str
    total: int
    used: int
    free: int

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "free_percent": round(self.free_percent, 2)}


def existing_ancestor(path: Path) -> Path:
    """`path` or its nearest existing parent: the folder a study will be created in."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_usage(path: Path) -> DiskUsage:
    where = existing_ancestor(path)
    usage = psutil.disk_usage(str(where))
    return DiskUsage(str(where), int(usage.total), int(usage.used), int(usage.free))


def _files(root: Path) -> Iterator[tuple[int, Path]]:
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            try:
                yield path.lstat().st_size, path
            except OSError:  # removed while we walk
                continue


def largest_artifacts(root: Path, count: int = LARGEST_ARTIFACTS) -> list[dict[str, Any]]:
    """The `count` largest artifacts under `root`: checkpoint folders count as one artifact
    (that is what a user deletes), other files individually."""
    sizes: dict[Path, int] = {}
    for size, path in _files(root):
        key = next(
            (
                p
                for p in path.parents
                if p.name.startswith("epoch_") and p.parent.name == "checkpoints"
            ),
            path,
        )
        key = next((p for p in path.parents if p.parent.name == "quarantine"), key)
        sizes[key] = sizes.get(key, 0) + size
    top = heapq.nlargest(count, sizes.items(), key=lambda item: item[1])
    return [{"path": str(path), "bytes": size} for path, size in top]


class DiskMonitor:
    """Samples the free space of the filesystem holding `path` every `interval` seconds in a
    daemon thread, warns once each time it drops below `min_free_percent`, and remembers the
    lowest value seen (reported with the trial)."""

    def __init__(
        self, path: Path, min_free_percent: float, interval: float = MONITOR_INTERVAL_S
    ) -> None:
        self.path = Path(path)
        self.min_free_percent = min_free_percent
        self.interval = interval
        self.lowest: DiskUsage | None = None
        self.samples = 0
        self._below = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leanhpo-disk-monitor", daemon=True)

    def __enter__(self) -> DiskMonitor:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 1)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> DiskUsage:
        usage = disk_usage(self.path)
        self.samples += 1
        if self.lowest is None or usage.free < self.lowest.free:
            self.lowest = usage
        below = usage.free_percent < self.min_free_percent
        if below and not self._below:
            LOG.warning(
                "free disk on %s is %.1f%% (%d bytes), below retention.min_free_disk_percent=%s",
                usage.path,
                usage.free_percent,
                usage.free,
                self.min_free_percent,
            )
        self._below = below
        return usage
