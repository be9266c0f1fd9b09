"""The real Snakefile on a real one-node SLURM cluster through Snakemake's SLURM executor plugin
(issue 9): the repository's workflow profile plus only what this small test cluster needs, and
the same contract as a local run. Trials are SLURM jobs; the other rules run on the submit host."""

from __future__ import annotations

import json
import subprocess

import optuna
import pytest
import yaml
from workflowhelper import REPO, job_env, snakemake_command

from leanhpo.reports import STUDY_SCHEMA, TRIAL_SCHEMA, validate_report
from leanhpo.tracking import Tracker

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

N_TRIALS = 3  # tests/config/tiny.yaml: 3 trials of 2 epochs
TRIAL_RESOURCES = {"mem_mb": 1000, "runtime": 10}
SLURM_TRIAL_RULE = "rule_run_trial"


@pytest.fixture(scope="module")
def through_slurm(slurm_cluster, tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("slurm_study")
    overlay = workdir / "resources.yaml"
    overlay.write_text(yaml.safe_dump({"resources": TRIAL_RESOURCES}))
    command = snakemake_command(workdir, overlay)
    command += ["--workflow-profile", str(REPO / "profiles" / "slurm")]
    # What this test cluster needs beyond the profile: a CPU per trial (the node may have two),
    # status checks paced for trials of seconds rather than hours, and the SLURM job logs kept
    # as evidence (the plugin deletes those of jobs that succeeded).
    command += ["--cores", "1", "--slurm-init-seconds-before-status-checks", "2"]
    command += ["--slurm-keep-successful-logs", "--latency-wait", "5"]
    # Jobs inherit this environment (sbatch --export=ALL): the venv's python and snakemake.
    env = job_env(slurm_cluster.env)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    # Read at once: slurmctld forgets finished jobs after MinJobAge.
    return {"workdir": workdir, "log": result.stderr, "jobs": slurm_cluster.jobs()}


def test_outputs_validate_as_in_a_local_run(through_slurm):
    study = through_slurm["workdir"] / "experiments" / "tiny"
    for slot in range(N_TRIALS):
        report = json.loads((study / f"trial_{slot:04d}" / "report.json").read_text())
        validate_report(report, TRIAL_SCHEMA)
        assert report["status"] == "completed"
    study_report = json.loads((study / "study_report.json").read_text())
    validate_report(study_report, STUDY_SCHEMA)
    assert study_report["trial_counts"]["completed"] == N_TRIALS
    assert (study / "plots" / "optimization_history.png").is_file()


def test_optuna_holds_one_complete_trial_per_slot(through_slurm):
    storage = f"sqlite:///{through_slurm['workdir']}/experiments/optuna.db"
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert sorted(t.user_attrs["leanhpo.slot"] for t in trials) == list(range(N_TRIALS))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_mlflow_holds_every_epoch_once(through_slurm):
    tracker = Tracker(f"sqlite:///{through_slurm['workdir']}/experiments/mlflow.db", "leanhpo")
    runs = tracker.client.search_runs([tracker.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == N_TRIALS
    for run in children:
        history = tracker.metric_history(run.info.run_id)
        assert [step for step, _ in history["val_criteria_f1_macro"]] == [1, 2]
        for key, points in history.items():
            steps = [step for step, _ in points]
            assert len(steps) == len(set(steps)), key


def test_trials_ran_as_slurm_jobs_and_the_rest_on_the_submit_host(through_slurm):
    jobs = through_slurm["jobs"]
    expected = {f"{SLURM_TRIAL_RULE}_wildcards_{slot:04d}" for slot in range(N_TRIALS)}
    assert sorted(job["comment"] for job in jobs) == sorted(expected), jobs
    for job in jobs:
        assert job["state"] == "COMPLETED", job
        # config.yaml's resources section reached sbatch: --mem, --time, --cpus-per-task.
        assert job["memory"] == f"{TRIAL_RESOURCES['mem_mb']}M", job
        assert job["time_limit"] == f"{TRIAL_RESOURCES['runtime']}:00", job
        assert job["cpus"] == "1", job
        slot = job["comment"].rsplit("_", 1)[1]
        slurm_log = f".snakemake/slurm_logs/{SLURM_TRIAL_RULE}/{slot}/{job['job_id']}.log"
        assert (through_slurm["workdir"] / slurm_log).is_file(), slurm_log
    log = through_slurm["log"]
    for rule in ("prepare_dataset", "create_study", "prune_study", "evaluate_study", "plot_study"):
        assert f"localrule {rule}:" in log, rule
    submitted = [line for line in log.splitlines() if "submitted with SLURM jobid" in line]
    assert len(submitted) == N_TRIALS
