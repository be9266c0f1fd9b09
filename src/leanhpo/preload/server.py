"""The server side of the preloaded worker (see leanhpo.preload; protocol in client.py).

    python -m leanhpo.preload.server --socket PATH --driver PID [--module NAME ...]

It binds the socket first and imports afterwards: a job that connects during the imports
waits for them instead of importing everything a second time beside them. It stops taking
jobs when the driver process ends, and exits once its last child has ended.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import importlib
import json
import os
import select
import selectors
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, NoReturn

from leanhpo.preload import PRELOADED_ENV
from leanhpo.preload.client import HEADER, call

# What a trial job imports; the child imports anything else it needs itself.
DEFAULT_MODULES = ("leanhpo.trial.job", "leanhpo.tracking.client", "mlflow")
# Variables that libraries read once, at import (the server imported them under its own
# environment), or that the interpreter reads at start: a job whose value differs runs in its
# own process. The thread counts Snakemake sets per job are applied in the child instead.
IMPORT_TIME_PREFIXES = (
    "PYTHON", "LD_", "HF_", "HUGGINGFACE", "TRANSFORMERS", "TOKENIZERS", "TORCH", "PYTORCH",
    "CUDA", "OMP_", "KMP_", "MKL_", "OPENBLAS", "GOTO_", "VECLIB", "NUMEXPR", "NLTK_DATA", "TQDM_",
)  # fmt: skip
THREAD_VARS = frozenset(
    ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
     "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
)  # fmt: skip
UCRED = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid
REQUEST_TIMEOUT_S = 30.0
MAX_REQUEST_BYTES = 64 << 20


def log(text: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} leanhpo preload [{os.getpid()}]: {text}",
          file=sys.stderr, flush=True)  # fmt: skip


def refusal(request: dict[str, Any], peer_uid: int, base_env: dict[str, str]) -> str | None:
    """Why the server must not run this job (None: it may)."""
    if peer_uid != os.getuid():
        return f"uid {peer_uid} is not the server's ({os.getuid()})"
    if request.get("prefix") != sys.prefix or request.get("executable") != os.path.realpath(
        sys.executable
    ):
        return f"another interpreter ({request.get('executable')})"
    env = request["env"]
    changed = {key for key in env.keys() | base_env.keys() if env.get(key) != base_env.get(key)}
    read_at_import = sorted(
        key for key in changed - THREAD_VARS if key.startswith(IMPORT_TIME_PREFIXES)
    )
    if read_at_import:
        return f"the environment differs in {', '.join(read_at_import)}"
    return None


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    conn.settimeout(REQUEST_TIMEOUT_S)
    header, fds, _flags, _address = socket.recv_fds(conn, HEADER.size, 3)
    try:
        if len(header) != HEADER.size or len(fds) != 3:
            raise ValueError("malformed request header")
        (size,) = HEADER.unpack(header)
        if size > MAX_REQUEST_BYTES:
            raise ValueError(f"request of {size} bytes")
        chunks, left = [], size
        while left:
            chunk = conn.recv(min(left, 1 << 20))
            if not chunk:
                raise ValueError("request cut short")
            chunks.append(chunk)
            left -= len(chunk)
        return json.loads(b"".join(chunks)), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


class Server:
    def __init__(self, path: str, driver_pid: int) -> None:
        self.path = path
        self.driver = os.pidfd_open(driver_pid)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)  # only this user may connect (and the uid is checked as well)
        try:
            self.listener.bind(path)
        finally:
            os.umask(old)
        self.listener.listen(64)
        self.children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, conn)
        self.selector = selectors.DefaultSelector()
        # The environment the server started with, against which a job's is compared; and
        # what the imports added to it (torch sets KMP_* and TORCHINDUCTOR_* variables), which a
        # job's own imports would have added to its environment too.
        self.base_env = dict(os.environ)
        self.import_env: dict[str, str] = {}

    def preload(self, modules: list[str]) -> None:
        started = time.monotonic()
        for name in modules:
            importlib.import_module(name)
        self.import_env = {k: v for k, v in os.environ.items() if k not in self.base_env}
        # Objects that exist now are shared with every child: keep the collector off them, so
        # children neither copy their pages nor pay to scan them.
        gc.collect()
        gc.freeze()
        log(f"imported {', '.join(modules)} in {time.monotonic() - started:.1f} s; serving")

    def serve(self) -> None:
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.driver, selectors.EVENT_READ, "driver")
        accepting = True
        while accepting or self.children:
            for key, _events in self.selector.select():
                if key.data == "accept":
                    self._accept()
                elif key.data == "driver":
                    log("the Snakemake driver has ended: no new jobs")
                    accepting = False
                    self.selector.unregister(self.driver)
                    self._close_listener()
                else:
                    self._reap(key.fd)

    def _close_listener(self) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.listener)
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        try:
            pid, uid, _gid = UCRED.unpack(
                conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
            )
            request, fds = _receive(conn)
        except (OSError, ValueError) as error:
            log(f"dropped a connection: {error}")
            conn.close()
            return
        reason = refusal(request, uid, self.base_env)
        if reason is not None:
            log(f"refused job pid {pid}: {reason}")
            with contextlib.suppress(OSError):
                conn.sendall(f"refused {reason}\n".encode())
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:
            env = {**self.import_env, **request["env"]}
            self._become(conn, fds, {**request, "env": env})
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(child)
        self.children[pidfd] = (child, conn)
        self.selector.register(pidfd, selectors.EVENT_READ, "child")
        log(f"job pid {pid} runs {request['target']} as pid {child}")

    def _reap(self, pidfd: int) -> None:
        child, conn = self.children.pop(pidfd)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(child, 0)
        log(f"pid {child} ended: exit {os.waitstatus_to_exitcode(status)}")
        with contextlib.suppress(OSError):  # the job may be gone (killed): nobody to tell
            conn.sendall(f"exit {status}\n".encode())
        conn.close()

    def _become(self, conn: socket.socket, fds: list[int], request: dict[str, Any]) -> NoReturn:
        """In the forked child: drop the server's state, take the job's, make the call."""
        code = 1
        try:
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.selector.close()
            self.listener.close()  # never unlinked here: the socket is the server's
            os.close(self.driver)
            for pidfd, (_pid, other) in self.children.items():
                os.close(pidfd)
                other.close()  # or that job would not see its own child's end
            code = _run_as_job(conn, fds, request)
        except BaseException:
            with contextlib.suppress(Exception):
                traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                conn.sendall(f"done {code}\n".encode())
            os._exit(code)


def _take_over(fds: list[int], request: dict[str, Any]) -> None:
    """Become the job: its process group, stdio, folder, environment, argv, threads."""
    with contextlib.suppress(OSError):  # another session (not a Snakemake-started server)
        os.setpgid(0, request["pgid"])
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[PRELOADED_ENV] = "1"
    tempfile.tempdir = None  # TMPDIR may differ (Snakemake's tmpdir resource)
    os.umask(request["umask"])
    with contextlib.suppress(OSError):  # CPUs the server may not use: keep its own
        os.sched_setaffinity(0, request["affinity"])
    sys.argv = list(request["argv"])
    sys.path[:] = request["path"]
    import torch  # already imported: free

    threads = os.environ.get("OMP_NUM_THREADS", "")
    # torch read OMP_NUM_THREADS when the server imported it; a fresh job reads the job's.
    torch.set_num_threads(int(threads) if threads.isdigit() else len(request["affinity"]))


def _watch_job(conn: socket.socket) -> None:
    """Die with the job: it never writes after its request, so readiness means it is gone."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLHUP | select.POLLRDHUP)
    while True:
        with contextlib.suppress(InterruptedError):
            if poller.poll():
                os.kill(os.getpid(), signal.SIGKILL)


def _run_as_job(conn: socket.socket, fds: list[int], request: dict[str, Any]) -> int:
    conn.settimeout(None)
    _take_over(fds, request)
    conn.sendall(f"pid {os.getpid()} {os.getpgid(0)}\n".encode())
    threading.Thread(target=_watch_job, args=(conn,), daemon=True, name="job-watch").start()
    try:
        call(request["target"], request["kwargs"])
        code = 0
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    # What a normal interpreter exit does before its teardown: join non-daemon threads, run
    # the atexit handlers (MLflow's, the spool's, leanhpo.workflow's gc.freeze), flush.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return code


def _exit_code(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--driver", type=int, required=True, help="serve while this pid lives")
    parser.add_argument("--module", action="append", help="import these (default: a trial's)")
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group: the children take it as the jobs would; the
    # server stays to report how they ended.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    server = Server(args.socket, args.driver)
    try:
        server.preload(args.module or list(DEFAULT_MODULES))
        server.serve()
    finally:
        server._close_listener()
    log("exiting")


if __name__ == "__main__":
    main()
