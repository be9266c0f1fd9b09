"""How much memory this process may use and how much is in use: the tightest of its memory
cgroups (v1 or v2: its own group and every ancestor with a limit) and the machine's memory; on
CUDA, the device's. Also the kernel's OOM-kill counter and the process's peak RSS.

psutil reads the machine (`virtual_memory`) and the process's RSS. It reads neither cgroups nor
a resettable peak RSS, so those come from /sys/fs/cgroup and /proc/self here: a few small files,
cheap enough to read before every forward pass (about 50 us for a group and the machine).
"""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

# cgroup v1 writes "no limit" as 9223372036854771712 (the largest page count, in bytes).
UNLIMITED = 1 << 60
CGROUP_V1, CGROUP_V2 = "cgroup v1", "cgroup v2"
PROC = Path("/proc/self")
# v1 names the hierarchical counter total_inactive_file; v2's inactive_file is hierarchical.
INACTIVE_FILE = {CGROUP_V1: ("total_inactive_file", "inactive_file"), CGROUP_V2: ("inactive_file",)}
FILES = {  # limit, usage, the file with the oom_kill counter
    CGROUP_V1: ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.oom_control"),
    CGROUP_V2: ("memory.max", "memory.current", "memory.events"),
}


@dataclass(frozen=True)
class MemoryReading:
    """`used` bytes of `limit` at one instant, and what the limit is (`source`)."""

    limit: int
    used: int
    source: str

    @property
    def headroom(self) -> int:
        return max(0, self.limit - self.used)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "headroom": self.headroom}


@dataclass(frozen=True)
class CgroupFiles:
    """One memory cgroup's folder (`version` says which interface its files follow)."""

    version: str
    path: Path

    def _read(self, index: int) -> str:
        return (self.path / FILES[self.version][index]).read_text().strip()

    def limit(self) -> int | None:
        text = self._read(0)
        if text == "max" or int(text) >= UNLIMITED:
            return None
        return int(text)

    def working_set(self) -> int:
        """What the group holds that the kernel cannot simply drop: usage minus the inactive
        page cache (what `docker stats` and the kubelet count). Page cache from reading the data
        or writing checkpoints counts in usage, but is reclaimed before anything is killed."""
        stat = _keyed((self.path / "memory.stat").read_text())
        inactive = next((stat[k] for k in INACTIVE_FILE[self.version] if k in stat), 0)
        return max(0, int(self._read(1)) - inactive)

    def oom_kills(self) -> int | None:
        try:
            return _keyed(self._read(2)).get("oom_kill")
        except OSError:
            return None

    def reading(self) -> MemoryReading | None:
        limit = self.limit()
        if limit is None:
            return None
        return MemoryReading(limit, self.working_set(), f"{self.version} {self.path}")


def _keyed(text: str) -> dict[str, int]:
    pairs = (line.split() for line in text.splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].lstrip("-").isdigit()}


def _mounts(mountinfo: Path) -> dict[str, tuple[str, Path]]:
    """{CGROUP_V1: (root, mount point) of the v1 memory hierarchy, CGROUP_V2: (...)}."""
    found: dict[str, tuple[str, Path]] = {}
    for line in mountinfo.read_text().splitlines():
        head, _, tail = line.partition(" - ")
        fields, kind = head.split(), tail.split()
        if len(fields) < 5 or len(kind) < 3:
            continue
        if kind[0] == "cgroup2":
            found.setdefault(CGROUP_V2, (fields[3], Path(fields[4])))
        elif kind[0] == "cgroup" and "memory" in kind[2].split(","):
            found.setdefault(CGROUP_V1, (fields[3], Path(fields[4])))
    return found


def find_cgroups(proc: Path = PROC) -> list[CgroupFiles]:
    """This process's memory cgroups, its own first, then each ancestor up to the mount."""
    try:
        mounts = _mounts(proc / "mountinfo")
        lines = (proc / "cgroup").read_text().splitlines()
    except OSError:
        return []
    groups: list[CgroupFiles] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        version = CGROUP_V2 if controllers == "" else CGROUP_V1
        if version == CGROUP_V1 and "memory" not in controllers.split(","):
            continue
        if version not in mounts:
            continue
        root, mount = mounts[version]
        if root != "/" and path.startswith(root):  # a container that mounts its own subtree
            path = path[len(root) :]
        folder = mount / path.lstrip("/")
        while True:
            if (folder / FILES[version][0]).is_file():
                groups.append(CgroupFiles(version, folder))
            if folder == mount or mount not in folder.parents:
                break
            folder = folder.parent
    return groups


def physical() -> MemoryReading:
    memory = psutil.virtual_memory()
    return MemoryReading(int(memory.total), int(memory.total - memory.available), "physical memory")


class MemoryWatch:
    """The cgroups found once, read as often as needed: `read()` gives the tightest limit."""

    def __init__(self, groups: list[CgroupFiles]) -> None:
        self.groups = groups

    @classmethod
    def discover(cls) -> MemoryWatch:
        return cls(find_cgroups())

    def read(self) -> MemoryReading:
        """The reading with the least headroom: a cgroup's limit, or the machine's memory
        (which other processes share), whichever leaves less."""
        readings = [physical()]
        for group in self.groups:
            try:
                found = group.reading()
            except (OSError, ValueError):  # the group went away (a test's cgroup), or a race
                continue
            if found is not None:
                readings.append(found)
        return min(readings, key=lambda r: r.headroom)

    def oom_kills(self) -> tuple[str, int] | None:
        """The kernel's count of OOM kills for this process's own group (a kill by the
        machine-wide OOM killer is charged to the victim's group too), and which group."""
        for group in self.groups:
            count = group.oom_kills()
            if count is not None:
                return str(group.path), count
        return None


def process_rss() -> int:
    return int(psutil.Process().memory_info().rss)


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where Linux's
    /proc/self/clear_refs is missing or refused (then the peak since start stands)."""
    try:
        (PROC / "clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    """The most RSS this process has held since start or the last `reset_peak_rss`."""
    try:
        for line in (PROC / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def cuda_reading(index: int) -> MemoryReading:
    """A CUDA device: its total memory, and what is in use (other processes included). Memory
    torch's caching allocator holds but does not use counts as free: it serves the next pass."""
    import torch

    free, total = torch.cuda.mem_get_info(index)
    cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
    name = torch.cuda.get_device_name(index)
    return MemoryReading(int(total), int(total - free - cached), f"cuda:{index} ({name})")
