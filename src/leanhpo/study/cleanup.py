"""`python -m leanhpo cleanup`: find (and with --apply remove) what no trial references.

Orphans of a study are:
- temporary `.tmp-*` / `.trash-*` folders in a trial's (or a study.confirm run's) checkpoints/
  (a killed save or delete);
- checkpoints of a finished trial that retention would not keep: beyond its own best ones
  (trial-level policy, including a disk-pressure switch) or outside the `keep_best_trials`
  best trials (study-level);
- trial folders of slots the config does not plan (>= study.n_trials) that hold no state.
A running trial (its lock is held) is never touched; quarantined checkpoints are kept for
inspection and only listed. Dry-run by default: it prints what it would remove and the bytes.

With `--strip` it also lists (and with --apply strips) the optimizer state of every full
checkpoint that a finished trial keeps: a finished trial never resumes, so that state (two
thirds of an AdamW checkpoint) is never used. This upgrades studies written before
`retention.weights_only`; a study that runs with it strips as it goes.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from leanhpo.checkpoints import WEIGHT_GROUPS, CheckpointStore, checkpoint_info, plan_retention
from leanhpo.paths import CONFIRM_PREFIX
from leanhpo.reports import refresh_retained
from leanhpo.storage.preflight import human
from leanhpo.study.pressure import is_running
from leanhpo.study.prune import (
    effective_retention,
    epoch_values,
    finished_trials,
    policy_of,
    ranked,
    retention_lock,
    strip_checkpoint,
)

TMP_PREFIXES = (".tmp-", ".trash-")
LOG = logging.getLogger("leanhpo.cleanup")


@dataclass(frozen=True)
class Orphan:
    path: str
    kind: str
    bytes: int
    reason: str


def _apply(orphan: Orphan) -> int:
    path = Path(orphan.path)
    if orphan.kind == "strip":
        store = CheckpointStore(path.parent, log=LOG)  # a finished trial: safe to open
        return strip_checkpoint(store, int(path.name.removeprefix("epoch_")), LOG)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=False)
    elif path.exists():
        path.unlink()
    return orphan.bytes


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
    run_dirs = [  # the trials', and the study.confirm runs' (their own retention settles them)
        *study_dir.glob("trial_[0-9][0-9][0-9][0-9]"),
        *study_dir.glob(f"{CONFIRM_PREFIX}*"),
    ]
    for trial_dir in sorted(run_dirs):
        if not is_running(trial_dir):
            orphans += _temporary(trial_dir)
    orphans += _unkept_checkpoints(study_dir, retention, metric)
    orphans += _unplanned_trials(study_dir, n_trials)
    return orphans


def strippable(study_dir: Path, skip: set[str]) -> list[Orphan]:
    """Full checkpoints of finished trials (not running), but those in `skip` (orphans)."""
    found = []
    for trial in finished_trials(study_dir):
        if is_running(trial["dir"]):
            continue
        for folder in sorted((trial["dir"] / "checkpoints").glob("epoch_[0-9][0-9][0-9][0-9]")):
            info = checkpoint_info(folder)
            if info is None or not info.resumable or str(folder) in skip:
                continue
            reason = "a finished trial never resumes: its optimizer state is never used"
            found.append(Orphan(str(folder), "strip", _droppable_bytes(folder), reason))
    return found


def _droppable_bytes(folder: Path) -> int:
    kept = {group + ".safetensors" for group in WEIGHT_GROUPS} | {"meta.json", "MANIFEST.json"}
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and f.name not in kept)


def quarantined(study_dir: Path) -> list[Orphan]:
    return [
        Orphan(str(p), "quarantine", _size(p), "corrupt checkpoint kept for inspection")
        for p in sorted(study_dir.glob("trial_[0-9][0-9][0-9][0-9]/quarantine/*"))
    ]


def cleanup(
    study_dir: Path,
    retention: dict[str, Any],
    metric: str,
    n_trials: int,
    apply: bool,
    strip: bool = False,
) -> dict[str, Any]:
    kept_aside = quarantined(study_dir)
    removed = 0
    with retention_lock(study_dir):  # no trial job prunes the study meanwhile
        orphans = find_orphans(study_dir, retention, metric, n_trials)
        if strip:
            orphans += strippable(study_dir, {o.path for o in orphans})
        for orphan in orphans if apply else []:
            removed += _apply(orphan)
        if apply:
            for report in study_dir.glob("trial_[0-9][0-9][0-9][0-9]/report.json"):
                refresh_retained(report)
    total = sum(o.bytes for o in orphans)
    lines = [f"{o.kind:<13} {human(o.bytes):>12}  {o.path}  ({o.reason})" for o in orphans]
    removals = [o for o in orphans if o.kind != "strip"]
    size = sum(o.bytes for o in removals)
    verb = "removed" if apply else "would remove"
    lines.append(f"{verb} {len(removals)} orphan(s), {human(size)} ({size} bytes)")
    if strip:
        strips = [o for o in orphans if o.kind == "strip"]
        size = sum(o.bytes for o in strips)
        verb = "stripped" if apply else "would strip"
        lines.append(f"{verb} {len(strips)} checkpoint(s) to weights only, {human(size)} freed")
    if not apply and orphans:
        lines.append("run again with --apply to do it")
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
