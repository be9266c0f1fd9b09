"""The driver's side of the preloaded worker: start the server for this Snakemake run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from leanhpo.preload import PRELOAD_ENV

TRIAL_RULE = "run_trial"
# AF_UNIX paths hold at most 107 bytes.
MAX_FOLDER_CHARS = 80


def socket_folder() -> Path:
    """A folder only this user may enter, with room for a socket name under AF_UNIX's limit."""
    folder = Path(tempfile.gettempdir()) / f"leanhpo-preload-{os.getuid()}"
    if len(str(folder)) > MAX_FOLDER_CHARS:
        folder = Path("/tmp") / folder.name
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)
    return folder


def _remove_stale(folder: Path) -> None:
    """Sockets of servers killed with their driver (kill -9 of the process group)."""
    for path in folder.glob("*.sock"):
        driver = path.name.partition("-")[0]
        if not driver.isdigit():
            continue
        try:
            os.kill(int(driver), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:
            pass


def trials_pending(workflow: Any) -> bool:
    """Whether this run has trial jobs to run (a run that only evaluates needs no server).
    Reads Snakemake's DAG, which is not a public API: when that fails, assume it has."""
    try:
        return any(job.rule.name == TRIAL_RULE for job in workflow.dag.needrun_jobs())
    except Exception:
        return True


def start_server(workflow: Any, enabled: bool, log_path: str | Path) -> str | None:
    """Start the preloaded worker for the jobs of this Snakemake run (from `onstart`) and tell
    them where it listens. Only where jobs run on this machine, in this run's process: not
    under a cluster executor, nor in the Snakemake a cluster job runs. Returns its socket."""
    if not enabled or not workflow.local_exec or not workflow.is_main_process:
        return None
    if not hasattr(os, "pidfd_open") or not trials_pending(workflow):
        return None
    folder = socket_folder()
    _remove_stale(folder)
    path = str(folder / f"{os.getpid()}-{os.urandom(4).hex()}.sock")
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "leanhpo.preload.server", "--socket", path]
    command += ["--driver", str(os.getpid())]
    with log_path.open("a") as log:
        # Same process group as the driver: a kill of the group ends the server too.
        subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    os.environ[PRELOAD_ENV] = path
    return path
