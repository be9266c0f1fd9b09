"""A real, temporary PostgreSQL cluster on 127.0.0.1 for tests, which can be stopped and started.

The cluster lives for the session (initdb takes about a second); every test gets its own
database and password user in it, so tests stay independent. The server binaries refuse to run
as root, so they run as the `postgres` user in a folder that user owns.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
SEARCH_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/15/bin")
SERVICE_USER = "postgres"
ADMIN = "leanhpo_admin"
START_TIMEOUT_S = 30


def _find_bin_dir() -> Path | None:
    for folder in SEARCH_DIRS:
        if all(os.access(Path(folder) / name, os.X_OK) for name in SERVER_BINARIES):
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_service_user() -> list[str]:
    """The prefix that runs a server binary as a non-root user."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("PostgreSQL refuses to run as root and runuser is missing")
    return [runuser, "-u", SERVICE_USER, "--"]


class PostgresCluster:
    """One initdb'd data directory, served on a fixed port across stop()/start().

    `host` is the one address it listens on; `prefix` runs the server binaries under a wrapper
    (`ip netns exec NAME`: a server inside a network namespace, see tests/services/netns.py)."""

    def __init__(
        self, bin_dir: Path, host: str = "127.0.0.1", prefix: tuple[str, ...] = ()
    ) -> None:
        self.bin_dir = bin_dir
        self.host = host
        self.prefix = [*prefix, *_as_service_user()]
        self.root = Path(tempfile.mkdtemp(prefix="leanhpo-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.password = secrets.token_hex(12)
        if os.geteuid() == 0:
            shutil.chown(self.root, SERVICE_USER, SERVICE_USER)
        password_file = self.root / "pwfile"
        password_file.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(password_file, SERVICE_USER, SERVICE_USER)
        self._run(
            "initdb",
            "-D", str(self.data),
            "-U", ADMIN,
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "--no-sync",
            "--encoding=UTF8",
        )  # fmt: skip
        password_file.unlink()
        if host != "127.0.0.1":  # initdb trusts loopback only; password users from anywhere
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write("host all all 0.0.0.0/0 scram-sha-256\n")

    def _run(self, binary: str, *args: str) -> None:
        result = subprocess.run(
            [*self.prefix, str(self.bin_dir / binary), *args],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S + 10,
            check=False,
        )
        if result.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{binary} {' '.join(args)} failed: {result.stderr}\n{tail}")

    def start(self) -> None:
        # TCP on one address only; the socket goes into our folder, not /var/run/postgresql.
        options = f"-h {self.host} -p {self.port} -k {self.root} -F"
        self._run(
            "pg_ctl", "start", "-D", str(self.data), "-l", str(self.root / "server.log"),
            "-w", "-t", str(START_TIMEOUT_S), "-o", options,
        )  # fmt: skip

    def stop(self) -> None:
        # fast: open connections are cut, as in a crash or failover, and no client can reconnect.
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w")

    def is_running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def processes(self) -> list[psutil.Process]:
        """The postmaster and every process it started (backends, checkpointer, ...)."""
        postmaster = psutil.Process(int((self.data / "postmaster.pid").read_text().split()[0]))
        return [postmaster, *postmaster.children(recursive=True)]

    def freeze(self) -> list[psutil.Process]:
        """SIGSTOP the whole server, postmaster first (so it forks no new backend meanwhile):
        connections stay open and the kernel still accepts TCP, but nothing ever answers."""
        frozen = []
        for process in self.processes():
            process.suspend()
            frozen.append(process)
        return frozen

    def thaw(self, frozen: list[psutil.Process]) -> None:
        for process in reversed(frozen):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()

    def url(self, user: str, password: str, database: str) -> str:
        return f"postgresql+psycopg://{user}:{password}@{self.host}:{self.port}/{database}"

    def admin_execute(self, *statements: str) -> None:
        import psycopg

        conninfo = f"host={self.host} port={self.port} user={ADMIN} password={self.password} dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True) as connection:
            for statement in statements:
                connection.execute(statement)

    def create_database(self) -> PostgresDatabase:
        """A new database owned by a new password user of the same name."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        password = secrets.token_hex(12)
        self.admin_execute(
            f"CREATE ROLE {name} LOGIN PASSWORD '{password}'",
            f"CREATE DATABASE {name} OWNER {name}",
        )
        return PostgresDatabase(
            url=self.url(name, password, name),
            name=name,
            user=name,
            password=password,
            stop=self.stop,
            start=self.start,
        )

    def drop_database(self, name: str) -> None:
        self.admin_execute(
            f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"DROP ROLE IF EXISTS {name}"
        )

    def remove(self) -> None:
        if self.is_running():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class PostgresDatabase:
    """A test's own database and password user; `.stop()`/`.start()` act on the whole server."""

    url: str
    name: str
    user: str
    password: str
    stop: Callable[[], None]
    start: Callable[[], None]


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    bin_dir = _find_bin_dir()
    if bin_dir is None:
        pytest.skip(f"PostgreSQL server binaries ({', '.join(SERVER_BINARIES)}) not found")
    cluster = PostgresCluster(bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def postgres(postgres_cluster: PostgresCluster) -> Iterator[PostgresDatabase]:
    """A fresh database on the running session cluster, with its own password user."""
    if not postgres_cluster.is_running():  # a test that stopped the server and then failed
        postgres_cluster.start()
    database = postgres_cluster.create_database()
    yield database
    if not postgres_cluster.is_running():
        postgres_cluster.start()
    postgres_cluster.drop_database(database.name)
