"""A newcomer's first hour against a finished study (issue 24, parts 1, 3 and 4): bad input
deletes nothing and exits with leanhpo's code and message; a deliberate change names its keys;
every command the closing summary prints runs as printed.

One finished tiny study is shared by the module. Each bad input is run against it with the
documented command, and every file under experiments/ and .snakemake/ must be byte-identical
afterwards (the same set of files, the same bytes).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from services.mlflow_server import free_port
from workflowhelper import REPO, SNAKEMAKE, job_env

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

CONFIGS = (REPO / "config.yaml", REPO / "tests" / "config" / "tiny.yaml")


def snakemake(workdir: Path, *args: str, overlay: Path | None = None, env=None):
    """The documented command, typed in the study's own folder."""
    files = [*map(str, CONFIGS), *([str(overlay)] if overlay else [])]
    command = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--configfile", *files]
    return subprocess.run(
        [*command, "--cores", "1", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=env or job_env(),
        timeout=900,
    )


def snapshot(
    workdir: Path, tops: tuple[str, ...] = ("experiments", ".snakemake")
) -> dict[str, str]:
    """Every file under experiments/ and .snakemake/, with its SHA-256."""
    files = {}
    for top in tops:
        for path in sorted((workdir / top).rglob("*")):
            if path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                files[str(path.relative_to(workdir))] = digest
    return files


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("first_hour")
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir, result.stderr


BAD_INPUTS = {
    "wrong data.path": ({"data": {"source": "local", "path": "/nonexistent/redsm5"}}, "data.path"),
    "misspelled key": ({"train": {"epochz": 3}}, "epochz"),
    "wrong type": ({"train": {"epochs": "three"}}, "train.epochs"),
    "changed train.epochs": ({"train": {"epochs": 3}}, "train.epochs: 2 -> 3"),
    "model folder that does not exist": ({"model": {"id": "./no-such-model"}}, "model.id"),
    "hub model that does not exist": ({"model": {"id": "no-such-org/no-such-model"}}, "model.id"),
    "YAML float without a dot": ("train: {learning_rate: 5e-5}\n", "5.0e-5"),
    "retention change without asking": ({"retention": {"keep_best_trials": 1}}, "rerun_finished"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_touches_nothing_and_exits_2_with_the_message_last(finished, tmp_path, case):
    workdir, _ = finished
    content, named = BAD_INPUTS[case]
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    env = job_env()
    env["HF_HUB_OFFLINE"] = "1"  # a hub lookup answers at once, the same on any machine
    before = snapshot(workdir)
    result = snakemake(workdir, overlay=overlay, env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert snapshot(workdir) == before
    tail = result.stderr.strip().splitlines()
    assert tail[-1] == "(exit 2: nothing was run)"
    message = result.stderr[result.stderr.rindex("leanhpo:") :]
    assert named in message
    assert "Traceback" not in result.stderr and "WorkflowError" not in result.stderr


def test_the_recipe_without_its_files_creates_nothing(tmp_path):
    """overlays/real-redsm5.yaml on a machine without the CSVs: no Optuna study, no MLflow run,
    no experiments folder (it used to leave an empty study in both)."""
    result = snakemake(tmp_path, overlay=REPO / "overlays" / "real-redsm5.yaml")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "data.path" in result.stderr and "redsm5_posts.csv" in result.stderr
    assert not (tmp_path / "experiments").exists()


def test_a_deliberate_rerun_names_the_changed_key_in_snakemakes_reason(finished, tmp_path):
    workdir, _ = finished
    overlay = tmp_path / "retention.yaml"
    overlay.write_text(yaml.safe_dump({"retention": {"keep_best_trials": 1}}))
    before = snapshot(workdir, ("experiments",))
    plan = snakemake(workdir, "-n", "--config", "rerun_finished=True", overlay=overlay)
    assert plan.returncode == 0, plan.stderr[-3000:]
    reasons = [line for line in plan.stdout.splitlines() if "Params have changed" in line]
    assert reasons, plan.stdout[-3000:]
    for line in reasons:  # the key and its two values, not the whole config twice
        assert "('retention.keep_best_trials', 2)" in line, line
        assert "('retention.keep_best_trials', 1)" in line, line
        assert len(line) < 300, line
    assert snapshot(workdir, ("experiments",)) == before  # a dry run


def test_a_jobs_known_stop_is_the_exit_code_and_the_last_message(finished, tmp_path):
    """Without Snakemake's records (.snakemake deleted) the guard cannot see a changed training
    config; a new slot's trial job refuses it (the study's fingerprint), and the run ends with
    the job's code and message instead of Snakemake's exit 1 and traceback."""
    workdir = tmp_path / "copy"
    shutil.copytree(finished[0], workdir)
    shutil.rmtree(workdir / ".snakemake")
    overlay = tmp_path / "epochs.yaml"
    overlay.write_text(yaml.safe_dump({"train": {"epochs": 3}, "study": {"n_trials": 4}}))
    result = snakemake(workdir, "experiments/tiny/trial_0003/report.json", overlay=overlay)
    assert result.returncode == 2, result.stderr[-3000:]
    tail = result.stderr.strip().splitlines()
    assert re.fullmatch(r"\(exit 2; full log: .*trial_0003/logs/stdout\.log\)", tail[-1]), tail
    assert "was started with another config" in tail[-2] and "train.epochs" in tail[-2]
    assert not (workdir / ".snakemake" / "leanhpo-stops").exists()  # the run's record is gone


def _next_commands(summary: str) -> dict[str, str]:
    """The "next:" block of the closing summary: {label: command}."""
    block = summary.split("  next:\n", 1)[1]
    commands = {}
    for line in block.splitlines():
        match = re.match(r"    (\w[\w ]*?)\s{2,}(.+)$", line)
        if not match:
            break
        commands[match.group(1)] = match.group(2)
    return commands


def _serves(command: str, cwd: Path, port: int, env: dict[str, str]) -> bool:
    """Start a server command as printed (on a free port), wait for its page, stop it."""
    command = command.split("  (then", 1)[0].replace("--port 5000", f"--port {port}")
    command = command.replace("--port 8080", f"--port {port}")
    server = subprocess.Popen(
        command,
        shell=True,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    return bool(page.status == 200)
            except OSError:
                time.sleep(0.5)
        return False
    finally:
        subprocess.run(["pkill", "-TERM", "-g", str(server.pid)], check=False)
        server.wait(timeout=30)


def test_every_command_of_the_closing_summary_runs_as_printed(finished, tmp_path):
    workdir, stderr = finished
    commands = _next_commands(stderr[stderr.rindex("leanhpo  study tiny done") :])
    assert {"report", "MLflow UI", "Optuna", "summary", "predict"} <= set(commands), commands
    env = {k: v for k, v in job_env().items() if k != "PATH"}
    env["PATH"] = "/usr/bin:/bin"  # a shell without the project's venv activated
    # Run from a copy, so the study the other tests check stays as it was.
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)

    def run(label: str) -> subprocess.CompletedProcess:
        command = commands[label].split("  (then", 1)[0]
        return subprocess.run(
            command, shell=True, cwd=copy, capture_output=True, text=True, env=env, timeout=600
        )

    report = run("report")
    assert report.returncode == 0, report.stderr[-3000:]
    assert (copy / "report.html").stat().st_size > 10_000
    summary = run("summary")
    assert summary.returncode == 0, summary.stderr[-3000:]
    assert "study tiny done" in summary.stdout
    predicted = run("predict")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    post = json.loads(predicted.stdout.splitlines()[0])
    assert len(post["symptoms"]) == 9
    assert "?workflowType=machine_learning" in commands["MLflow UI"]  # the training view
    for label in ("MLflow UI", "Optuna"):
        assert _serves(commands[label], copy, free_port(), env), label
