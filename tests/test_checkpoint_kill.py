"""kill -9 of a real process in the middle of checkpoint saves and deletes.

A single helper process imports torch once and forks one writer per round, so that
twenty kills cost seconds instead of twenty torch imports. The test SIGKILLs the forked
writer after a seeded random delay, then opens a fresh store and checks that every
committed checkpoint verifies and that nothing needs quarantine.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from leanhpo.checkpoints import CheckpointStore

KILL_ROUNDS = 20
MAX_DELAY_S = {"save": 0.3, "delete": 0.03, "strip": 0.03}
READ_TIMEOUT_S = 60.0
SEED = 20240917

# Mode "save" writes ~4 MB checkpoints in a loop, keeping the last two, so kills land in
# saves. Deleting is ~15 times faster than writing, so mode "delete" first tops the store
# up to DELETE_POOL checkpoints of many files, says "ready", then deletes all but the
# newest; the test kills it within DELETE_MAX_DELAY_S, mostly inside a delete. Mode "strip"
# tops the pool up with full checkpoints whose optimizer state is many files, then strips
# each to weights only and deletes the stripped ones, so kills land before, inside and after
# a strip's commit (the manifest's rename).
FORK_SERVER = r"""
import os, sys, traceback
from pathlib import Path
import torch
torch.set_num_threads(1)
from leanhpo.checkpoints import CheckpointStore

BIG = {"model": {"w": torch.randn(1024, 1024)}, "optimizer": {"s": torch.ones(3)}}
MANY_FILES = {f"g{i}": {"x": torch.randn(16)} for i in range(128)}
STRIPPABLE = {"model": {"w": torch.randn(64)}, **MANY_FILES}
DELETE_POOL = 12

def say_ready():
    os.write(1, f"ready {os.getpid()}\n".encode())

def next_epoch(store):
    infos = store.list()
    return infos[-1].epoch + 1 if infos else 0

def churn_saves(store):
    epoch = next_epoch(store)
    say_ready()
    while epoch <= 9999:
        store.save(epoch, BIG, {"epoch": epoch})
        if epoch >= 2:
            store.delete(epoch - 2)
        epoch += 1

def churn_deletes(store):
    ready = False
    while True:
        epoch = next_epoch(store)
        for new in range(epoch, epoch + DELETE_POOL - len(store.list())):
            store.save(new, MANY_FILES, {"epoch": new})
        # Listed before "ready": on a loaded machine, reading twelve manifests can outlast the
        # test's whole delay, and no kill would land in a delete.
        doomed = store.list()[:-1]
        if not ready:
            say_ready()
            ready = True
        for info in doomed:
            store.delete(info.epoch)

def churn_strips(store):
    ready = False
    while True:
        epoch = next_epoch(store)
        for new in range(epoch, epoch + DELETE_POOL - len(store.list())):
            store.save(new, STRIPPABLE, {"epoch": new})
        stripped = store.list()[:-1]  # listed before "ready", as in churn_deletes
        if not ready:
            say_ready()
            ready = True
        for info in stripped:
            store.strip(info.epoch)
        for info in store.list()[:-1]:
            store.delete(info.epoch)

CHURN = {"save": churn_saves, "delete": churn_deletes, "strip": churn_strips}

for line in sys.stdin:
    mode, root = line.split()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            store = CheckpointStore(Path(root))
            CHURN[mode](store)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    print("done", status, flush=True)
"""


class ForkServer:
    """The helper process, with line reads that time out instead of hanging the suite."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", FORK_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        self._buffer = b""

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")

    def read_line(self) -> str:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + READ_TIMEOUT_S
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(remaining, 0))
            if not ready:
                raise TimeoutError("the fork server did not answer")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise EOFError("the fork server exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def fork_server() -> Iterator[ForkServer]:
    server = ForkServer()
    yield server
    server.close()


def kill_writer_at_random(server: ForkServer, mode: str, root: Path, rng: random.Random) -> None:
    server.send(f"{mode} {root}")
    word, pid = server.read_line().split()
    assert word == "ready"
    time.sleep(rng.uniform(0, MAX_DELAY_S[mode]))
    os.kill(int(pid), signal.SIGKILL)
    word, status = server.read_line().split()
    assert word == "done"
    # Killed by our signal, not finished or crashed on its own.
    assert os.WIFSIGNALED(int(status)) and os.WTERMSIG(int(status)) == signal.SIGKILL


def interrupted_strips(root: Path) -> Counter[str]:
    """Strips a kill cut short: before the commit (its temporary manifest is there) or after
    it (the weights-only manifest no longer lists files that are still there)."""
    found: Counter[str] = Counter()
    for folder in root.glob("epoch_*"):
        names = {p.name for p in folder.iterdir()}
        if any(name.startswith(".tmp-") for name in names):
            found["before commit"] += 1
        manifest = json.loads((folder / "MANIFEST.json").read_text())
        if manifest.get("kind") == "weights" and names - set(manifest["files"]) - {"MANIFEST.json"}:
            found["after commit"] += 1
    return found


def assert_recoverable(root: Path) -> Counter[str]:
    """What the next run sees; returns the kinds of uncommitted folders it cleaned and of the
    strips it finished."""
    leftovers = Counter(p.name.split("-")[0] for p in root.iterdir() if p.name.startswith("."))
    leftovers += interrupted_strips(root)
    store = CheckpointStore(root)
    assert store.cleaned_tmp == sum(v for k, v in leftovers.items() if k.startswith("."))
    assert not [p for p in root.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    assert not interrupted_strips(root)
    infos = store.list()
    for info in infos:
        assert info.has_manifest
        store.verify(info.epoch)
        files = {p.name for p in info.path.iterdir()}
        # Never a checkpoint that lacks its optimizer state while it says full, nor a
        # weights-only one that still carries it.
        assert (info.kind == "full") == (
            "g0.safetensors" in files or "optimizer.safetensors" in files
        )
    latest = store.load_latest_valid()
    assert store.quarantined == []
    if infos:
        assert latest is not None and latest.info.epoch == infos[-1].epoch
        assert latest.meta == {"epoch": infos[-1].epoch}
    else:
        assert latest is None
    return leftovers


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["save", "delete", "strip"])
def test_kill_during_checkpoint_io_is_recoverable(
    fork_server: ForkServer, tmp_path: Path, mode: str
) -> None:
    root = tmp_path / "trial_0000" / "checkpoints"
    rng = random.Random(f"{SEED}-{mode}")
    cleaned: Counter[str] = Counter()
    for _ in range(KILL_ROUNDS):
        kill_writer_at_random(fork_server, mode, root, rng)
        cleaned += assert_recoverable(root)
    print(f"{mode}: uncommitted folders cleaned after kills: {dict(cleaned)}")
    # The kills did land inside writes, deletes or strips, not only between them.
    landed = {"save": [".tmp"], "delete": [".trash"], "strip": ["before commit", "after commit"]}
    assert sum(cleaned[kind] for kind in landed[mode]) > 0
    assert not (tmp_path / "trial_0000" / "quarantine").exists()
