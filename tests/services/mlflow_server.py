"""A real MLflow tracking server on 127.0.0.1, which a test can stop and start again to cause a
real outage (same port, same database, so run ids survive the restart)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

MLFLOW = Path(sys.executable).with_name("mlflow")
START_TIMEOUT_S = 90.0  # a cold start imports all of mlflow; two shared cores make it slow
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MlflowServer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            str(MLFLOW),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.folder / 'mlflow.db'}",
            "--default-artifact-root",
            str(self.folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            # Host checks would refuse a test client that says 127.0.0.1:<port>; nothing
            # outside this machine can reach the server anyway.
            "--disable-security-middleware",
        ]

    def start(self) -> None:
        if self.process is not None:
            return
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        log = (self.folder / "server.log").open("ab")
        # A session of its own, so stop() can signal uvicorn and its workers together.
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=log, env=env, start_new_session=True
        )
        log.close()
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as reply:
                    if reply.status == 200:
                        self._warm_up()
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy in {START_TIMEOUT_S} s: {self.log_tail()}")

    def _warm_up(self) -> None:
        """/health answers before the tracking store is opened; the first real API call then
        takes seconds, which a test of write timeouts would take for an outage."""
        url = f"{self.uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
        with urllib.request.urlopen(url, timeout=START_TIMEOUT_S):
            pass

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def log_tail(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One server per test module (a start costs seconds); a test that stops it must start it
    again before it ends, or the next test finds it down."""
    if not MLFLOW.exists():
        pytest.skip(f"no mlflow executable beside {sys.executable}")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
