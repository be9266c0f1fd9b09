"""Following a study on the terminal (SPEC 7a): one real `snakemake` run of the tiny config,
its terminal streams read for the per-epoch progress lines and the closing summary; and a
known stop (bad data) whose full message reaches the terminal, not only the log file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workflowhelper import REPO, job_env, snakemake_command

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

N_TRIALS, EPOCHS = 3, 2
PROGRESS = re.compile(
    r"^leanhpo  trial (\d) of 3  epoch (\d)/2  val_criteria_f1_macro (\d\.\d{3})  "
    r"best (\d\.\d{3}) \(trial (\d)\)  ETA (\d+ s|\d+ min|\?)$",
    re.MULTILINE,
)
# Not `all`: the export step has tests of its own; the summary needs only the study report.
TINY = "tests/config/tiny.yaml"
TARGET = "experiments/tiny/plots/optimization_history.png"


def _snakemake(workdir: Path, *args: str, overlays: tuple[Path, ...] = ()):
    command = [*snakemake_command(workdir, *overlays), "--cores", "1", *args]
    return subprocess.run(command, capture_output=True, text=True, env=job_env(), timeout=900)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    workdir = tmp_path_factory.mktemp("follow")
    result = _snakemake(workdir, TARGET)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir, result


def test_one_progress_line_per_finished_epoch(run) -> None:
    workdir, result = run
    lines = PROGRESS.findall(result.stderr)
    assert [(t, e) for t, e, *_ in lines] == [
        (str(t), str(e)) for t in range(1, N_TRIALS + 1) for e in range(1, EPOCHS + 1)
    ]
    for _trial, _epoch, value, best, _slot, _eta in lines:
        assert float(best) >= float(value) or float(best) > 0
    assert lines[-1][5] in ("0 s", "?")  # nothing left after the last epoch
    assert lines[0][5] != "?"  # the first epoch already gives an ETA
    # The terminal gets the summary line; the trial's log file keeps the full record.
    stdout_log = (workdir / "experiments/tiny/trial_0000/logs/stdout.log").read_text()
    assert "epoch 1 done" in stdout_log and "epoch 1 done" not in result.stderr


def test_closing_summary_on_the_terminal(run) -> None:
    _, result = run
    summary = result.stderr[result.stderr.index("leanhpo  study tiny done") :]
    for expected in (
        "3 trials (3 completed)",
        "best: trial ",
        "(folder trial_00",
        "params: dropout=",
        "test (",
        "criteria f1_macro",
        "vs baseline",
        "disk: checkpoints kept",
        "/snakemake --snakefile ",
        "--report report.html",
        "mlflow ui --backend-store-uri sqlite:///",
        "optuna-dashboard sqlite:///",
    ):
        assert expected in summary, expected


def test_cli_summary_matches(run) -> None:
    workdir, _ = run
    configs = ("--config", str(REPO / "config.yaml"), "--config", str(REPO / TINY))
    out = subprocess.run(
        [sys.executable, "-m", "leanhpo", "summary", *configs],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=job_env(),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("leanhpo  study tiny done")
    assert "experiments/tiny/study_report.json" in out.stdout


def test_known_stop_prints_its_message_on_the_terminal(tmp_path: Path) -> None:
    data = tmp_path / "redsm5"
    data.mkdir()
    (data / "redsm5_posts.csv").write_text("post_id,text\n")
    (data / "redsm5_annotations.csv").write_text(
        "post_id,sentence_id,sentence_text,DSM5_symptom,status,explanation\n"
    )
    overlay = tmp_path / "local.yaml"
    overlay.write_text(yaml.safe_dump({"data": {"source": "local", "path": str(data)}}))
    workdir = tmp_path / "work"
    result = _snakemake(workdir, "experiments/tiny/data/data_report.json", overlays=(overlay,))
    assert result.returncode != 0
    terminal = result.stdout + result.stderr
    assert "has a header and no rows" in terminal
    assert f"{data / 'redsm5_posts.csv'}" in terminal
    assert "(exit 2; full log: experiments/tiny/logs/prepare_dataset.log)" in terminal
    log = (workdir / "experiments/tiny/logs/prepare_dataset.log").read_text()
    assert "has a header and no rows" in log
