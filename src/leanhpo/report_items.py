"""The report's study-level items beyond the two learning plots (rule plot_study):

- disk use over the study: bytes of checkpoints on disk after every save and prune, against
  what keeping all of them would take (replayed from the trials' JSONL logs and reports);
- parameter importances: Optuna's fANOVA, once enough trials completed (a placeholder before);
- a per-trial table (status, params, best score, epochs, wall time, peak memory), as CSV;
- the test results with their bootstrap intervals, as CSV;
- both tables again, rounded, on the report's landing page (leanhpo.report_page).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from leanhpo.fsutil import read_json

# fANOVA on fewer complete trials says more about the noise than about the parameters.
MIN_TRIALS_FOR_IMPORTANCE = 5
IMPORTANCE_SEED = 0
MB = 1e6
TRIAL_LOG = "logs/trial.jsonl"


def _events(study_dir: Path) -> list[tuple[str, int, dict[str, Any]]]:
    """(timestamp, slot of the log, context) of every disk-relevant event, in time order."""
    kinds = ("epoch_start", "epoch_end", "prune", "strip", "study_prune")
    found = []
    for log in sorted(study_dir.glob(f"trial_[0-9][0-9][0-9][0-9]/{TRIAL_LOG}")):
        slot = int(log.parent.parent.name.split("_")[1])
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            context = entry.get("context") or {}
            if context.get("kind") in kinds:
                found.append((entry["timestamp"], slot, context))
    return sorted(found, key=lambda item: item[0])


def disk_timeline(study_dir: Path, reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Steps of (event, bytes on disk, bytes written so far = keep-all). A checkpoint is saved
    between its epoch's start and the first event after it; its size comes from the report."""
    sizes = {(r["slot"], c["epoch"]): c["bytes"] for r in reports for c in r["checkpoints"]}
    on_disk: dict[tuple[int, int], int] = {}
    written, pending, steps = 0, None, []

    def point(label: str) -> None:
        steps.append({"event": label, "on_disk": sum(on_disk.values()), "written": written})

    for _, slot, context in _events(study_dir):
        kind = context["kind"]
        if kind == "epoch_start":
            pending = (slot, context["epoch"])
            continue
        if pending is not None and pending[0] == slot and pending in sizes:
            on_disk[pending] = sizes[pending]
            written += sizes[pending]
            point(f"save trial {slot} epoch {pending[1]}")
        pending = None
        owner = context.get("slot", slot)  # a job may prune or strip another, finished trial
        if kind == "prune" and on_disk.pop((owner, context["epoch"]), None) is not None:
            point(f"prune trial {owner} epoch {context['epoch']}")
        elif kind == "strip" and (owner, context["epoch"]) in on_disk:
            on_disk[(owner, context["epoch"])] -= context["freed"]
            point(f"strip trial {owner} epoch {context['epoch']}")
        elif kind == "study_prune":
            for key in [k for k in on_disk if k[0] == context["slot"]]:
                del on_disk[key]
            point(f"study prune trial {context['slot']}")
    return steps


def plot_disk_use(study_dir: Path, reports: list[dict[str, Any]], png: Path) -> None:
    import matplotlib.pyplot as plt

    steps = disk_timeline(study_dir, reports)
    fig, ax = plt.subplots(figsize=(7, 4))
    if steps:
        x = range(1, len(steps) + 1)
        ax.step(x, [s["written"] / MB for s in steps], where="post", label="keep all (written)")
        ax.step(x, [s["on_disk"] / MB for s in steps], where="post", label="on disk")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no checkpoint was written", ha="center", va="center")
    ax.set(xlabel="checkpoint save or prune (in time order)", ylabel="MB", title="Disk use")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def param_importances(study: Any) -> dict[str, float] | None:
    """fANOVA importances, or None while fewer than MIN_TRIALS_FOR_IMPORTANCE trials completed
    (or no parameter varied)."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return None
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED)
    try:
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (RuntimeError, ValueError):
        return None


def plot_importances(importances: dict[str, float] | None, n_complete: int, png: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names])
        ax.set(xlabel="fANOVA importance", title="Parameter importances")
    else:
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            f"Parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} completed trials\n"
            f"with varied parameters ({n_complete} completed so far).",
            ha="center",
            va="center",
        )
        ax.set(title="Parameter importances (not yet)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


TRIAL_COLUMNS = (
    "slot",
    "optuna_number",
    "status",
    "best_validation_score",
    "best_epochs",
    "epochs_trained",
    "train_seconds",
    "wall_seconds_last_run",
    "bytes_retained",
    "peak_memory_mb",  # the trial process's peak resident memory, the most of any attempt
    "failure",  # a failed trial's reason: non_finite_loss, out_of_memory, ...
)
TEST_COLUMNS = ("section", "metric", "value", "ci_low", "ci_high", "ci_level")


def trials_table(reports: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(header, one row per trial slot): the per-trial table, its sampled params last."""
    params = sorted({name for r in reports for name in r.get("params") or {}})
    rows = []
    for r in sorted(reports, key=lambda r: r["slot"]):
        timings = r.get("timings") or {}
        rows.append(
            [
                r["slot"],
                r.get("optuna_number"),
                r["status"],
                r.get("best_validation_score"),
                " ".join(map(str, r.get("best_epochs") or [])),
                len(r.get("history") or []),
                timings.get("train_seconds"),
                timings.get("wall_seconds_last_run"),
                (r.get("storage") or {}).get("bytes_retained"),
                _peak_memory_mb(r.get("memory")),
                (r.get("failure") or {}).get("reason"),
                *((r.get("params") or {}).get(p) for p in params),
            ]
        )
    return [*TRIAL_COLUMNS, *params], rows


def _peak_memory_mb(memory: dict[str, Any] | None) -> float | None:
    peak = (memory or {}).get("peak_rss_bytes")
    return None if peak is None else round(peak / 2**20, 1)


def results_table(study_report: dict[str, Any]) -> list[list[Any]]:
    """Every test metric with its interval (from study_report.json), then the baseline's, as
    rows of TEST_COLUMNS. (Not named test_*: pytest would collect it where it is imported.)"""
    metrics, ci = study_report.get("test_metrics") or {}, study_report.get("test_metrics_ci") or {}
    rows = []
    for section in ("criteria_matching", "evidence_binding", "joint", "losses"):
        figures, bounds = metrics.get(section) or {}, ci.get(section) or {}
        nested = figures.get("ten_label") or {}
        shown = [(name, value, bounds.get(name)) for name, value in figures.items()]
        # The 10-label block as rows of its section (ten_label_f1_macro, ...). Per-criterion
        # detail and the names of undefined symptoms stay in study_report.json.
        shown += [
            (f"ten_label_{name}", value, (bounds.get("ten_label") or {}).get(name))
            for name, value in nested.items()
        ]
        for name, value, interval in shown:
            if value is not None and not isinstance(value, int | float):
                continue
            interval = interval or {}
            level = ci.get("level") if interval else None
            rows.append([section, name, value, interval.get("low"), interval.get("high"), level])
    comparison = study_report.get("baseline_comparison") or {}
    if comparison.get("baseline"):
        metric = next((k[6:] for k in comparison if k.startswith("model_")), "score")
        interval = comparison.get("baseline_ci") or {}
        rows.append(
            [
                "baseline",
                f"{comparison['baseline']}_{metric}",
                comparison.get(f"baseline_{metric}"),
                interval.get("low"),
                interval.get("high"),
                comparison.get("level"),
            ]
        )
    return rows


def _write_csv(header: list[str] | tuple[str, ...], rows: list[list[Any]], out_csv: Path) -> None:
    with out_csv.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_trials_table(reports: list[dict[str, Any]], out_csv: Path) -> None:
    _write_csv(*trials_table(reports), out_csv)


def write_test_table(study_report: dict[str, Any], out_csv: Path) -> None:
    """Every test metric with its interval, and the baseline (see results_table)."""
    _write_csv(TEST_COLUMNS, results_table(study_report), out_csv)


def write_report_items(
    study_dir: Path,
    report_paths: list[Path],
    study_report: Path,
    study: Any,
    outputs: dict[str, Path],
) -> None:
    """Everything above, into `outputs` (keys disk, importances, trials, test)."""
    reports = [read_json(p) for p in report_paths]
    plot_disk_use(study_dir, reports, outputs["disk"])
    importances = param_importances(study) if study is not None else None
    n_complete = sum(r["status"] == "completed" for r in reports)
    plot_importances(importances, n_complete, outputs["importances"])
    write_trials_table(reports, outputs["trials"])
    write_test_table(read_json(study_report), outputs["test"])
