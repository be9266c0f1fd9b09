"""The report (`snakemake --report report.html` without --cores, as the README says), its new
items (disk use, importances, per-trial table, test results), and `make dashboard`'s server."""

from __future__ import annotations

import csv
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from workflowhelper import SNAKEMAKE, job_env, snakemake_command

from leanhpo.report_items import MIN_TRIALS_FOR_IMPORTANCE, param_importances

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


@pytest.mark.workflow
@pytest.mark.slow
def test_report_builds_without_cores_and_holds_the_new_items(study: Path) -> None:
    command = [*snakemake_command(study), "--report", "report.html"]  # no --cores: README
    result = subprocess.run(command, capture_output=True, text=True, env=job_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    html = (study / "report.html").read_text(errors="replace")
    for name in ITEMS:
        assert (study / "experiments/tiny/plots" / name).stat().st_size > 0
        assert name in html, name
    rows = list(csv.DictReader((study / "experiments/tiny/plots/trials.csv").open()))
    assert [r["slot"] for r in rows] == ["0", "1", "2"]
    assert {"status", "best_validation_score", "epochs_trained", "learning_rate"} <= set(rows[0])
    tests = list(csv.DictReader((study / "experiments/tiny/plots/test_results.csv").open()))
    f1 = next(r for r in tests if r["metric"] == "f1_macro")
    assert float(f1["ci_low"]) <= float(f1["value"]) <= float(f1["ci_high"])


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
