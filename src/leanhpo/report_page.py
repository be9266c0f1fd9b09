"""The study on the landing page of `snakemake --report report.html` (rule plot_study).

Snakemake's HTML report opens on the workflow description (docs/report/workflow.rst, rendered
by docutils), beside the rule graph; a CSV or JSON result is there only as a download link,
which a browser does not open. So plot_study also writes the study's results as an HTML
fragment, and workflow.rst pulls it in with docutils' ``raw:: html`` ``:file:`` directive: the
best trial against the trivial baseline on validation, the test figures with their bootstrap
intervals, the baseline comparison, one row per trial and the plots. Values are rounded for
reading; trials.csv and test_results.csv (the same rows, from leanhpo.report_items) keep every
digit.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from leanhpo.paths import exported_folder, trial_label
from leanhpo.report_items import TRIAL_COLUMNS, results_table, trials_table
from leanhpo.study.confirm import confirm_summary
from leanhpo.summary import (
    SHOWN_TEST_METRICS,
    human_bytes,
    left_out_note,
    share_not_better,
    ten_label_line,
)

# A table wider than the text column scrolls inside its own box instead of pushing the rule
# graph beside it off the page.
SCROLL = '<div style="overflow-x: auto">{}</div>'
# The per-trial table as a reader wants it beside the rule graph: fewer columns than
# trials.csv (the Optuna number and the last run's wall time stay there), and the sampled
# params in one column that wraps (the full search space has about twenty).
TRIAL_HEADER = [
    "trial (folder)",
    "status",
    "best validation score",
    "best epoch(s)",
    "epochs",
    "train s",
    "checkpoints kept",
    "peak memory",
    "params",
]


def _score(value: Any) -> str:
    """A score as the page shows it (3 decimals); "n/a" for an undefined one."""
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _interval(low: Any, high: Any) -> str:
    """A bootstrap interval as the page shows it; "" where there is none."""
    return "" if low is None or high is None else f"[{_score(low)}, {_score(high)}]"


def _param(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else escape(str(value))


def _table(header: list[str], rows: list[list[str]], caption: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    table = (
        f"<table><caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )
    return SCROLL.format(table)


def _headline(report: dict[str, Any], reports: list[dict[str, Any]]) -> str:
    best = report.get("best_trial") or {}
    trial = next((r for r in reports if r["slot"] == best.get("slot")), {})
    counts = ", ".join(f"{n} {k}" for k, n in (report.get("trial_counts") or {}).items() if n)
    params = ", ".join(f"{k}={_param(v)}" for k, v in (trial.get("params") or {}).items())
    baseline = (trial.get("baseline") or {}).get("best") or "trivial baseline"
    return (
        f"<h2>Best trial</h2><p>{len(reports)} trials ({escape(counts)}); the best is "
        f"{trial_label(best.get('slot', -1), len(reports))} (folder "
        f"{escape(exported_folder(best))}): "
        f"{escape(report['optimization_metric'])} {_score(report.get('best_validation_score'))}"
        f" on validation, against {_score(report.get('baseline_validation_score'))} for the best "
        f"trivial baseline ({escape(baseline)}).</p><p>Params: {params or 'none searched'}.</p>"
        + _confirm_section(report)
    )


def _confirm_section(report: dict[str, Any]) -> str:
    """study.confirm: the configurations' seed spreads and the winner, as in the summary."""
    lines = confirm_summary(report.get("confirm"))
    if not lines:
        return ""
    items = "".join(f"<li>{escape(line.strip())}</li>" for line in lines[1:])
    return f"<p>{escape(lines[0])}</p><ul>{items}</ul>"


def _test_section(report: dict[str, Any]) -> str:
    metrics, ci = report.get("test_metrics") or {}, report.get("test_metrics_ci") or {}
    level = ci.get("level", 0.95)
    posts = (report.get("test_split") or {}).get("posts", "?")
    key_figures = []
    for section, name, label in SHOWN_TEST_METRICS:
        value = (metrics.get(section) or {}).get(name)
        bounds = (ci.get(section) or {}).get(name) or {}
        if value is not None:
            shown = f"{_score(value)} {_interval(bounds.get('low'), bounds.get('high'))}"
            key_figures.append(f"<li>test {escape(label)}: <strong>{shown.strip()}</strong></li>")
    criteria = metrics.get("criteria_matching") or {}
    for extra in (
        left_out_note(criteria),
        ten_label_line(criteria, ci.get("criteria_matching") or {}),
    ):
        if extra:
            key_figures.append(f"<li>{escape(extra)}</li>")
    parts = [
        f"<h2>Test set</h2><p>The best trial, scored once on {posts} test posts; "
        f"{level:.0%} post-level bootstrap intervals.</p><ul>{''.join(key_figures)}</ul>"
    ]
    comparison = report.get("baseline_comparison") or {}
    if comparison.get("baseline"):
        metric = next((k[len("model_") :] for k in comparison if k.startswith("model_")), "")
        bounds = comparison.get("baseline_ci") or {}
        parts.append(
            f"<p>Against the strongest trivial baseline ({escape(comparison['baseline'])}) on the "
            f"same {comparison.get('samples', '?')} resamples: {escape(metric)} model "
            f"{_score(comparison.get(f'model_{metric}'))}, baseline "
            f"{_score(comparison.get(f'baseline_{metric}'))} "
            f"{_interval(bounds.get('low'), bounds.get('high'))}; share_not_better "
            f"{_score(share_not_better(comparison))} (the share of resamples in which the model "
            "is not better: a bootstrap proportion, not a p-value).</p>"
        )
    rows = [
        [escape(section), escape(name), _score(value), _interval(low, high)]
        for section, name, value, low, high, _ in results_table(report)
    ]
    header = ["section", "metric", "value", f"{level:.0%} interval"]
    parts.append(_table(header, rows, "Every test figure (test_results.csv)"))
    return "".join(parts)


def _seconds(value: Any) -> str:
    return "" if value is None else f"{value:.1f}"


def _trials_section(reports: list[dict[str, Any]]) -> str:
    header, rows = trials_table(reports)
    names = header[len(TRIAL_COLUMNS) :]
    shown = []
    for row in rows:
        slot, _, status, best, epochs, trained, train_s, _, kept, peak_mb, failure = row[
            : len(TRIAL_COLUMNS)
        ]
        values = zip(names, row[len(TRIAL_COLUMNS) :], strict=True)
        params = ", ".join(f"{escape(name)}={_param(v)}" for name, v in values if v is not None)
        shown.append(
            [
                f"{trial_label(slot)} (trial_{slot:04d})",
                escape(f"{status} ({failure})" if failure else status),
                _score(best),
                escape(epochs),
                str(trained),
                _seconds(train_s),
                human_bytes(kept),
                "" if peak_mb is None else human_bytes(int(peak_mb * 2**20)),
                params,
            ]
        )
    return "<h2>Trials</h2>" + _table(
        TRIAL_HEADER, shown, "One row per trial, numbered from 1 (trials.csv: slot)"
    )


def _figures_section(figures: list[Path]) -> str:
    """The plots, embedded: the page must show them wherever the report is opened (the report
    is one file), and Snakemake 9.27's own ``embeddedimage`` directive leaves a file path."""
    shown = "".join(
        f'<img src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" '
        f'alt="{escape(png.name)}" style="width: 100%">'
        for png in figures
    )
    return f"<h2>Plots</h2>{shown}" if shown else ""


def study_page(
    report: dict[str, Any], reports: list[dict[str, Any]], figures: Sequence[Path] = ()
) -> str:
    """The HTML fragment: best trial, test set, trials, and the `figures` (PNG files)."""
    body = _headline(report, reports) + _test_section(report) + _trials_section(reports)
    return f'<section id="leanhpo-study">{body}{_figures_section(list(figures))}</section>\n'


def write_study_page(
    report: dict[str, Any],
    reports: list[dict[str, Any]],
    out: Path,
    figures: Sequence[Path] = (),
) -> None:
    out.write_text(study_page(report, reports, figures), encoding="utf-8")
