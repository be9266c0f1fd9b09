"""Plots for `snakemake --report`: the optimisation history and per-trial learning curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leanhpo.fsutil import read_json
from leanhpo.paths import trial_label


def plot_study(
    report_paths: list[Path],
    study_report: Path,
    history_png: Path,
    curves_png: Path,
    items: dict[str, Path] | None = None,
    study_config: dict[str, Any] | None = None,
) -> None:
    """The two plots, and with `items` (disk, importances, trials, test) the report items of
    leanhpo.report_items; with `items["page"]` also the report's landing page with all of them
    (leanhpo.report_page). `study_config` (name, storage, seed) opens the Optuna study for the
    importances."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    reports = sorted((read_json(p) for p in report_paths), key=lambda r: r["slot"])
    metric = read_json(study_report)["optimization_metric"]
    history_png.parent.mkdir(parents=True, exist_ok=True)

    fig, ax = plt.subplots(figsize=(7, 4))
    scored = [r for r in reports if r["best_validation_score"] is not None]
    done = [r for r in scored if r["status"] == "completed"]
    slots = [r["slot"] for r in done]
    scores = [r["best_validation_score"] for r in done]
    ax.plot(slots, scores, "o", label="trial best")
    pruned = [r for r in scored if r["status"] == "pruned"]
    if pruned:  # their best before study.pruner stopped them; never the study's best
        xs, ys = [r["slot"] for r in pruned], [r["best_validation_score"] for r in pruned]
        ax.plot(xs, ys, "x", color="grey", label="pruned (best before stopping)")
    running = [max(scores[: i + 1]) for i in range(len(scores))]
    ax.step(slots, running, where="post", label="best so far")
    baselines = [r["baseline"]["optimization_metric_value"] for r in reports]
    baseline = max((b for b in baselines if b is not None), default=None)
    if baseline is not None:
        ax.axhline(baseline, linestyle="--", color="grey", label="trivial baseline")
    ax.set(xlabel="trial slot", ylabel=metric, title="Optimisation history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(history_png, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for report in reports:
        epochs = [h["epoch"] for h in report["history"]]
        values = [h["metrics"].get(metric) for h in report["history"]]
        style = "--" if report["status"] == "pruned" else "-"
        tag = " (pruned)" if report["status"] == "pruned" else ""
        ax.plot(epochs, values, style, marker=".", label=f"{trial_label(report['slot'])}{tag}")
    ax.set(xlabel="epoch", ylabel=metric, title="Learning curves")
    if len(reports) <= 12:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(curves_png, dpi=100)
    plt.close(fig)
    if items is not None:
        _report_items(report_paths, study_report, items, study_config)
    if items is not None and "page" in items:
        from leanhpo.report_page import write_study_page

        figures = [history_png, curves_png, items["disk"], items["importances"]]
        write_study_page(read_json(study_report), reports, items["page"], figures)


def _report_items(
    report_paths: list[Path],
    study_report: Path,
    items: dict[str, Path],
    study_config: dict[str, Any] | None,
) -> None:
    from leanhpo.report_items import write_report_items

    study = None
    if study_config is not None:
        from leanhpo.study.setup import open_study

        study = open_study(
            study_config["name"],
            study_config["storage"],
            study_config["seed"],
            timeout_s=study_config["storage_timeout_s"],
        )
    write_report_items(study_report.parent, report_paths, study_report, study, items)
