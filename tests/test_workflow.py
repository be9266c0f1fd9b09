"""The real Snakefile end to end on tests/config/tiny.yaml, in temporary folders.

One uninterrupted study is shared by the module; the kill test compares against it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import lxml.html
import optuna
import pytest
import yaml
from services.chromium import FLAGS
from services.mlflow_server import MlflowServer
from workflowhelper import job_counts, job_env, kill_storm, snakemake_command

from leanhpo.checkpoints import CheckpointStore, checkpoint_info
from leanhpo.metric_names import BASELINES_GROUP, CURVE_METRICS, CURVES_GROUP
from leanhpo.reports import STUDY_SCHEMA, TRIAL_SCHEMA, validate_report
from leanhpo.tracking import Tracker

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

N_TRIALS = 3
KEEP_BEST_TRIALS = 2


def snakemake(
    workdir: Path, *args: str, overlays: tuple[Path, ...] = (), **kwargs
) -> subprocess.CompletedProcess:
    command = [*snakemake_command(workdir, *overlays), "--cores", "1", *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=job_env(), timeout=900, **kwargs
    )


def _study_dir(workdir: Path) -> Path:
    return workdir / "experiments" / "tiny"


def _optuna(workdir: Path) -> optuna.Study:
    return optuna.load_study(
        study_name="tiny", storage=f"sqlite:///{workdir}/experiments/optuna.db"
    )


def _tracker(workdir: Path) -> Tracker:
    return Tracker(f"sqlite:///{workdir}/experiments/mlflow.db", "leanhpo")


def _histories(workdir: Path) -> dict[int, list]:
    return {
        slot: json.loads((_study_dir(workdir) / f"trial_{slot:04d}" / "report.json").read_text())[
            "history"
        ]
        for slot in range(N_TRIALS)
    }


UNINTERRUPTED_S: dict[str, float] = {}  # the finished study's wall time, for the kill storm
# The finished study's test metrics as it ended with N_TRIALS trials: a later test grows it, and
# its evaluation then scores the best of more trials.
CLEAN_TEST_METRICS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    started = time.monotonic()
    result = snakemake(workdir)
    UNINTERRUPTED_S["study"] = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-4000:]
    CLEAN_TEST_METRICS["study"] = _test_metrics(workdir)
    return workdir


def test_outputs_follow_the_spec_and_validate(finished):
    study = _study_dir(finished)
    for name in ("study.json", "data/data_report.json", "retention.json", "study_report.json"):
        assert (study / name).is_file(), name
    for slot in range(N_TRIALS):
        trial = study / f"trial_{slot:04d}"
        report = json.loads((trial / "report.json").read_text())
        validate_report(report, TRIAL_SCHEMA)
        assert report["status"] == "completed"
        assert (trial / "logs" / "trial.jsonl").is_file() and (
            trial / "logs" / "stdout.log"
        ).is_file()
    study_report = json.loads((study / "study_report.json").read_text())
    validate_report(study_report, STUDY_SCHEMA)
    assert set(study_report["test_metrics"]["criteria_matching"]["per_criterion"]) >= {
        "DEPRESSED_MOOD"
    }
    assert study_report["trial_counts"]["completed"] == N_TRIALS
    info = json.loads((study / "study.json").read_text())
    assert {"study_id", "storage", "created_at"} <= set(info)


def test_optuna_holds_one_complete_trial_per_slot(finished):
    trials = _optuna(finished).get_trials()
    assert sorted(t.user_attrs["leanhpo.slot"] for t in trials) == list(range(N_TRIALS))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_mlflow_has_one_parent_and_a_nested_run_per_trial_without_duplicates(finished):
    tracker = _tracker(finished)
    runs = tracker.client.search_runs([tracker.experiment_id])
    parents = [r for r in runs if r.data.tags.get("leanhpo.role") == "study"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == N_TRIALS
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    for run in children:
        history = tracker.metric_history(run.info.run_id)
        for key in (
            "train_loss",
            "val_loss",
            "val_criteria_f1_macro",
            "val_criteria_f1_micro",
            "val_evidence_f1",
        ):
            assert [step for step, _ in history[key]] == [1, 2], key
        for key, points in history.items():
            steps = [s for s, _ in points]
            assert len(steps) == len(set(steps)), key
        assert run.data.params["learning_rate"]
        assert run.info.status == "FINISHED"
    assert "test_criteria_f1_macro" in parents[0].data.metrics


def test_the_parent_run_ends_with_the_studys_best_and_no_eta(finished):
    """Issue 24: each trial tags the parent with the progress at its start; the evaluation
    leaves the study's final state instead of the last trial's start."""
    tracker = _tracker(finished)
    [parent] = tracker.client.search_runs([tracker.experiment_id], "tags.`leanhpo.role` = 'study'")
    report = json.loads((_study_dir(finished) / "study_report.json").read_text())
    assert report["best_validation_score"] == _optuna(finished).best_value
    tags = parent.data.tags
    assert float(tags["leanhpo.best_so_far"]) == report["best_validation_score"]
    assert (tags["leanhpo.trial"], tags["leanhpo.eta_seconds"]) == (
        f"trial {N_TRIALS} of {N_TRIALS}",
        "0",
    )
    assert tags["leanhpo.study_status"] == "finished"


def _dump_dom(chromium, url: str, profile: Path) -> str:
    """The page at `url` after its scripts ran (services/chromium's flags; it dumps files)."""
    command = [str(chromium.binary), *FLAGS, f"--user-data-dir={profile}"]
    command += ["--virtual-time-budget=20000", "--dump-dom", url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and result.stdout.strip(), result.stderr[-2000:]
    return result.stdout


def test_mlflow_ui_opens_a_trials_metrics_on_its_learning_curves(finished, chromium, tmp_path):
    """Issue 24: MLflow's own UI, in Chromium, shows a trial's metric charts in sections:
    the learning curves first, the trivial baselines after them, and last the section of the
    keys without a group (every metric under the name study.metric and the reports use)."""
    tracker = _tracker(finished)
    trial = tracker.client.search_runs([tracker.experiment_id], "tags.`leanhpo.slot` = '0'")[0]
    server = MlflowServer(tmp_path, f"sqlite:///{finished}/experiments/mlflow.db")
    server.start()
    try:
        page = f"#/experiments/{tracker.experiment_id}/runs/{trial.info.run_id}/model-metrics"
        dom = _dump_dom(chromium, f"{server.uri}/{page}", tmp_path / "profile")
    finally:
        server.stop()
    headers = lxml.html.fromstring(dom).xpath("//*[contains(@class, '-collapse-header')]")
    sections = [" ".join(h.text_content().split()).removesuffix("Add chart") for h in headers]
    baselines = [f"{BASELINES_GROUP}/{name}" for name in ("all_positive", "always_null")]
    baselines.append(f"{BASELINES_GROUP}/prevalence")
    assert sections[0] == f"{CURVES_GROUP}({len(CURVE_METRICS)})", sections
    assert [s.split("(")[0] for s in sections[1:-1]] == baselines, sections
    assert sections[-1].startswith("Model metrics("), sections
    history = tracker.metric_history(trial.info.run_id)
    for key in ("train_loss", "val_loss", "val_criteria_f1_macro", "val_evidence_exact_match"):
        assert history[f"{CURVES_GROUP}/{key}"] == history[key]


def test_retention_keeps_only_best_checkpoints_of_the_best_trials(finished):
    study = _study_dir(finished)
    retention = json.loads((study / "retention.json").read_text())
    kept = {entry["slot"] for entry in retention["kept"]}
    assert len(kept) == KEEP_BEST_TRIALS
    for slot in range(N_TRIALS):
        report = json.loads((study / f"trial_{slot:04d}" / "report.json").read_text())
        on_disk = sorted(p.name for p in (study / f"trial_{slot:04d}" / "checkpoints").iterdir())
        best = sorted(f"epoch_{e:04d}" for e in report["best_epochs"])
        assert on_disk == (best if slot in kept else [])


def _thread_events(workdir: Path) -> list[dict]:
    events = []
    for slot in range(N_TRIALS):
        log = _study_dir(workdir) / f"trial_{slot:04d}" / "logs" / "trial.jsonl"
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        events += [line["context"] for line in lines if line["context"].get("kind") == "threads"]
    return events


def _test_metrics(workdir: Path) -> dict:
    return json.loads((_study_dir(workdir) / "study_report.json").read_text())["test_metrics"]


def test_trials_fork_from_the_preloaded_worker_which_leaves_with_the_driver(finished):
    events = _thread_events(finished)
    assert len(events) == N_TRIALS
    assert all(e["preloaded"] for e in events) and {e["threads"] for e in events} == {1}
    log = (_study_dir(finished) / "logs" / "preload.log").read_text()
    assert log.count("runs leanhpo.trial.job:main") == N_TRIALS and log.rstrip().endswith("exiting")


def test_without_the_preloaded_worker_the_study_is_the_same(finished, tmp_path):
    overlay = tmp_path / "no_preload.yaml"
    overlay.write_text("resources: {preload: false}\n")
    workdir = tmp_path / "fresh"
    result = snakemake(workdir, overlays=(overlay,))
    assert result.returncode == 0, result.stderr[-4000:]
    assert not any(e["preloaded"] for e in _thread_events(workdir))
    assert not (_study_dir(workdir) / "logs" / "preload.log").exists()
    assert _histories(workdir) == _histories(finished)
    assert _test_metrics(workdir) == CLEAN_TEST_METRICS["study"]


def test_dry_run_of_a_finished_study_has_nothing_to_do(finished):
    result = snakemake(finished, "-n")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_html_report(finished):
    result = snakemake(finished, "--report", "report.html")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (finished / "report.html").stat().st_size > 10_000


def test_malformed_config_fails_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"study": {"n_trials": -1, "n_trails": 2}}))
    result = snakemake(tmp_path, "-n", overlays=(bad,))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "study.n_trials" in output and "n_trails" in output


def _wait_for(predicate, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def _in_epoch(log: Path, epoch: int) -> bool:
    if not log.is_file():
        return False
    for line in log.read_text().splitlines():
        context = json.loads(line)["context"]
        if context.get("kind") == "epoch_start" and context.get("epoch") == epoch:
            return True
    return False


def _command(workdir: Path, *overlays: Path) -> list[str]:
    return [*snakemake_command(workdir, *overlays), "--cores", "1"]


def _start(workdir: Path, *overlays: Path) -> subprocess.Popen:
    return subprocess.Popen(
        _command(workdir, *overlays),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=job_env(),
        start_new_session=True,
    )


def _kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_a_second_live_instance_is_refused(tmp_path):
    slow = tmp_path / "slow.yaml"
    slow.write_text(yaml.safe_dump({"train": {"epochs": 200}}))
    first = _start(tmp_path, slow)
    try:
        trial_log = _study_dir(tmp_path) / "trial_0000" / "logs" / "trial.jsonl"
        assert _wait_for(lambda: _in_epoch(trial_log, 1), timeout=600)
        second = snakemake(tmp_path, "--rerun-incomplete", overlays=(slow,))
        assert first.poll() is None, "the first instance must still be alive"
    finally:
        _kill(first)
    assert second.returncode != 0
    assert "LockException" in second.stdout + second.stderr or "cannot be locked" in second.stderr


def _run_trial_inputs(plan: str) -> list[list[str]]:
    blocks = plan.split("rule run_trial:")[1:]
    return [block.split("input:", 1)[1].split("\n", 1)[0].split(", ") for block in blocks]


@pytest.mark.parametrize("per_trial_test", [False, True])
def test_trial_jobs_declare_the_test_split_only_when_they_score_on_it(tmp_path, per_trial_test):
    """evaluation.per_trial_test makes each trial read test.jsonl: then it is a declared input
    (ordered and shipped like the other splits), and only then."""
    overlay = tmp_path / "evaluation.yaml"
    overlay.write_text(yaml.safe_dump({"evaluation": {"per_trial_test": per_trial_test}}))
    plan = snakemake(tmp_path, "-n", overlays=(overlay,))
    assert plan.returncode == 0, plan.stderr[-4000:]
    inputs = _run_trial_inputs(plan.stdout + plan.stderr)
    assert len(inputs) == N_TRIALS
    test_split = "experiments/tiny/data/test.jsonl"
    assert all((test_split in job) is per_trial_test for job in inputs), inputs
    assert all("experiments/tiny/data/validation.jsonl" in job for job in inputs)


def test_growing_n_trials_runs_only_the_new_slots(finished):
    overlay = finished / "grow.yaml"
    overlay.write_text(yaml.safe_dump({"study": {"n_trials": N_TRIALS + 2}}))
    before = {p: p.stat().st_mtime_ns for p in _study_dir(finished).glob("trial_*/report.json")}
    plan = snakemake(finished, "-n", overlays=(overlay,))
    assert plan.returncode == 0
    assert job_counts(plan.stdout + plan.stderr)["run_trial"] == 2
    result = snakemake(finished, overlays=(overlay,))
    assert result.returncode == 0, result.stderr[-4000:]
    assert {p: p.stat().st_mtime_ns for p in before} == before  # finished trials untouched
    assert len(_optuna(finished).get_trials()) == N_TRIALS + 2
    # the study's evaluation ran again, over every trial
    study_report = json.loads((_study_dir(finished) / "study_report.json").read_text())
    assert study_report["n_trials"] == N_TRIALS + 2


KILL_ROUNDS = int(os.environ.get("LEANHPO_KILL_ROUNDS", "6"))  # 20 in docs/benchmarks.md


def test_kill_9_at_random_instants_then_resume_gives_the_uninterrupted_result(finished, tmp_path):
    """Issue 8 acceptance: kill -9 (the whole process group: Snakemake and its job) at seeded
    random instants over a whole study, each followed by the resume command, until it ends.
    Every slot COMPLETE once, no duplicate or missing epoch in MLflow, no run left RUNNING,
    and the test metrics of the uninterrupted study. LEANHPO_KILL_ROUNDS sets the kill count."""
    workdir = tmp_path / "storm"
    workdir.mkdir()
    locks_left: list[bool] = []  # a kill -9 leaves Snakemake's locks; no --unlock is needed
    kills = kill_storm(
        [*_command(workdir), "--rerun-incomplete"],
        KILL_ROUNDS,
        seed=8,
        uninterrupted_s=UNINTERRUPTED_S["study"],
        after_kill=lambda: locks_left.append(
            bool(list((workdir / ".snakemake" / "locks").glob("*.lock")))
        ),
    )
    final = snakemake(workdir, "--rerun-incomplete")
    assert final.returncode == 0, final.stderr[-4000:]
    assert len(kills) >= min(3, KILL_ROUNDS), kills
    assert any(locks_left), "no kill landed while Snakemake held its locks"

    trials = _optuna(workdir).get_trials()
    assert sorted(t.user_attrs["leanhpo.slot"] for t in trials) == list(range(N_TRIALS))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    tracker = _tracker(workdir)
    runs = tracker.client.search_runs([tracker.experiment_id])
    assert len(runs) == N_TRIALS + 1  # no run created twice
    for run in runs:
        assert run.info.status == "FINISHED", run.info.run_name
        for key, points in tracker.metric_history(run.info.run_id).items():
            steps = [s for s, _ in points]
            assert len(steps) == len(set(steps)), f"duplicate point {key} in {run.info.run_name}"
            if key.startswith(("val_", "train_")):
                assert steps == [1, 2], (key, run.info.run_name)
    assert _histories(workdir) == _histories(finished)
    # Kills landed in saves and strips too: every kept checkpoint verifies, and a finished
    # trial keeps weights only (never a checkpoint that lacks its optimizer yet says full).
    folders = list(_study_dir(workdir).glob("trial_*/checkpoints/epoch_*"))
    assert folders
    for folder in folders:
        info = checkpoint_info(folder)
        assert info is not None and info.kind == "weights", folder
        CheckpointStore(folder.parent).verify(info.epoch)
        assert not (folder / "optimizer.safetensors").exists()
    stormed = json.loads((_study_dir(workdir) / "study_report.json").read_text())
    assert stormed["test_metrics"] == CLEAN_TEST_METRICS["study"]
