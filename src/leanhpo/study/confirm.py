"""study.confirm: the winner chosen over seeds (docs/search.md#confirm).

The search trains each configuration once, and picks the best validation score among many:
with ~150 validation posts, one configuration's seeds differ about as much as configurations
do, so the single best trial is partly a lucky seed. With confirm on, the top_k completed
trials' configurations are trained `seeds` more times each (trial/confirm.py), and:

- the winner is the configuration with the best mean validation score over all its runs (its
  trial and its seeds; ties go to the better search rank);
- the exported, test-evaluated model is the winner's run with the best validation score (ties
  go to the trial, then to the lower seed).

Two steps here: `plan_confirm` (the select_confirm checkpoint rule) fixes which trials are
confirmed once the search is over, and `choose_over_seeds` (the study evaluation) chooses.
The trial's own score is one of the configuration's runs, so the winner's mean still carries
some of the search's selection (its trial was selected for being high); the mean over the
extra seeds alone (`extra_seeds_mean`) does not, and is reported beside it.
"""

from __future__ import annotations

import logging
import re
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leanhpo.exit_codes import EXIT_BAD_INPUT
from leanhpo.fsutil import atomic_write_json, read_json
from leanhpo.logs import event, setup_logging
from leanhpo.paths import CONFIRM_PREFIX, confirm_folder, run_folder, trial_label


class ConfirmSourceError(RuntimeError):
    """study.confirm cannot run or be evaluated as asked: a planned trial did not complete, or
    the plan or its runs are missing. Bad input: nothing is changed."""

    exit_code = EXIT_BAD_INPUT


_FOLDER = re.compile(rf"^{CONFIRM_PREFIX}(\d{{4}})_seed_(\d+)$")


def _scored(report: dict[str, Any]) -> bool:
    return report["status"] == "completed" and report["best_validation_score"] is not None


def ranked_trials(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Completed, scored trials, best first (ties: the earlier slot), as the search ranks them."""
    scored = [r for r in reports if _scored(r)]
    return sorted(scored, key=lambda r: (-r["best_validation_score"], r["slot"]))


def plan_confirm(
    study_dir: Path, report_paths: list[Path], top_k: int, metric: str, output: Path
) -> dict[str, Any]:
    """Which trials' configurations are confirmed (the top_k by validation score), written to
    `output`. Checkpoints of confirm runs whose trial left the top_k (a grown study found
    better ones) are deleted: they can no longer be chosen, and disk use stays bounded by
    top_k x seeds runs; their reports stay, for the record."""
    # torch only here: the summary and the report page import this module for its words
    from leanhpo.checkpoints import CheckpointStore
    from leanhpo.reports import refresh_retained
    from leanhpo.study.prune import retention_lock

    log = setup_logging()
    ranked = ranked_trials([read_json(p) for p in report_paths])
    chosen = ranked[:top_k]
    slots = [r["slot"] for r in chosen]
    with retention_lock(study_dir):
        for folder in sorted(study_dir.glob(f"{CONFIRM_PREFIX}*")):
            match = _FOLDER.match(folder.name)
            if match is None or int(match.group(1)) in slots:
                continue
            store = CheckpointStore(folder / "checkpoints", log=log)
            removed = [info.id for info in store.list() if store.delete(info.epoch)]
            refresh_retained(folder / "report.json")
            if removed:
                event(
                    log,
                    f"confirm: {folder.name} left the top {top_k}; removed {', '.join(removed)}",
                    kind="confirm_prune",
                )
    plan = {
        "top_k": top_k,
        "optimization_metric": metric,
        "slots": slots,
        "search_scores": {str(r["slot"]): r["best_validation_score"] for r in chosen},
        "completed_trials": len(ranked),
        "generated_at": datetime.now(UTC).isoformat(),
    }
    if len(chosen) < top_k:
        event(
            log,
            f"confirm: only {len(chosen)} trial(s) completed with a score, fewer than "
            f"study.confirm.top_k={top_k}; confirming those",
            logging.WARNING,
        )
    atomic_write_json(output, plan)
    event(
        log,
        "confirm: retraining over seeds the configurations of "
        + ", ".join(trial_label(s) for s in slots),
        kind="confirm_plan",
        slots=slots,
    )
    return plan


def confirm_targets(study_dir: str, plan: dict[str, Any], seeds: int) -> list[str]:
    """The report of every confirm run the plan asks for, seeds 1..seeds of each slot."""
    return [
        f"{study_dir}/{confirm_folder(slot, k)}/report.json"
        for slot in plan["slots"]
        for k in range(1, seeds + 1)
    ]


def run_row(report: dict[str, Any]) -> dict[str, Any]:
    confirm = report.get("confirm") or {}
    return {
        "folder": run_folder(report),
        "seed_index": confirm.get("seed_index", 0),  # 0: the trial of the search itself
        "seed": report["seeds"]["trial"],
        "status": report["status"],
        "validation_score": report["best_validation_score"],
    }


def _spread(values: list[float]) -> dict[str, float | None]:
    return {
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
    }


def choose_over_seeds(
    trial_reports: list[dict[str, Any]],
    confirm_reports: list[dict[str, Any]],
    plan: dict[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(the exported run's report, the winner's runs' reports, the study report's `confirm`
    block), from the confirm runs the workflow asked for (confirm_targets: a study whose seeds
    were lowered keeps the others on disk, but they are not passed here)."""
    by_slot = {r["slot"]: r for r in trial_reports}
    extra: dict[int, list[dict[str, Any]]] = {}
    for report in confirm_reports:
        extra.setdefault(report["confirm"]["source_slot"], []).append(report)
    seeds = max((r["confirm"]["seed_index"] for r in confirm_reports), default=0)
    configurations, members = [], {}
    for rank, slot in enumerate(plan["slots"], start=1):
        runs = [
            by_slot[slot],
            *sorted(extra.get(slot, []), key=lambda r: r["confirm"]["seed_index"]),
        ]
        members[slot] = runs
        scores = [r["best_validation_score"] for r in runs if _scored(r)]
        extra_scores = [r["best_validation_score"] for r in runs[1:] if _scored(r)]
        configurations.append(
            {
                "slot": slot,
                "trial": trial_label(slot),
                "search_rank": rank,
                "params": by_slot[slot]["params"],
                "runs": [run_row(r) for r in runs],
                "n_scored": len(scores),
                "n_failed": len(runs) - len(scores),
                "validation": _spread(scores),
                "extra_seeds_mean": statistics.fmean(extra_scores) if extra_scores else None,
            }
        )
    candidates = [c for c in configurations if c["validation"]["mean"] is not None]
    winner = max(candidates, key=lambda c: (c["validation"]["mean"], -c["search_rank"]))
    runs = [r for r in members[winner["slot"]] if _scored(r)]
    exported = max(
        runs,
        key=lambda r: (r["best_validation_score"], -(r.get("confirm") or {}).get("seed_index", 0)),
    )
    single_best = ranked_trials(trial_reports)[0]
    block = {
        "top_k": plan["top_k"],
        "seeds": seeds,
        "optimization_metric": plan["optimization_metric"],
        "configurations": configurations,
        "winner_slot": winner["slot"],
        "single_best_slot": single_best["slot"],
        "winner_differs_from_single_best": winner["slot"] != single_best["slot"],
        "exported": run_row(exported),
        # The search's own spread: how far apart the configurations of the study are, to read
        # the seed spreads above against.
        "search_spread": _spread(
            [r["best_validation_score"] for r in ranked_trials(trial_reports)]
        ),
    }
    return exported, runs, block


def read_confirm(
    plan_path: Path | None, report_paths: list[Path]
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The plan (None when study.confirm is off) and the confirm runs' reports."""
    if plan_path is None:
        return None, []
    return read_json(plan_path), [read_json(p) for p in report_paths]


def confirm_summary(block: dict[str, Any] | None) -> list[str]:
    """Lines for the closing summary and the HTML page: each confirmed configuration's mean and
    spread, the winner, and the winner's test macro-F1 per seed; [] when confirm was off."""
    if not block:
        return []

    def score(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [
        f"chosen over seeds (study.confirm: top {block['top_k']}, {block['seeds']} extra seeds "
        f"each): {block['optimization_metric']} on validation, mean ± std over each "
        "configuration's runs"
    ]
    for c in block["configurations"]:
        v = c["validation"]
        mark = "  <- winner" if c["slot"] == block["winner_slot"] else ""
        lines.append(
            f"  {c['trial']} (search rank {c['search_rank']}): {score(v['mean'])} ± "
            f"{score(v['std'])} over {c['n_scored']} run(s), range {score(v['min'])} to "
            f"{score(v['max'])}{mark}"
        )
    if block["winner_differs_from_single_best"]:
        lines.append(
            f"  the winner is not the single best trial ({trial_label(block['single_best_slot'])})"
        )
    per_seed = block.get("winner_test_per_seed") or []
    if per_seed:
        shown = ", ".join(
            f"{r['folder']} {score(r['test_criteria_f1_macro'])}"
            + (" (exported)" if r["exported"] else "")
            for r in per_seed
        )
        lines.append(f"  the winner's test macro-F1 per run: {shown}")
    return lines
