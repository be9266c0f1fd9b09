"""A real one-node SLURM cluster on 127.0.0.1: slurmctld and slurmd with munge authentication,
no cgroups and no accounting daemon, which is what a CI runner or a container can host.

Debian's slurm-wlm and munge are installed with apt-get when they are missing (CI starts on a
fresh machine; this needs root). The daemons run as root on free ports with their state in a
temporary folder. The config is also written to /etc/slurm/slurm.conf: a job step (`srun` inside
a batch job, which Snakemake's SLURM executor uses) reads only that file, not SLURM_CONF, and
fails with "Could not establish a configuration source". A file already there is put back at
teardown, unless it is one this fixture wrote in a run that was killed before its teardown (it
starts with CONF_MARKER): that one names a controller that is gone, which makes every
`scontrol` wait 10 s, and Snakemake's SLURM executor plugin runs `scontrol show config` whenever
Snakemake loads it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

PACKAGES = ("slurm-wlm", "munge")
BINARIES = ("slurmctld", "slurmd", "sinfo", "squeue", "sbatch", "srun", "scancel", "munged")
SEARCH_PATH = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"))
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
CONF_MARKER = "# written by leanhpo's tests (tests/services/slurm.py); removed at teardown\n"
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN = Path("/run/munge")
MUNGE_PID = MUNGE_RUN / "munged.pid"
PARTITION = "leanhpo"
APT_TIMEOUT_S = 900
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
# Finished jobs stay in `squeue --states=all` this long; the executor's squeue status checks
# need it, since there is no accounting database for sacct to ask.
MIN_JOB_AGE_S = 300
MEMORY_SHARE = 0.8  # slurmd drains a node that claims more memory than it has


def _which(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def _missing() -> list[str]:
    return [name for name in BINARIES if _which(name) is None]


def _install_packages() -> None:
    """apt-get the packages once; skip (with apt's own words) only where they cannot be had."""
    if not _missing():
        return
    if os.geteuid() != 0:
        pytest.skip(f"SLURM is missing ({', '.join(_missing())}) and apt-get needs root")
    if _which("apt-get") is None:
        pytest.skip(f"SLURM is missing ({', '.join(_missing())}) and there is no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock_wait = ["-o", "DPkg::Lock::Timeout=300"]  # another apt on a shared runner
    for command in (
        ["apt-get", *lock_wait, "update"],
        ["apt-get", *lock_wait, "install", "-y", *PACKAGES],
    ):
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"SLURM cannot be installed: `{' '.join(command)}` ran {APT_TIMEOUT_S} s")
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip()[-600:]
            pytest.skip(f"SLURM cannot be installed: `{' '.join(command)}` failed: {tail}")
    if _missing():
        raise RuntimeError(f"apt-get installed {PACKAGES} but {_missing()} are still missing")


def _munge_works() -> bool:
    munge, unmunge = _which("munge"), _which("unmunge")
    if munge is None or unmunge is None:
        return False
    credential = subprocess.run([munge, "-n"], capture_output=True, timeout=10)
    if credential.returncode != 0:
        return False
    decoded = subprocess.run([unmunge], input=credential.stdout, capture_output=True, timeout=10)
    return decoded.returncode == 0


def _start_munged() -> None:
    """The key the package made (or a new one), a run folder munge owns, then munged as munge."""
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        MUNGE_KEY.write_bytes(os.urandom(1024))
        shutil.chown(MUNGE_KEY, "munge", "munge")
        MUNGE_KEY.chmod(0o400)
    MUNGE_RUN.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_RUN, "munge", "munge")
    munged = _which("munged")
    assert munged is not None
    subprocess.run(["runuser", "-u", "munge", "--", munged, "--force"], check=True, timeout=30)
    _wait(_munge_works, "munged to answer `munge -n | unmunge`")


def _wait(ready: Callable[[], bool], what: str, diagnose: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    raise RuntimeError(f"waited {START_TIMEOUT_S} s for {what}\n{diagnose()}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop_pid_files(*pid_files: Path) -> None:
    """SIGTERM the daemons named in their pid files together (each takes about 2 s to go),
    then SIGKILL any that is still there."""
    pids = []
    for pid_file in pid_files:
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
        except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
            continue
        pids.append(pid)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and any(map(psutil.pid_exists, pids)):
        time.sleep(0.1)
    for pid in filter(psutil.pid_exists, pids):
        os.kill(pid, signal.SIGKILL)


@dataclass
class SlurmCluster:
    """What a test needs: the partition, the config, client environment and job records."""

    root: Path
    node: str
    cpus: int
    memory_mb: int
    partition: str = PARTITION
    ctld_port: int = field(default_factory=_free_port)
    d_port: int = field(default_factory=_free_port)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """os.environ with the SLURM clients on PATH and this cluster's config."""
        return {**os.environ, "PATH": SEARCH_PATH, "SLURM_CONF": str(self.conf)}

    def log(self, daemon: str) -> str:
        path = self.root / f"{daemon}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def run(self, *command: str) -> str:
        result = subprocess.run(
            command, capture_output=True, text=True, env=self.env, timeout=30, check=True
        )
        return result.stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still remembers (for MinJobAge seconds after it ends): its id,
        the comment Snakemake's executor gives it (rule_<rule>_wildcards_<values>), its state,
        and what it asked for (CPUs, memory like 1000M, time limit like 10:00)."""
        out = self.run("squeue", "--states=all", "--noheader", "--format=%i|%k|%T|%C|%m|%l")
        fields = ("job_id", "comment", "state", "cpus", "memory", "time_limit")
        return [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]

    def write_conf(self) -> str:
        text = f"""\
{CONF_MARKER}ClusterName=leanhpo
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge={MIN_JOB_AGE_S}
StateSaveLocation={self.root}/state
SlurmdSpoolDir={self.root}/spool
SlurmctldPidFile={self.root}/slurmctld.pid
SlurmdPidFile={self.root}/slurmd.pid
SlurmctldLogFile={self.root}/slurmctld.log
SlurmdLogFile={self.root}/slurmd.log
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        for folder in ("state", "spool"):
            (self.root / folder).mkdir(exist_ok=True)
        self.conf.write_text(text)
        return text

    def node_state(self) -> str:
        try:
            out = self.run("sinfo", "--noheader", "--Node", "--format=%t")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return ""
        return out.strip()

    def diagnose(self) -> str:
        return "\n".join(f"{d}.log: {self.log(d)[-1500:]}" for d in ("slurmctld", "slurmd"))

    def start(self) -> None:
        for daemon in ("slurmctld", "slurmd"):  # each forks into the background once it is up
            command = [_which(daemon) or daemon, "-f", str(self.conf)]
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
            if result.returncode != 0:
                raise RuntimeError(f"{daemon} failed: {result.stderr}\n{self.diagnose()}")
        _wait(lambda: self.node_state() == "idle", "the node to be idle in sinfo", self.diagnose)

    def stop(self) -> None:
        if (self.root / "slurmctld.pid").exists():  # jobs a failed test left behind
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(["scancel", "--full", "--user=root"], env=self.env, timeout=30)
        _stop_pid_files(self.root / "slurmd.pid", self.root / "slurmctld.pid")


def _left_by_a_killed_run(conf: Path) -> bool:
    return conf.read_text(errors="replace").startswith(CONF_MARKER)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running one-node cluster for the session; everything it started is stopped after."""
    with one_node_cluster() as cluster:
        yield cluster


@contextlib.contextmanager
def one_node_cluster() -> Iterator[SlurmCluster]:
    """Install (if missing), configure and start a one-node cluster; stop it all on exit.
    Also used by bench/scale.py."""
    munge_was_running = _munge_works()  # before apt, whose post-install may start it
    _install_packages()
    root = Path(tempfile.mkdtemp(prefix="leanhpo-slurm-"))
    cluster = SlurmCluster(
        root=root,
        node=socket.gethostname().split(".")[0],
        cpus=len(os.sched_getaffinity(0)),
        memory_mb=int(psutil.virtual_memory().total / 2**20 * MEMORY_SHARE),
    )
    backup = root / "etc-slurm.conf.before"
    wrote_system_conf = False
    try:
        if not _munge_works():
            _start_munged()
        text = cluster.write_conf()
        if SYSTEM_CONF.exists() and not _left_by_a_killed_run(SYSTEM_CONF):
            shutil.copy2(SYSTEM_CONF, backup)
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        wrote_system_conf = True
        SYSTEM_CONF.write_text(text)
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        if backup.exists():
            shutil.copy2(backup, SYSTEM_CONF)
        elif wrote_system_conf:
            SYSTEM_CONF.unlink(missing_ok=True)
        if not munge_was_running:
            _stop_pid_files(MUNGE_PID)
        shutil.rmtree(root, ignore_errors=True)
