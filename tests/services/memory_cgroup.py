"""A real memory cgroup for the tests that need a memory limit: the kernel enforces it (its OOM
killer ends a process tree that goes over) exactly as on a cluster node or in a container.

A group is made under this process's own memory cgroup (cgroup v1: `memory.limit_in_bytes`, and
`memory.memsw.limit_in_bytes` where swap accounting exists, so swap cannot stretch the limit;
cgroup v2: `memory.max` and `memory.swap.max` 0), and a command runs in it through a small shell
wrapper that adds itself to the group before it execs the command: every process the command
starts (Snakemake, its jobs, the preloaded worker) is charged to the group. The group is removed
when the test ends, after any process still in it (only ones the test started) is killed.

Where no group can be made (not root, no memory controller, a read-only /sys/fs/cgroup), the
test skips with the reason.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from leanhpo.memory.limits import CGROUP_V1, CGROUP_V2, CgroupFiles, find_cgroups

RMDIR_TRIES = 50  # a killed process leaves the group a moment after its exit status is seen


@dataclass(frozen=True)
class MemoryCgroup:
    version: str
    path: Path
    limit: int

    @property
    def files(self) -> CgroupFiles:
        return CgroupFiles(self.version, self.path)

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the group (the wrapper joins it, then execs `argv`)."""
        join = 'echo $$ > "$0" && exec "$@"'
        return ["sh", "-c", join, str(self.path / "cgroup.procs"), *argv]

    def run(self, argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), capture_output=True, text=True, **kwargs)  # type: ignore[call-overload, no-any-return]

    def oom_kills(self) -> int:
        return self.files.oom_kills() or 0

    def pids(self) -> list[int]:
        text = (self.path / "cgroup.procs").read_text()
        return [int(pid) for pid in text.split()]


def _parent() -> CgroupFiles:
    if os.geteuid() != 0:
        pytest.skip(f"a memory cgroup can only be made by root here (uid {os.geteuid()})")
    groups = find_cgroups()
    if not groups:
        pytest.skip("no memory cgroup controller is mounted (/proc/self/cgroup, mountinfo)")
    return groups[0]


def _make(parent: CgroupFiles, limit: int) -> MemoryCgroup:
    path = parent.path / f"leanhpo-test-{uuid.uuid4().hex[:12]}"
    try:
        path.mkdir()
    except OSError as error:
        pytest.skip(f"cannot make a memory cgroup under {parent.path}: {error}")
    group = MemoryCgroup(parent.version, path, limit)
    try:
        if parent.version == CGROUP_V1:
            (path / "memory.limit_in_bytes").write_text(str(limit))
            if (path / "memory.memsw.limit_in_bytes").exists():
                (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
        else:
            (path / "memory.max").write_text(str(limit))
            with contextlib.suppress(FileNotFoundError):  # no swap controller: no swap
                (path / "memory.swap.max").write_text("0")
    except OSError as error:
        _remove(group)
        pytest.skip(f"cannot set a memory limit on {path}: {error}")
    return group


def _remove(group: MemoryCgroup) -> None:
    for _ in range(RMDIR_TRIES):
        with contextlib.suppress(OSError):
            for pid in group.pids():  # only processes this test started are in the group
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        try:
            group.path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"could not remove the test's memory cgroup {group.path}")


@pytest.fixture
def memory_cgroup() -> Iterator[Callable[[int], MemoryCgroup]]:
    """`memory_cgroup(limit_bytes)` makes a group with that limit; all are removed after."""
    made: list[MemoryCgroup] = []
    parent: CgroupFiles | None = None

    def make(limit: int) -> MemoryCgroup:
        nonlocal parent
        parent = parent or _parent()
        if parent.version not in (CGROUP_V1, CGROUP_V2):
            pytest.skip(f"unknown cgroup interface {parent.version}")
        made.append(_make(parent, limit))
        return made[-1]

    yield make
    for group in made:
        _remove(group)
