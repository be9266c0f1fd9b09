"""Memory never runs out (issue 29), under a real memory limit: a cgroup the test makes
(tests/services/memory_cgroup.py), enforced by the kernel's OOM killer.

The data is the tiny sample (long-tailed: posts as long as the real ones), the model MiniLM at
128 tokens a window: about 37 MB a row on the CPU, so the seeded order's largest batch (39 rows,
8 posts at epoch 1, step 5, the last of the 36 training posts of the split by author; no other
batch has over 10 rows) needs 1.4 GB in one pass, and the longest post (11 windows, in that
batch) 0.4 GB. Under LIMIT, `train.max_batch_rows: null` really is killed by the kernel (the
guard switched off), while `auto` trains.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from studyhelper import Study
from workflowhelper import job_env, snakemake_command

from leanhpo.config import Config
from leanhpo.fsutil import read_json
from leanhpo.reports import TRIAL_SCHEMA, validate_report
from leanhpo.tracking import Tracker
from leanhpo.training.setup import build_network
from leanhpo.trial.job import FAILURE_ATTR
from leanhpo.trial.row_cost import COST_FILE, cost_key

pytestmark = [pytest.mark.slow]

GIB = 1 << 30
LIMIT = int(2.0 * GIB)  # the trial job alone: ~1 GB before training, 2.4 GB with null's batch
TOO_SMALL = int(1.1 * GIB)  # room to load MiniLM and measure a row, not for the longest post
MODEL = {"id": "minilm", "max_length": 128}


def _study(root: Path, **train: object) -> tuple[Study, Path]:
    """Prepared data and a created study in `root`, and its config as a file for run-trial."""
    study = Study(root, model=MODEL, train={"epochs": 1, **train})
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(study.config))
    return study, config


def _run_trial(group, study: Study, config: Path, slot: int, **env: str):
    command = [sys.executable, "-m", "leanhpo", "run-trial", "--slot", str(slot)]
    return group.run(
        [*command, "--config", str(config)],
        cwd=study.root,
        env={**os.environ, **env},
        timeout=600,
    )


def test_the_preflight_refuses_a_limit_too_small_for_one_post(tmp_path, memory_cgroup):
    group = memory_cgroup(TOO_SMALL)
    study, config = _study(tmp_path)
    result = _run_trial(group, study, config, 0)
    assert result.returncode == 73, result.stderr[-3000:]
    message = result.stderr
    assert "not enough memory to train: the longest post (11 windows" in message
    assert "per row of 128 tokens" in message and "limit (cgroup v" in message
    for fix in ("model.max_windows", "model.max_length", "a smaller model", "resources.mem_mb"):
        assert fix in message
    trial = study.report_path(0).parent
    assert not (trial / "checkpoints").exists() or not list((trial / "checkpoints").iterdir())
    assert (
        read_json(trial / "state.json")["status"] == "running"
    )  # a rerun with more memory resumes
    assert group.oom_kills() == 0


def test_two_kernel_kills_at_one_batch_fail_the_trial_for_memory(tmp_path, memory_cgroup):
    """The guard switched off, null's 39-row pass is killed by the kernel's OOM killer; the
    second kill at the same epoch and step fails the trial instead of a third try."""
    group = memory_cgroup(LIMIT)
    study, config = _study(tmp_path, max_batch_rows=None)
    for kill in (1, 2):
        killed = _run_trial(group, study, config, 0, LEANHPO_MEMORY_GUARD="off")
        assert killed.returncode == -9, killed.stderr[-3000:]
        assert group.oom_kills() == kill
    result = _run_trial(group, study, config, 0)
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_json(study.report_path(0))
    validate_report(report, TRIAL_SCHEMA)
    assert report["status"] == "failed"
    failure = report["failure"]
    assert failure["reason"] == "out_of_memory"
    assert "the kernel killed this trial 2 times at epoch 1, step 5" in failure["message"]
    assert (
        "OOM-kill counter" in failure["message"]
        and "train.max_batch_rows: auto" in failure["message"]
    )
    assert failure["memory"]["rows"] == 39
    assert report["memory"]["attempts"] == 3 and report["memory"]["killed_attempts"] == 2
    [trial] = study.optuna().get_trials()
    assert (
        trial.state.name == "FAIL" and trial.user_attrs[FAILURE_ATTR]["reason"] == "out_of_memory"
    )
    run = study.tracker().client.get_run(report["mlflow"]["run_id"])
    assert run.data.tags["leanhpo.failure"] == "out_of_memory"
    assert run.data.metrics["peak_memory_mb"] > 0


def test_the_layer_hooks_stop_a_pass_the_estimate_let_through(tmp_path, memory_cgroup):
    """A row cost far too low (put in the study's cache) lets null's 39-row pass start; the
    hooks after each encoder layer see memory climb and stop the pass before the kernel would:
    out_of_memory, measured, and no OOM kill."""
    group = memory_cgroup(LIMIT)
    study, config = _study(tmp_path, max_batch_rows=None)
    resolved = Config.from_dict(study.config)
    key = cost_key(build_network(resolved, 0), resolved, MODEL["max_length"])
    lie = {"per_row": 1 << 20, "overhead": 0, "method": "measured: peak RSS", "measured_at": 0}
    (study.dir / COST_FILE).write_text(json.dumps({key: lie}))
    result = _run_trial(group, study, config, 0)
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_json(study.report_path(0))
    assert report["status"] == "failed" and report["failure"]["reason"] == "out_of_memory"
    assert "during a training pass of 39 rows" in report["failure"]["message"]
    figures = report["failure"]["memory"]
    assert figures["measured"] and figures["used_bytes"] <= LIMIT
    assert group.oom_kills() == 0


@pytest.mark.workflow
def test_a_study_under_the_limit_trains_with_auto_and_fails_null_for_memory(
    tmp_path, memory_cgroup
):
    """The real Snakefile in the cgroup (driver, preloaded worker and trial jobs all charged to
    it). With the default auto the study finishes; grown with max_batch_rows null (not a rerun
    trigger) each new trial is recorded as failed for memory, with the figures, once: the next
    trial runs and the study ends (exit 0), no rerun loop."""
    group = memory_cgroup(LIMIT)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        yaml.safe_dump({"model": MODEL, "train": {"epochs": 1}, "study": {"n_trials": 1}})
    )
    command = [*snakemake_command(tmp_path, overlay), "--cores", "1"]
    first = group.run(command, env=job_env(), timeout=900)
    assert first.returncode == 0, first.stderr[-4000:]
    study = tmp_path / "experiments" / "tiny"
    report = read_json(study / "trial_0000" / "report.json")
    memory = report["memory"]
    assert report["status"] == "completed"
    assert memory["max_batch_rows"] == "auto" and 1 <= memory["rows_per_pass"] < 39
    assert memory["limit_bytes"] == LIMIT and memory["peak_share"] < 1
    tracker = Tracker(f"sqlite:///{tmp_path}/experiments/mlflow.db", "leanhpo")
    run = tracker.client.get_run(report["mlflow"]["run_id"])
    assert run.data.metrics["peak_memory_mb"] == round(memory["peak_rss_bytes"] / 2**20, 1)
    assert run.data.tags["leanhpo.rows_per_pass"] == str(memory["rows_per_pass"])

    overlay.write_text(
        yaml.safe_dump(
            {
                "model": MODEL,
                "train": {"epochs": 1, "max_batch_rows": None},
                "study": {"n_trials": 3},
            }
        )
    )
    grown = group.run(command, env=job_env(), timeout=900)
    assert grown.returncode == 0, grown.stderr[-4000:]
    assert read_json(study / "trial_0000" / "report.json")["history"] == report["history"]
    for slot in (1, 2):
        failed = read_json(study / f"trial_{slot:04d}" / "report.json")
        validate_report(failed, TRIAL_SCHEMA)
        assert failed["status"] == "failed", failed["failure"]
        assert failed["failure"]["reason"] == "out_of_memory"
        figures = failed["failure"]["memory"]
        assert figures["rows"] == 39 and figures["needed_bytes"] > LIMIT * 0.97
        assert figures["limit_bytes"] == LIMIT and figures["bytes_per_row"] > 0
        assert failed["memory"]["attempts"] == 1  # one job each: no rerun loop
        run = tracker.client.get_run(failed["mlflow"]["run_id"])
        assert run.data.tags["leanhpo.failure"] == "out_of_memory"
    shown = "trial 2 of 3  failed through its own settings: out of memory: a training pass of 39"
    assert shown in grown.stderr
    counts = read_json(study / "study_report.json")["trial_counts"]
    assert (counts["completed"], counts["failed"]) == (1, 2)
    assert group.oom_kills() == 0
