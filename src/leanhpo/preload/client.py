"""The job's side of the preloaded worker: hand the call to the server, or make it here.

Standard library only: importing this must cost nothing, or the job pays what it saves.

Protocol (one connection per job, Unix stream socket):
- job -> server: an 8-byte length, sent with the job's fds 0, 1 and 2 (SCM_RIGHTS), then
  that many bytes of JSON: the call (`module:function` and keyword arguments) and the
  process state the child must take over (cwd, environment, argv, sys.path, umask, process
  group, CPU affinity, interpreter).
- server -> job, one line each: `refused <reason>` (nothing was started: run here),
  `pid <n> <pgid>` (from the child, first thing), `done <code>` (from the child, last thing) and
  `exit <wait status>` (from the server, once it has reaped the child). The job never sends
  anything after the request, so the child reads any readiness of the socket as the job's
  death.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any, NoReturn

from leanhpo.preload import PRELOAD_ENV

HEADER = struct.Struct("!Q")
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GROUP_SIGNALS = (signal.SIGINT, signal.SIGHUP)
CONNECT_TIMEOUT_S = 5.0
# Exit status of a job whose child's status was lost with the server (see module docstring).
STATUS_LOST = 1


def call(target: str, kwargs: dict[str, Any]) -> Any:
    """Import `module:function` and call it with `kwargs`."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(**kwargs)


def gpu_visible() -> bool:
    """Whether this job could see a GPU (without importing torch, which is what we avoid)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    nvidia = Path("/proc/driver/nvidia/gpus")
    return (nvidia.is_dir() and any(nvidia.iterdir())) or Path("/dev/kfd").exists()


def cpu_job(device: str) -> bool:
    """Whether a trial on `device` (train.device) runs on the CPU: only those are preloaded.
    A child forked from a process that has initialised CUDA cannot use it; the server should
    never do so, but that is untested here (no GPU), so GPU trials start their own process."""
    return device == "cpu" or (device == "auto" and not gpu_visible())


def run_job(target: str, preload: bool = True, **kwargs: Any) -> None:
    """Make the call `target(**kwargs)` in the driver's preloaded worker when there is one and
    `preload` holds, else in this process. Returns only when the call ran here."""
    address = os.environ.get(PRELOAD_ENV)
    if preload and address:
        status = _delegate(address, target, kwargs)
        if status is not None:
            _exit_with(status)
    call(target, kwargs)


def _request(target: str, kwargs: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "target": target,
            "kwargs": kwargs,
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "argv": sys.argv,
            "path": sys.path,
            "umask": _umask(),
            "pgid": os.getpgid(0),
            "affinity": sorted(os.sched_getaffinity(0)),
            "prefix": sys.prefix,
            "executable": os.path.realpath(sys.executable),
        }
    ).encode()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _note(text: str) -> None:
    print(f"leanhpo: {text}", file=sys.stderr, flush=True)


class _Forwarder:
    """Signals the job gets while the child runs go to the child; any that come before its
    pid is known are kept and sent once it is. SIGINT and SIGHUP come from the terminal to
    the whole foreground process group: a child that joined the job's group has them already,
    and a second one would cut its unwinding short, so those two are forwarded only to a
    child in another group. SIGTERM is sent to the job alone (Snakemake's terminate, kill)."""

    def __init__(self) -> None:
        self.child: int | None = None
        self.same_group = False
        self.pending: list[int] = []
        self.previous = {sig: signal.signal(sig, self._handle) for sig in FORWARDED_SIGNALS}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.child is None:
            self.pending.append(signum)
            return
        if self.same_group and signum in GROUP_SIGNALS:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.child, signum)

    def started(self, pid: int, pgid: int) -> None:
        self.child, self.same_group = pid, pgid == os.getpgid(0)
        for signum in self.pending:
            self._handle(signum, None)
        self.pending.clear()

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        for signum in self.pending:  # nothing was started: the job takes them itself
            os.kill(os.getpid(), signum)


def _delegate(address: str, target: str, kwargs: dict[str, Any]) -> int | None:
    """Run the call in a forked child of the server; its wait status, or None when nothing
    was started (then the caller runs the call here)."""
    try:
        payload = _request(target, kwargs)
    except (TypeError, ValueError) as error:  # not JSON (a YAML date, say): run it here
        _note(f"this job's call cannot be sent to the preloaded worker ({error}); running here")
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect(address)
        sock.settimeout(None)  # the server accepts once its imports are done: wait for them
        socket.send_fds(sock, [HEADER.pack(len(payload))], [0, 1, 2])
        sock.sendall(payload)
    except OSError as error:
        sock.close()
        _note(f"preloaded worker unavailable ({error}); the trial runs in this process")
        return None
    forwarder = _Forwarder()
    try:
        return _follow(sock, forwarder)
    finally:
        sock.close()


def _follow(sock: socket.socket, forwarder: _Forwarder) -> int | None:
    child = done = status = None
    with sock.makefile("rb") as replies:
        for line in replies:
            word, _, value = line.decode().strip().partition(" ")
            if word == "refused":
                _note(f"preloaded worker refused this job ({value}); the trial runs here")
            elif word == "pid":
                pid, _, pgid = value.partition(" ")
                child = int(pid)
                forwarder.started(child, int(pgid))
            elif word == "done":
                done = int(value)
            elif word == "exit":
                status = int(value)
    if child is None:  # refused, or the server died before forking: nothing ran
        forwarder.restore()
        return None
    if status is not None:
        return status
    if done is not None:  # the server died; the child said how it ended
        return done << 8
    _note(
        f"the preloaded worker and trial process {child} ended without a status; "
        "rerun with --rerun-incomplete to resume the trial"
    )
    return STATUS_LOST << 8


def _exit_with(status: int) -> NoReturn:
    """End this process as the child ended: the same exit code, or the same signal."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        with contextlib.suppress(OSError, ValueError):  # SIGKILL's cannot be set, nor caught
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        code = 128 - code  # the signal did not end us (it cannot be caught, but be sure)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
