"""A trial's memory record, `trial_<NNNN>/memory.json`: the plan (rows per pass and the figures
behind it) and, per attempt (each run of the trial job), where it was and the most memory it
saw, so that the next attempt can tell a kill for memory from any other kill.

The kernel's OOM killer ends a job with SIGKILL, which leaves no reason behind, and the batch
order is seeded: a rerun meets the same batch at the same epoch and step and is killed again, so
without this record a study never ends. An attempt that never wrote its end was killed. Two in a
row killed at the same epoch and step, each with evidence of memory (the OOM-kill counter of the
process's cgroup rose during it, or it saw memory near its limit), fail the trial for memory
instead of a third try. A kill by a person or a scheduler (the kill -9 tests) shows neither, and
the trial resumes as before.

Written at the start and the end of an attempt, at each epoch start, before a pass predicted to
come near the limit and when memory first comes near it: a few small writes per epoch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leanhpo.fsutil import atomic_write_json, read_json
from leanhpo.memory.limits import MemoryReading, MemoryWatch, peak_rss, reset_peak_rss

RECORD_FILE = "memory.json"
KILLS_FOR_MEMORY = 2  # attempts killed at the same epoch and step before the trial fails
NEAR_LIMIT = 0.9  # share of the limit that counts as "near" it


class AttemptLog:
    def __init__(self, trial_dir: Path) -> None:
        self.path = trial_dir / RECORD_FILE
        self.data: dict[str, Any] = {"plan": None, "attempts": []}
        # Unreadable (a disk that filled up mid-write): start a new record, lose only history.
        with contextlib.suppress(OSError, ValueError):
            if self.path.exists():
                self.data = {**self.data, **read_json(self.path)}
        self._current: dict[str, Any] | None = None

    @property
    def attempts(self) -> list[dict[str, Any]]:
        attempts: list[dict[str, Any]] = self.data["attempts"]
        return attempts

    def write(self) -> None:
        atomic_write_json(self.path, self.data)

    def begin(self, reading: MemoryReading, oom_kills: tuple[str, int] | None) -> None:
        """A new attempt: this process's peak RSS counts from now."""
        reset_peak_rss()
        self._current = {
            "pid": os.getpid(),
            "started_at": datetime.now(UTC).isoformat(),
            "limit_bytes": reading.limit,
            "limit_source": reading.source,
            "oom_kills": list(oom_kills) if oom_kills else None,
            "epoch": 0,
            "step": 0,
            "rows": 0,
            # the most memory in use the guard saw during a pass, as a share of the limit it
            # was read against (not at the start: a busy machine is no evidence against a trial)
            "peak_share": 0.0,
            "peak_used_bytes": 0,
            "peak_limit_bytes": reading.limit,
            "peak_rss_bytes": peak_rss(),
            "ended": None,
        }
        self.attempts.append(self._current)
        self.write()

    @contextlib.contextmanager
    def attempt(self, watch: MemoryWatch) -> Iterator[None]:
        """One attempt: begun now, ended when the block ends, however it ends (an exception
        ends it with its type's name) except by SIGKILL, which is what an unended one means."""
        self.begin(watch.read(), watch.oom_kills())
        try:
            yield
        except BaseException as error:
            self.end(type(error).__name__)
            raise
        self.end("finished")

    def at(self, epoch: int, step: int, rows: int, write: bool) -> None:
        if self._current is None:
            return
        self._current.update({"epoch": epoch, "step": step, "rows": rows})
        if write:
            self._current["peak_rss_bytes"] = max(self._current["peak_rss_bytes"], peak_rss())
            self.write()

    def saw(self, reading: MemoryReading) -> None:
        """Remember the most memory in use (against the tightest limit then); written the
        first time it comes near the limit (if the kernel kills the attempt, that write is
        the evidence it leaves)."""
        current = self._current
        share = reading.used / reading.limit
        if current is None or share <= current["peak_share"]:
            return
        was_near = current["peak_share"] >= NEAR_LIMIT
        current.update(
            {
                "peak_share": round(share, 4),
                "peak_used_bytes": reading.used,
                "peak_limit_bytes": reading.limit,
            }
        )
        if share >= NEAR_LIMIT and not was_near:
            self.write()

    def end(self, reason: str) -> None:
        if self._current is None:
            return
        self._current["peak_rss_bytes"] = max(self._current["peak_rss_bytes"], peak_rss())
        self._current["ended"] = reason
        self._current = None
        self.write()

    def set_plan(self, plan: dict[str, Any]) -> None:
        self.data["plan"] = plan
        self.write()

    def killed_for_memory(self, oom_now: tuple[str, int] | None) -> dict[str, Any] | None:
        """The figures when the last KILLS_FOR_MEMORY attempts were each killed at the same
        epoch and step with evidence of memory; else None (resume as usual)."""
        last = self.attempts[-KILLS_FOR_MEMORY:]
        if len(last) < KILLS_FOR_MEMORY or any(a["ended"] is not None for a in last):
            return None
        positions = {(a["epoch"], a["step"]) for a in last}
        if len(positions) != 1 or min(next(iter(positions))) < 1:  # one batch, not the startup
            return None
        first = len(self.attempts) - KILLS_FOR_MEMORY
        evidence = [self._evidence(first + i, oom_now) for i in range(KILLS_FOR_MEMORY)]
        if not all(evidence):
            return None
        return {
            "epoch": last[-1]["epoch"],
            "step": last[-1]["step"],
            "rows": last[-1]["rows"],
            "kills": KILLS_FOR_MEMORY,
            "evidence": evidence,
            "peak_used_bytes": max(a["peak_used_bytes"] for a in last),
            "peak_share": max(a["peak_share"] for a in last),
            "limit_bytes": last[-1]["limit_bytes"],
            "limit_source": last[-1]["limit_source"],
        }

    def _evidence(self, index: int, oom_now: tuple[str, int] | None) -> str | None:
        attempt = self.attempts[index]
        after = self.attempts[index + 1]["oom_kills"] if index + 1 < len(self.attempts) else None
        after = after or (list(oom_now) if oom_now else None)
        before = attempt["oom_kills"]
        if before and after and before[0] == after[0] and after[1] > before[1]:
            return f"its cgroup's OOM-kill counter went {before[1]} -> {after[1]}"
        if attempt["peak_share"] >= NEAR_LIMIT:
            return f"memory in use reached {attempt['peak_share']:.0%} of its limit"
        return None

    def summary(self) -> dict[str, Any]:
        """The trial's memory for its report and MLflow: the plan, and the peaks over attempts."""
        attempts = self.attempts
        last = attempts[-1] if attempts else {}
        return {
            "max_batch_rows": None,  # no plan: the trial had no epoch left to train
            "rows_per_pass": None,
            **(self.data["plan"] or {}),
            "peak_rss_bytes": max((a["peak_rss_bytes"] for a in attempts), default=None),
            "peak_share": max((a["peak_share"] for a in attempts), default=None),
            "limit_bytes": last.get("limit_bytes"),
            "limit_source": last.get("limit_source"),
            "attempts": len(attempts),
            "killed_attempts": sum(a["ended"] is None and a is not self._current for a in attempts),
        }
