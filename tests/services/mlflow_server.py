"""A real MLflow tracking server on 127.0.0.1, which a test can stop and start again to cause a
real outage (same port, same database, so run ids survive the restart); and the same server with
MLflow's basic-auth app, which refuses requests without a known user's password."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MLFLOW = Path(sys.executable).with_name("mlflow")
START_TIMEOUT_S = 90.0  # a cold start imports all of mlflow; two shared cores make it slow
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MlflowServer:
    def __init__(self, folder: Path, backend_store_uri: str | None = None) -> None:
        self.folder = folder
        self.backend_store_uri = backend_store_uri or f"sqlite:///{folder / 'mlflow.db'}"
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            str(MLFLOW),
            "server",
            "--backend-store-uri",
            self.backend_store_uri,
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
        log = (self.folder / "server.log").open("ab")
        # A session of its own, so stop() can signal uvicorn and its workers together.
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=log, env=self.environment(), start_new_session=True
        )
        log.close()
        self._wait_healthy()

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            # Seven job-runner processes (GenAI scoring, trace archival) that leanhpo never
            # uses; each imports all of mlflow, which on two cores slows the start by seconds.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }

    def request(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One REST call (POST when there is a body) with the server's own credentials."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.uri}{path}", data=data, headers=self.headers())
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=START_TIMEOUT_S) as reply:
            text = reply.read()
        return json.loads(text) if text else {}

    def headers(self) -> dict[str, str]:
        return {}

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
        self.request("/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default")

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


class MlflowAuthServer(MlflowServer):
    """`mlflow server --app-name basic-auth`. The admin comes from MLFLOW_AUTH_ADMIN_USERNAME and
    MLFLOW_AUTH_ADMIN_PASSWORD, set for the server process only; its users live in a SQLite file
    in `folder` (MLFLOW_AUTH_CONFIG_PATH names an ini that says so). Users other than the admin
    get READ on what others made and MANAGE on what they create, as in a shared deployment."""

    ADMIN = "admin"
    DEFAULT_PERMISSION = "READ"

    def __init__(self, folder: Path, backend_store_uri: str | None = None) -> None:
        super().__init__(folder, backend_store_uri)
        self.admin_password = "adm-" + secrets.token_hex(12)
        self.secret_key = secrets.token_hex(16)  # for CSRF; kept across stop() and start()
        self.config_path = folder / "basic_auth.ini"
        self.config_path.write_text(
            "[mlflow]\n"
            f"default_permission = {self.DEFAULT_PERMISSION}\n"
            f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # Without it, every request hashes the password again (PBKDF2, about 0.5 s on
            # two busy cores); a wrong password is never cached, so refusals stay real.
            "auth_cache_ttl_seconds = 300\n"
        )

    def command(self) -> list[str]:
        return [*super().command(), "--app-name", "basic-auth"]

    def environment(self) -> dict[str, str]:
        return {
            **super().environment(),
            "MLFLOW_AUTH_CONFIG_PATH": str(self.config_path),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret_key,
            "MLFLOW_AUTH_ADMIN_USERNAME": self.ADMIN,
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,
        }

    def headers(self) -> dict[str, str]:
        token = base64.b64encode(f"{self.ADMIN}:{self.admin_password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def create_user(self, username: str, password: str) -> None:
        """A user that is not an admin, through the auth app's REST API."""
        self.request("/api/2.0/mlflow/users/create", {"username": username, "password": password})


def _skip_without_mlflow() -> None:
    if not MLFLOW.exists():
        pytest.skip(f"no mlflow executable beside {sys.executable}")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One server per test module (a start costs seconds); a test that stops it must start it
    again before it ends, or the next test finds it down."""
    _skip_without_mlflow()
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_backend_store() -> str | None:
    """Where mlflow_auth_server keeps its runs: None for SQLite in its folder. A test module
    overrides this fixture to serve from another database (PostgreSQL, say)."""
    return None


@pytest.fixture(scope="module")
def mlflow_auth_server(
    tmp_path_factory: pytest.TempPathFactory, mlflow_backend_store: str | None
) -> Iterator[MlflowAuthServer]:
    """One basic-auth server per test module; create users with .create_user()."""
    _skip_without_mlflow()
    folder = tmp_path_factory.mktemp("mlflow_auth_server")
    server = MlflowAuthServer(folder, mlflow_backend_store)
    server.start()
    try:
        yield server
    finally:
        server.stop()
