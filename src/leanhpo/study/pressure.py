"""Room for the next checkpoint: the disk-pressure steps of SPEC 5 and the preflight abort.

Before every save (and once before training) the trial asks `StorageGuard.ensure_room`. When
the save would leave less than `min_free_disk_percent` free, or push the study's checkpoints
over `max_total_size`, it prunes aggressively, one logged step at a time, until there is room:

0. (with `retention.weights_only`) strip the optimizer state of every checkpoint that will
   never resume: all of the finished trials', and all of the current trial's but its newest;
   nothing is deleted, so this comes first;
1. every checkpoint of the current trial but its best (co-best) and, when none of those can
   resume, its newest full checkpoint, from which a resume continues;
2. `keep_best_k=1, keep_last_n=0` from now on, persisted in storage_policy.json so that later
   trials (and restarts) keep it, and applied to the finished trials at once;
3. only the single best checkpoint of the whole study among the finished trials.

If the checkpoint still cannot fit, it raises NoSpaceError before anything is written. Trials
that are running (their lock is held) are never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leanhpo.checkpoints import CheckpointStore, RetentionPolicy, plan_retention
from leanhpo.config import parse_size
from leanhpo.fsutil import atomic_write_json
from leanhpo.logs import event
from leanhpo.paths import CONFIRM_PREFIX
from leanhpo.reports import refresh_retained
from leanhpo.storage.disk import disk_usage, largest_artifacts
from leanhpo.storage.estimate import weights_only_bytes
from leanhpo.storage.preflight import NoSpaceError, fixes
from leanhpo.study.prune import (
    POLICY_FILE,
    effective_retention,
    finished_trials,
    policy_of,
    ranked,
    retention_lock,
    settle_trial,
    strip_checkpoint,
)

AGGRESSIVE = {"keep_last_n": 0, "keep_best_k": 1, "keep_best_k_max": 1}
# A save also writes small files (manifest, meta.json) and the filesystem needs some slack.
SAFETY_BYTES = 2 << 20


def checkpoint_folder_bytes(study_dir: Path) -> int:
    """Bytes of every committed checkpoint of the study (quarantine excluded)."""
    total = 0
    folders = [  # the trials', and the study.confirm runs' beside them
        *study_dir.glob("trial_[0-9][0-9][0-9][0-9]/checkpoints/epoch_[0-9][0-9][0-9][0-9]"),
        *study_dir.glob(f"{CONFIRM_PREFIX}*/checkpoints/epoch_[0-9][0-9][0-9][0-9]"),
    ]
    for folder in folders:
        # Read without the retention lock: another job may delete the folder meanwhile, and
        # a folder gone is simply no longer counted.
        with contextlib.suppress(FileNotFoundError):
            total += sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return total


def is_running(trial_dir: Path) -> bool:
    """True when another process holds the trial's lock."""
    lock = trial_dir / ".lock"
    if not lock.exists():
        return False
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


class StorageGuard:
    def __init__(
        self,
        study_dir: Path,
        trial_dir: Path,
        retention: dict[str, Any],
        metric: str,
        log: logging.Logger,
    ) -> None:
        self.study_dir, self.trial_dir = study_dir, trial_dir
        self.retention = effective_retention(study_dir, retention)
        self.metric = metric
        self.log = log
        self.cap_bytes = parse_size(retention["max_total_size"])
        self.steps_taken: list[str] = []
        self.pressure_events = 0

    @property
    def policy(self) -> RetentionPolicy:
        return policy_of(self.retention)

    def _short_of(self, needed: int) -> dict[str, int]:
        """How many bytes the save lacks: under the free-space floor and over the size cap."""
        usage = disk_usage(self.trial_dir)
        floor = math.ceil(usage.total * self.retention["min_free_disk_percent"] / 100)
        study_bytes = checkpoint_folder_bytes(self.study_dir)
        return {
            "disk": max(0, needed + floor - usage.free),
            "physical": max(0, needed + SAFETY_BYTES - usage.free),
            "cap": max(0, study_bytes + needed - self.cap_bytes),
        }

    def ensure_room(
        self, needed: int, store: CheckpointStore | None, values: dict[int, float | None]
    ) -> list[str]:
        """Make room for `needed` bytes or raise NoSpaceError; return the steps taken now."""
        short = self._short_of(needed)
        if not short["disk"] and not short["cap"]:
            return []
        self.pressure_events += 1
        event(
            self.log,
            "storage pressure: pruning aggressively",
            logging.WARNING,
            kind="pressure",
            needed=needed,
            **short,
        )
        steps: list[tuple[str, Callable[[], int]]] = [
            (
                "1: unprotected checkpoints of this trial",
                lambda: self._prune_current(store, values),
            ),
            ("2: keep_best_k=1, keep_last_n=0 from now on", self._switch_policy),
            ("3: only the study's single best checkpoint", self._keep_single_best),
        ]
        if self.policy.weights_only:
            strip = ("0: strip optimizer state that will never resume", lambda: self._strip(store))
            steps.insert(0, strip)
        taken = []
        for name, step in steps:
            freed = step()
            taken.append(name)
            self.steps_taken.append(name)
            short = self._short_of(needed)
            event(
                self.log,
                f"storage pressure step {name}: freed {freed} bytes",
                logging.WARNING,
                kind="pressure_step",
                step=name,
                freed=freed,
                **short,
            )
            if not short["disk"] and not short["cap"]:
                return taken
        if short["physical"] or short["cap"]:
            raise self._no_space(needed, short, taken)
        event(
            self.log,
            "saving below retention.min_free_disk_percent: nothing more can be pruned",
            logging.WARNING,
            kind="pressure_floor",
        )
        return taken

    def _strip(self, store: CheckpointStore | None) -> int:
        freed = 0
        if store is not None:
            resumable = [i.epoch for i in store.list() if i.resumable]
            for epoch in resumable[:-1]:  # the newest full one is the resume point
                freed += strip_checkpoint(store, epoch, self.log)
        with retention_lock(self.study_dir):
            for trial in self._finished():
                finished = CheckpointStore(trial["dir"] / "checkpoints", log=self.log)
                for info in finished.list():
                    if info.resumable:
                        freed += strip_checkpoint(finished, info.epoch, self.log, trial["slot"])
        return freed

    def _prune_current(self, store: CheckpointStore | None, values: dict[int, float | None]) -> int:
        if store is None:
            return 0
        infos = store.list()
        plan = plan_retention(
            [(i.epoch, values.get(i.epoch)) for i in infos],
            policy_of({**self.retention, **AGGRESSIVE}),
        )
        delete = set(plan.delete)
        resumable = [i.epoch for i in infos if i.resumable]
        if resumable and delete.issuperset(resumable):
            delete.discard(resumable[-1])  # never the trial's last resume point
        freed = 0
        for info in infos:
            if info.epoch in delete:
                freed += info.bytes
                store.delete(info.epoch)
        return freed

    def _switch_policy(self) -> int:
        if any(self.retention[k] != v for k, v in AGGRESSIVE.items()):
            self.retention.update(AGGRESSIVE)
            record = {
                "retention": AGGRESSIVE,
                "since": datetime.now(UTC).isoformat(),
                "reason": "disk pressure",
            }
            atomic_write_json(self.study_dir / POLICY_FILE, record)
        with retention_lock(self.study_dir):
            return sum(self._prune_finished(t, keep_single=False) for t in self._finished())

    def _keep_single_best(self) -> int:
        freed = 0
        with retention_lock(self.study_dir):
            for position, trial in enumerate(ranked(self._finished())):
                best = position == 0 and trial["score"] is not None
                freed += self._prune_finished(trial, keep_single=best, drop_all=not best)
        return freed

    def _finished(self) -> list[dict[str, Any]]:
        return [
            t
            for t in finished_trials(self.study_dir)
            if t["dir"] != self.trial_dir and not is_running(t["dir"])
        ]

    def _prune_finished(
        self, trial: dict[str, Any], keep_single: bool, drop_all: bool = False
    ) -> int:
        store = CheckpointStore(trial["dir"] / "checkpoints", log=self.log)  # finished: safe
        limit = 0 if drop_all else 1 if keep_single else None
        freed = settle_trial(
            store, trial["history"], self.policy, self.metric, self.log, limit, trial["slot"]
        )
        refresh_retained(trial["dir"] / "report.json")
        return freed

    def write_failed(self, error: OSError) -> NoSpaceError:
        """The disk filled up during a save despite the preflight (another writer, say)."""
        reason = f"the disk filled up while writing a checkpoint ({error.strerror})"
        return self._no_space(0, {"cap": 0, "physical": 0}, list(self.steps_taken), reason)

    def _no_space(
        self, needed: int, short: dict[str, int], taken: list[str], reason: str | None = None
    ) -> NoSpaceError:
        usage = disk_usage(self.trial_dir)
        study_bytes = checkpoint_folder_bytes(self.study_dir)
        reason = reason or (
            f"the study's checkpoints would exceed retention.max_total_size by {short['cap']} bytes"
            if short["cap"]
            else f"the disk lacks {short['physical']} bytes"
        )
        payload = {
            "reason": reason,
            "disk": usage.to_dict(),
            "needed_bytes": needed,
            # What the checkpoint will take once it no longer is a resume point.
            "weights_only_bytes": (
                weights_only_bytes(needed) if self.policy.weights_only and needed else needed
            ),
            "study_checkpoint_bytes": study_bytes,
            "max_total_size": self.retention["max_total_size"],
            "max_total_bytes": self.cap_bytes,
            "min_free_disk_percent": self.retention["min_free_disk_percent"],
            "steps_taken": taken,
            "largest_artifacts": largest_artifacts(self.study_dir.parent),
            "fixes": fixes(
                self.study_dir.name, self.retention, needed, self.cap_bytes, study_bytes
            ),
        }
        return NoSpaceError(payload)
