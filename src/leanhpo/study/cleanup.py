"""`python -m leanhpo cleanup`: find (and with --apply remove) what no trial references.

Orphans of a study are:
- temporary `.tmp-*` / `.trash-*` folders in a trial's checkpoints/ (a killed save or delete);
- checkpoints of a finished trial that retention would not keep: beyond its own best ones
  (trial-level policy, including a disk-pressure switch) or outside the `keep_best_trials`
  best trials (study-level);
- trial folders of slots the config does not plan (>= study.n_trials) that hold no state.
A running trial (its lock is held) is never touched; quarantined checkpoints are kept for
inspection and only listed. Dry-run by default: it prints what it would remove and the bytes.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from leanhpo.checkpoints import plan_retention
from leanhpo.reports import refresh_retained
from leanhpo.storage.preflight import human
from leanhpo.study.pressure import effective_retention, is_running, policy_of
from leanhpo.study.prune import epoch_values, finished_trials, ranked, retention_lock

TMP_PREFIXES = (".tmp-", ".trash-")


@dataclass(frozen=True)
class Orphan:
    path: str
    kind: str
    bytes: int
    reason: str


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _temporary(trial_dir: Path) -> list[Orphan]:
    root = trial_dir / "checkpoints"
    if not root.is_dir():
        return []
    return [
        Orphan(str(p), "temporary", _size(p), "left by a killed checkpoint save or delete")
        for p in sorted(root.iterdir())
        if p.name.startswith(TMP_PREFIXES)
    ]


def _unkept_checkpoints(study_dir: Path, retention: dict[str, Any], metric: str) -> list[Orphan]:
    orphans = []
    policy = policy_of(retention)
    for position, trial in enumerate(ranked(finished_trials(study_dir))):
        if is_running(trial["dir"]):
            continue
        folders = sorted((trial["dir"] / "checkpoints").glob("epoch_[0-9][0-9][0-9][0-9]"))
        if not folders:
            continue
        values = epoch_values(trial["history"], metric)
        epochs = [int(f.name.removeprefix("epoch_")) for f in folders]
        in_top = position < int(retention["keep_best_trials"]) and trial["score"] is not None
        keep = (
            plan_retention([(e, values.get(e)) for e in epochs], policy, final=True).keep
            if in_top
            else set()
        )
        reason = (
            "beyond the trial's best checkpoints"
            if in_top
            else "trial is not among keep_best_trials"
        )
        orphans += [
            Orphan(str(f), "checkpoint", _size(f), reason)
            for f, e in zip(folders, epochs, strict=True)
            if e not in keep
        ]
    return orphans


def _unplanned_trials(study_dir: Path, n_trials: int) -> list[Orphan]:
    orphans = []
    for trial_dir in sorted(study_dir.glob("trial_[0-9][0-9][0-9][0-9]")):
        slot = int(trial_dir.name.removeprefix("trial_"))
        if (
            slot >= n_trials
            and not (trial_dir / "state.json").exists()
            and not is_running(trial_dir)
        ):
            orphans.append(
                Orphan(
                    str(trial_dir),
                    "trial folder",
                    _size(trial_dir),
                    f"slot {slot} >= n_trials and never started",
                )
            )
    return orphans


def find_orphans(
    study_dir: Path, retention: dict[str, Any], metric: str, n_trials: int
) -> list[Orphan]:
    retention = effective_retention(study_dir, retention)
    orphans: list[Orphan] = []
    for trial_dir in sorted(study_dir.glob("trial_[0-9][0-9][0-9][0-9]")):
        if not is_running(trial_dir):
            orphans += _temporary(trial_dir)
    orphans += _unkept_checkpoints(study_dir, retention, metric)
    orphans += _unplanned_trials(study_dir, n_trials)
    return orphans


def quarantined(study_dir: Path) -> list[Orphan]:
    return [
        Orphan(str(p), "quarantine", _size(p), "corrupt checkpoint kept for inspection")
        for p in sorted(study_dir.glob("trial_[0-9][0-9][0-9][0-9]/quarantine/*"))
    ]


def cleanup(
    study_dir: Path, retention: dict[str, Any], metric: str, n_trials: int, apply: bool
) -> dict[str, Any]:
    kept_aside = quarantined(study_dir)
    removed = 0
    with retention_lock(study_dir):  # no trial job prunes the study meanwhile
        orphans = find_orphans(study_dir, retention, metric, n_trials)
        for orphan in orphans if apply else []:
            path = Path(orphan.path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=False)
            elif path.exists():
                path.unlink()
            removed += orphan.bytes
        if apply:
            for report in study_dir.glob("trial_[0-9][0-9][0-9][0-9]/report.json"):
                refresh_retained(report)
    total = sum(o.bytes for o in orphans)
    verb = "removed" if apply else "would remove"
    lines = [f"{o.kind:<13} {human(o.bytes):>12}  {o.path}  ({o.reason})" for o in orphans]
    lines.append(f"{verb} {len(orphans)} orphan(s), {human(total)} ({total} bytes)")
    if not apply and orphans:
        lines.append("run again with --apply to remove them")
    if kept_aside:
        size = sum(q.bytes for q in kept_aside)
        lines.append(
            f"quarantine holds {len(kept_aside)} corrupt checkpoint(s), {human(size)}: inspect, then delete by hand"
        )
    return {
        "orphans": [asdict(o) for o in orphans],
        "quarantined": [asdict(q) for q in kept_aside],
        "bytes": total,
        "bytes_removed": removed,
        "applied": apply,
        "summary": "\n".join(lines),
    }
