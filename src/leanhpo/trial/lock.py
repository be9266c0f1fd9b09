"""One process trains a trial at a time on this host: an exclusive flock on trial_dir/.lock
(the slot's lease, study/lease.py, extends that across hosts)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from leanhpo.exit_codes import EXIT_LOCKED


class TrialLockedError(RuntimeError):
    exit_code = EXIT_LOCKED


class TrialLock:
    """An exclusive flock on trial_dir/.lock: two processes never train the same trial."""

    def __init__(self, trial_dir: Path) -> None:
        trial_dir.mkdir(parents=True, exist_ok=True)
        self.path = trial_dir / ".lock"
        self.handle = self.path.open("a+")

    def __enter__(self) -> TrialLock:
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "unknown"
            raise TrialLockedError(
                f"{self.path.parent.name} is being run by another process ({holder}); wait for it "
                "to finish or stop it before rerunning"
            ) from error
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        self.handle.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
