"""What an MLflow outage left behind, settled: the bounded drain at the end of a workflow run
(tracking.final_drain_s) and `python -m leanhpo sync-tracking`.

Both replay the study's spool with MLflow's own chatter silenced (tracking.quiet) and say, per
MLflow run, how many entries went up; whatever is still pending after the end-of-run drain is
named by the closing summary (leanhpo.summary), with the command that settles it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from leanhpo.study.runids import settle_run_ids
from leanhpo.tracking import open_tracker, study_backlog
from leanhpo.tracking.quiet import quiet_mlflow

DEFAULT_FINAL_DRAIN_S = 60.0


def drain_spool(
    study_dir: Path,
    tracking: dict[str, Any],
    within_s: float | None = None,
    *,
    every_host: bool = False,
    retry_dead: bool = False,
) -> dict[str, Any]:
    """Replay the spool (for at most `within_s` seconds, or all of it): this host's file, or
    with `every_host` every host's (sync-tracking); with `retry_dead` the dead letters first go
    back in their places. Then the placeholders made real are written into study.json and the
    finished trials' state.json (study/runids.py). Return {"replayed": entries and runs that
    went up, "runs": [{"run_id", "name", "entries"}], "backlog": what is left
    (Tracker.backlog), "pending": entries and runs not yet made, "dead": dead letters,
    "retried": dead letters put back (None without retry_dead), "busy": a spool file another
    process was draining (None), "online": whether MLflow answered, "seconds": wall time}."""
    started = time.monotonic()
    # Also the tracker's own "did not answer; buffering its writes" warning: this replays
    # them, and the caller says what is left.
    with quiet_mlflow("leanhpo.tracking"):
        tracker = open_tracker(tracking, study_dir)
        retried = tracker.retry_dead() if retry_dead else None
        replayed = tracker.drain(within_s, every_host=every_host)
        if tracker.busy is None:
            settle_run_ids(study_dir, tracker)
        runs = [
            {"run_id": run_id, "name": tracker.run_name(run_id), "entries": count}
            for run_id, count in tracker.replayed_runs.items()
        ]
    stats = tracker.spool_stats()
    return {
        "replayed": replayed,
        "runs": runs,
        "backlog": tracker.backlog(),
        "pending": stats["pending"],
        "dead": stats["dead"],
        "retried": retried,
        "busy": tracker.busy,
        "online": stats["online"],
        "seconds": round(time.monotonic() - started, 3),
    }


def final_drain(study_dir: Path, tracking: dict[str, Any]) -> dict[str, Any] | None:
    """The last step of a workflow run: a drain bounded by tracking.final_drain_s, and only
    when the spool holds something (None otherwise: nothing to do, MLflow not even asked)."""
    left = study_backlog(study_dir)
    if not (left["entries"] or left["runs"]):
        return None
    within_s = float(tracking.get("final_drain_s", DEFAULT_FINAL_DRAIN_S))
    if within_s <= 0:
        pending = left["entries"] + left["runs"]  # at most: a run may be counted twice
        return {
            "replayed": 0,
            "runs": [],
            "backlog": left,
            "pending": pending,
            "dead": left["dead"],
            "retried": None,
            "busy": None,
            "online": None,
            "seconds": 0.0,
        }
    return drain_spool(study_dir, tracking, within_s)


def run_lines(runs: list[dict[str, Any]]) -> list[str]:
    """One line per run replayed: `run <name> (<id>): <n> entries`."""
    lines = []
    for run in runs:
        name = f"{run['name']} ({run['run_id']})" if run["name"] else run["run_id"]
        lines.append(f"  run {name}: {run['entries']} entries")
    return lines
