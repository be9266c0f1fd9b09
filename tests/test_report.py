"""The report (`snakemake --report report.html` without --cores, as the README says), its new
items (disk use, importances, per-trial table, test results), what its landing view shows in a
real browser, and `make dashboard`'s server."""

from __future__ import annotations

import csv
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from services.chromium import Chromium, images, tables, visible_text
from workflowhelper import SNAKEMAKE, job_env, snakemake_command

from leanhpo.report_items import MIN_TRIALS_FOR_IMPORTANCE, param_importances
from leanhpo.report_page import study_page

TARGET = "experiments/tiny/plots/optimization_history.png"
LENGTHS = "experiments/tiny/data/length_report.json"
ITEMS = ("disk_use.png", "param_importances.png", "trials.csv", "test_results.csv")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("report")
    # Everything the report shows except the export (tested on its own).
    command = [*snakemake_command(workdir), "--cores", "1", TARGET, LENGTHS]
    result = subprocess.run(command, capture_output=True, text=True, env=job_env(), timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


@pytest.fixture(scope="module")
def report_html(study: Path) -> Path:
    command = [*snakemake_command(study), "--report", "report.html"]  # no --cores: README
    result = subprocess.run(command, capture_output=True, text=True, env=job_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return study / "report.html"


@pytest.mark.workflow
@pytest.mark.slow
def test_report_builds_without_cores_and_holds_the_new_items(
    study: Path, report_html: Path
) -> None:
    html = report_html.read_text(errors="replace")
    for name in ITEMS:
        assert (study / "experiments/tiny/plots" / name).stat().st_size > 0
        assert name in html, name
    rows = list(csv.DictReader((study / "experiments/tiny/plots/trials.csv").open()))
    assert [r["slot"] for r in rows] == ["0", "1", "2"]
    assert {"status", "best_validation_score", "epochs_trained", "learning_rate"} <= set(rows[0])
    tests = list(csv.DictReader((study / "experiments/tiny/plots/test_results.csv").open()))
    f1 = next(r for r in tests if r["metric"] == "f1_macro")
    assert float(f1["ci_low"]) <= float(f1["value"]) <= float(f1["ci_high"])


def _row(table: list[list[str]], *first_cells: str) -> list[str]:
    return next(row for row in table if tuple(row[: len(first_cells)]) == first_cells)


@pytest.mark.workflow
@pytest.mark.slow
def test_report_opens_on_the_study_results(
    study: Path, report_html: Path, chromium: Chromium
) -> None:
    """Issue 24: the report's landing view, as Chromium renders it with no click, shows the
    test macro-F1 with its interval, the baseline comparison, a row for every trial and the
    plots (a CSV result is only a download link, which a browser does not open)."""
    dom = chromium.dump_dom(report_html)
    text = visible_text(dom)
    report = json.loads((study / "experiments/tiny/study_report.json").read_text())
    f1 = report["test_metrics"]["criteria_matching"]["f1_macro"]
    ci = report["test_metrics_ci"]["criteria_matching"]["f1_macro"]
    assert f"f1_macro: {f1:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]" in text, text[:3000]

    shown = tables(dom)
    test_table = next(t for t in shown if t and t[0][:2] == ["section", "metric"])
    assert _row(test_table, "criteria_matching", "f1_macro")[2:] == [
        f"{f1:.3f}",
        f"[{ci['low']:.3f}, {ci['high']:.3f}]",
    ]
    comparison = report["baseline_comparison"]
    baseline = _row(test_table, "baseline", f"{comparison['baseline']}_f1_macro")
    assert baseline[2] == f"{comparison['baseline_f1_macro']:.3f}"
    assert "share_not_better" in text and f"{comparison['share_not_better']:.3f}" in text

    trials = next(t for t in shown if t and t[0][0] == "trial (folder)")
    for slot in range(3):
        trial = json.loads((study / f"experiments/tiny/trial_{slot:04d}/report.json").read_text())
        row = _row(trials, f"trial {slot + 1} (trial_{slot:04d})")
        assert row[1:3] == [trial["status"], f"{trial['best_validation_score']:.3f}"], row
        assert f"learning_rate={trial['params']['learning_rate']:.3g}" in row[-1], row
    assert len(trials) == 1 + 3  # the header and one row per trial, nothing else

    plots = [src for src in images(dom) if src.startswith("data:image/png")]
    assert len(plots) >= 4  # history, learning curves, disk use, importances


def test_study_page_escapes_values_and_leaves_missing_intervals_empty() -> None:
    """A study evaluated without bootstrap (no intervals) and a categorical param that looks like
    markup: the page shows both as text."""
    report = {
        "study_name": "s",
        "optimization_metric": "val_criteria_f1_macro",
        "best_trial": {"slot": 0, "number": 0},
        "best_validation_score": 0.5,
        "trial_counts": {"completed": 1},
        "test_metrics": {"criteria_matching": {"f1_macro": 0.25}},
        "test_metrics_ci": {},
    }
    trial = {"slot": 0, "status": "completed", "best_validation_score": 0.5, "history": []}
    page = study_page(report, [{**trial, "params": {"loss": "<focal>", "dropout": 0.123456}}])
    assert "<focal>" not in page
    test_table, trials = tables(page)
    assert test_table[1] == ["criteria_matching", "f1_macro", "0.250", ""]
    assert trials[1][0] == "trial 1 (trial_0000)"
    assert trials[1][-1] == "dropout=0.123, loss=<focal>"


def _study_with(n_complete: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    study.optimize(
        lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True) * 100 + t.suggest_float("d", 0, 0.3),
        n_trials=n_complete,
    )
    return study


def test_importances_only_once_enough_trials_completed() -> None:
    assert param_importances(_study_with(MIN_TRIALS_FOR_IMPORTANCE - 1)) is None
    importances = param_importances(_study_with(MIN_TRIALS_FOR_IMPORTANCE + 3))
    assert importances is not None and set(importances) == {"lr", "d"}
    assert max(importances, key=importances.__getitem__) == "lr"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.workflow
@pytest.mark.slow
def test_dashboard_serves_the_study_storage(study: Path) -> None:
    port = _free_port()
    dashboard = shutil.which("optuna-dashboard", path=str(SNAKEMAKE.parent))
    assert dashboard, "optuna-dashboard is not installed (requirements.lock)"
    storage = f"sqlite:///{study}/experiments/optuna.db"
    # What `make dashboard` runs, with this study's storage and a free port.
    server = subprocess.Popen(
        [dashboard, "--host", "127.0.0.1", "--port", str(port), storage],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline and status is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    status, body = r.status, r.read().decode()
            except OSError:
                time.sleep(0.5)
        assert status == 200 and '"tiny"' in body
    finally:
        server.terminate()
        server.wait(timeout=30)
