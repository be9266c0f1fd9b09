"""study.confirm (issue 25 item 3): the winner chosen over seeds.

The choice itself on reports built here (fast), the config checks, and the real Snakefile on
tests/config/tiny.yaml: a study with confirm {top_k: 2, seeds: 2} retrains exactly four runs,
survives kill -9 during them with no epoch logged twice, and growing to seeds 3 trains only the
two new runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from workflowhelper import REPO, SNAKEMAKE, job_counts, job_env, snakemake_command

from leanhpo.config import ConfigError
from leanhpo.reports import STUDY_SCHEMA, TRIAL_SCHEMA, validate_report
from leanhpo.study.confirm import choose_over_seeds, confirm_summary, ranked_trials
from leanhpo.tracking import Tracker

N_TRIALS = 3


def _report(slot: int, score: float | None, seed_index: int = 0, status: str = "completed"):
    return {
        "slot": slot,
        "status": status,
        "best_validation_score": score,
        "params": {"learning_rate": 1e-4 * (slot + 1)},
        "seeds": {"trial": 7 + seed_index},
        "confirm": (
            {"source_slot": slot, "seed_index": seed_index, "seed": 7 + seed_index}
            if seed_index
            else None
        ),
    }


def _plan(slots: list[int]) -> dict:
    return {"top_k": len(slots), "slots": slots, "optimization_metric": "val_criteria_f1_macro"}


def test_the_winner_is_the_best_mean_not_the_single_best_trial():
    # trial 1 (slot 0) is the single best of the search, by luck: its other seeds are poor.
    trials = [_report(0, 0.80), _report(1, 0.75), _report(2, 0.40)]
    extra = [_report(0, 0.50, 1), _report(0, 0.52, 2), _report(1, 0.74, 1), _report(1, 0.77, 2)]
    plan = _plan([s["slot"] for s in ranked_trials(trials)[:2]])
    assert plan["slots"] == [0, 1]
    exported, runs, block = choose_over_seeds(trials, extra, plan)
    assert block["single_best_slot"] == 0
    assert block["winner_slot"] == 1
    assert block["winner_differs_from_single_best"] is True
    # the exported run is the winner's best validation score: its second seed
    assert exported["confirm"] == {"source_slot": 1, "seed_index": 2, "seed": 9}
    assert block["exported"]["folder"] == "confirm_trial_0001_seed_2"
    assert [r["best_validation_score"] for r in runs] == [0.75, 0.74, 0.77]
    by_slot = {c["slot"]: c for c in block["configurations"]}
    assert by_slot[0]["validation"]["mean"] == pytest.approx((0.80 + 0.50 + 0.52) / 3)
    assert by_slot[1]["validation"]["mean"] == pytest.approx(0.75 + 0.01 / 3)
    assert by_slot[1]["validation"]["std"] == pytest.approx(0.015275, abs=1e-6)
    # the mean over the extra seeds alone carries none of the search's selection
    assert by_slot[0]["extra_seeds_mean"] == pytest.approx(0.51)
    assert block["seeds"] == 2
    text = "\n".join(confirm_summary({**block, "winner_test_per_seed": []}))
    assert "trial 2 (search rank 2): 0.753 ± 0.015 over 3 run(s)" in text
    assert "<- winner" in text and "not the single best trial (trial 1)" in text


def test_ties_go_to_the_search_rank_and_to_the_trial_and_failed_seeds_do_not_count():
    trials = [_report(0, 0.6), _report(1, 0.6)]
    extra = [
        _report(0, 0.6, 1),
        _report(1, 0.6, 1),
        _report(1, None, 2, status="failed"),
        _report(0, 0.6, 2),
    ]
    exported, _, block = choose_over_seeds(trials, extra, _plan([0, 1]))
    assert block["winner_slot"] == 0  # equal means: the better search rank
    assert exported["confirm"] is None  # equal scores: the trial itself, then the lower seed
    failed = next(c for c in block["configurations"] if c["slot"] == 1)
    assert (failed["n_scored"], failed["n_failed"]) == (2, 1)
    assert [r["status"] for r in failed["runs"]] == ["completed", "completed", "failed"]


def test_confirm_settings_are_checked_against_retention_and_the_study(tiny_config):
    from conftest import tiny_config_dict

    with pytest.raises(ConfigError, match=r"keep_best_trials keeps the checkpoints of only 2"):
        tiny_config_dict(Path("/tmp"), study={"confirm": {"top_k": 3}})
    with pytest.raises(ConfigError, match=r"only 3 trial slots"):
        tiny_config_dict(
            Path("/tmp"), study={"confirm": {"top_k": 4}}, retention={"keep_best_trials": 4}
        )
    with pytest.raises(ConfigError, match=r"seeds"):
        tiny_config_dict(Path("/tmp"), study={"confirm": {"top_k": 1, "seeds": 0}})
    assert tiny_config["study"]["confirm"] == {"top_k": 0, "seeds": 2}  # off by default


# --- the real workflow ---------------------------------------------------------------------


def _overlay(workdir: Path, name: str, top_k: int, seeds: int) -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump({"study": {"confirm": {"top_k": top_k, "seeds": seeds}}}))
    return path


def _command(workdir: Path, *overlays: Path) -> list[str]:
    return [*snakemake_command(workdir, *overlays), "--cores", "1"]


def _snakemake(workdir: Path, *args: str, overlays: tuple[Path, ...] = ()):
    return subprocess.run(
        [*_command(workdir, *overlays), *args],
        capture_output=True,
        text=True,
        env=job_env(),
        timeout=900,
    )


def _trials_only(workdir: Path, overlay: Path) -> None:
    """The search alone: its last slot's report (slots run in order, so all of them)."""
    target = f"experiments/tiny/trial_{N_TRIALS - 1:04d}/report.json"
    result = _snakemake(workdir, target, overlays=(overlay,))
    assert result.returncode == 0, result.stderr[-4000:]


def _study(workdir: Path) -> Path:
    return workdir / "experiments" / "tiny"


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _confirm_reports(workdir: Path) -> dict[str, dict]:
    return {
        p.parent.name: _read(p) for p in sorted(_study(workdir).glob("confirm_trial_*/report.json"))
    }


SNAPSHOT: dict[str, dict] = {}


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory) -> Path:
    """A tiny study with confirm {top_k: 2, seeds: 2}: the search, then the rest."""
    workdir = tmp_path_factory.mktemp("confirm")
    overlay = _overlay(workdir, "confirm.yaml", 2, 2)
    _trials_only(workdir, overlay)
    result = _snakemake(workdir, overlays=(overlay,))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "chosen over seeds (study.confirm: top 2, 2 extra seeds each)" in result.stderr
    SNAPSHOT["confirm"] = _confirm_reports(workdir)
    SNAPSHOT["study"] = _read(_study(workdir) / "study_report.json")
    return workdir


@pytest.mark.workflow
@pytest.mark.slow
def test_a_study_with_confirm_retrains_exactly_four_runs_and_the_best_mean_wins(confirmed):
    study_dir = _study(confirmed)
    trials = [_read(study_dir / f"trial_{s:04d}" / "report.json") for s in range(N_TRIALS)]
    top = [t["slot"] for t in ranked_trials(trials)[:2]]
    runs = _confirm_reports(confirmed)
    assert sorted(runs) == sorted(
        f"confirm_trial_{slot:04d}_seed_{k}" for slot in top for k in (1, 2)
    )
    for name, report in runs.items():
        validate_report(report, TRIAL_SCHEMA)
        slot = report["confirm"]["source_slot"]
        assert report["status"] == "completed", name
        assert report["params"] == trials[slot]["params"]  # the trial's configuration
        assert report["seeds"]["trial"] == 7 + report["confirm"]["seed_index"]  # study.seed + k
        assert report["optuna_number"] is None
        # settled as a finished trial: its best checkpoint only, weights only
        kept = [c for c in report["checkpoints"] if c["retained"]]
        assert kept and all(c["co_best"] and c["kind"] == "weights" for c in kept), name

    # The winner, computed here from the reports, independently of study/confirm.py
    def mean(slot: int) -> float:
        scores = [trials[slot]["best_validation_score"]] + [
            r["best_validation_score"] for r in runs.values() if r["confirm"]["source_slot"] == slot
        ]
        return sum(scores) / len(scores)

    winner = max(top, key=lambda s: (mean(s), -top.index(s)))
    members = [trials[winner]] + [r for r in runs.values() if r["confirm"]["source_slot"] == winner]
    best_run = max(
        members,
        key=lambda r: (r["best_validation_score"], -((r["confirm"] or {}).get("seed_index", 0))),
    )
    report = _read(study_dir / "study_report.json")
    validate_report(report, STUDY_SCHEMA)
    block = report["confirm"]
    assert block["winner_slot"] == winner
    assert block["single_best_slot"] == top[0]
    assert report["best_trial"]["slot"] == winner
    assert report["best_validation_score"] == best_run["best_validation_score"]
    expected_folder = (
        f"trial_{winner:04d}"
        if best_run["confirm"] is None
        else f"confirm_trial_{winner:04d}_seed_{best_run['confirm']['seed_index']}"
    )
    assert report["best_trial"]["folder"] == expected_folder
    assert report["seeds"]["trial"] == best_run["seeds"]["trial"]
    per_seed = block["winner_test_per_seed"]
    assert [r["seed_index"] for r in per_seed] == [0, 1, 2]
    assert [r["exported"] for r in per_seed].count(True) == 1
    exported = next(r for r in per_seed if r["exported"])
    assert exported["folder"] == expected_folder
    assert (
        exported["test_criteria_f1_macro"]
        == report["test_metrics"]["criteria_matching"]["f1_macro"]
    )
    # the export is that run's checkpoint
    info = _read(study_dir / "best_model" / "leanhpo_model.json")
    assert expected_folder in info["source_checkpoint"]["path"]

    # MLflow: the four runs are children of the study's parent run, each closed
    tracker = Tracker(f"sqlite:///{confirmed}/experiments/mlflow.db", "leanhpo")
    found = tracker.client.search_runs([tracker.experiment_id])
    names = sorted(r.info.run_name for r in found)
    assert len(found) == N_TRIALS + 4 + 1, names
    parent = _read(study_dir / "study.json")["mlflow"]["parent_run_id"]
    children = [r for r in found if r.data.tags.get("leanhpo.confirm_seed")]
    assert sorted(r.info.run_name for r in children) == sorted(
        f"trial {slot + 1} seed {k}" for slot in top for k in (1, 2)
    )
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in children)
    assert all(r.info.status == "FINISHED" for r in found)


def _kill_inside_a_confirm_run(
    command: list[str], study_dir: Path, spared: list[str]
) -> str | None:
    """Run `command`; kill -9 its process group once a confirm run not in `spared` has
    committed its first epoch and has no report yet. The run's name, or None when the command
    ended first."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=job_env(),
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    try:
        while process.poll() is None and time.monotonic() < deadline:
            for folder in sorted(study_dir.glob("confirm_trial_*")):
                halfway = (folder / "checkpoints" / "epoch_0001").is_dir()
                if folder.name not in spared and halfway and not (folder / "report.json").exists():
                    os.killpg(process.pid, signal.SIGKILL)
                    return folder.name
            time.sleep(0.02)
        return None
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.workflow
@pytest.mark.slow
def test_kill_9_during_the_confirm_runs_then_resume_gives_the_uninterrupted_result(
    confirmed, tmp_path
):
    """The search first; then three times the resume command, each killed with SIGKILL (the
    whole process group: Snakemake and its job) inside a confirm run, once its first epoch's
    checkpoint is committed and before its report; then the resume command to the end: the
    same runs, the same metrics, no epoch logged twice."""
    workdir = tmp_path / "storm"
    workdir.mkdir()
    overlay = _overlay(workdir, "confirm.yaml", 2, 2)
    _trials_only(workdir, overlay)
    killed: list[str] = []
    for _ in range(3):
        name = _kill_inside_a_confirm_run(
            [*_command(workdir, overlay), "--rerun-incomplete"], _study(workdir), killed
        )
        if name is not None:
            killed.append(name)
    final = _snakemake(workdir, "--rerun-incomplete", overlays=(overlay,))
    assert final.returncode == 0, final.stderr[-4000:]
    assert len(killed) == 3, killed  # three different runs, each killed half way
    runs = _confirm_reports(workdir)
    assert sorted(runs) == sorted(SNAPSHOT["confirm"])
    for name, report in runs.items():
        assert report["history"] == SNAPSHOT["confirm"][name]["history"], name
    study = _read(_study(workdir) / "study_report.json")
    assert study["confirm"]["winner_slot"] == SNAPSHOT["study"]["confirm"]["winner_slot"]

    def chosen(report: dict) -> dict:  # the uuids are the study's own
        return {k: v for k, v in report["best_trial"].items() if k != "uuid"}

    assert chosen(study) == chosen(SNAPSHOT["study"])
    assert study["test_metrics"] == SNAPSHOT["study"]["test_metrics"]
    tracker = Tracker(f"sqlite:///{workdir}/experiments/mlflow.db", "leanhpo")
    found = tracker.client.search_runs([tracker.experiment_id])
    assert len(found) == N_TRIALS + 4 + 1  # no run created twice
    for run in found:
        assert run.info.status == "FINISHED", run.info.run_name
        for key, points in tracker.metric_history(run.info.run_id).items():
            steps = [s for s, _ in points]
            assert len(steps) == len(set(steps)), f"duplicate point {key} in {run.info.run_name}"
            if key.startswith(("val_", "train_")):
                assert steps == [1, 2], (key, run.info.run_name)


@pytest.mark.workflow
@pytest.mark.slow
def test_growing_to_three_seeds_trains_only_the_two_new_runs(confirmed):
    overlay = _overlay(confirmed, "confirm3.yaml", 2, 3)
    study_dir = _study(confirmed)
    before = {
        p: p.stat().st_mtime_ns
        for p in [
            *study_dir.glob("confirm_trial_*/report.json"),
            *study_dir.glob("trial_*/report.json"),
        ]
    }
    plan = _snakemake(confirmed, "-n", overlays=(overlay,))
    assert plan.returncode == 0, plan.stderr[-4000:]
    counts = job_counts(plan.stdout + plan.stderr)
    assert counts["confirm_run"] == 2 and "run_trial" not in counts, counts
    result = _snakemake(confirmed, overlays=(overlay,))
    assert result.returncode == 0, result.stderr[-4000:]
    assert {p: p.stat().st_mtime_ns for p in before} == before  # finished runs untouched
    runs = _confirm_reports(confirmed)
    assert len(runs) == 6
    assert sorted(n for n in runs if n.endswith("_seed_3")) == sorted(
        f"confirm_trial_{slot:04d}_seed_3"
        for slot in _read(study_dir / "confirm_plan_top2.json")["slots"]
    )
    block = _read(study_dir / "study_report.json")["confirm"]
    assert block["seeds"] == 3
    assert all(len(c["runs"]) == 4 for c in block["configurations"])
    # the new evaluation is a new point on the parent run (step: trials + confirm runs)
    tracker = Tracker(f"sqlite:///{confirmed}/experiments/mlflow.db", "leanhpo")
    parent = _read(study_dir / "study.json")["mlflow"]["parent_run_id"]
    steps = [s for s, _ in tracker.metric_history(parent)["test_criteria_f1_macro"]]
    assert steps == [N_TRIALS + 4, N_TRIALS + 6]


@pytest.mark.workflow
@pytest.mark.slow
def test_evaluating_by_hand_before_the_confirm_runs_exist_is_refused(confirmed):
    """`python -m leanhpo evaluate` reads what the workflow's evaluation reads; runs not trained
    yet are named (exit 2), and the study report is left as it was."""
    overlay = _overlay(confirmed, "confirm9.yaml", 2, 9)
    report = _study(confirmed) / "study_report.json"
    before = report.read_bytes()
    configs = [REPO / "config.yaml", REPO / "tests" / "config" / "tiny.yaml", overlay]
    result = subprocess.run(
        [str(SNAKEMAKE.parent / "python"), "-m", "leanhpo", "evaluate"]
        + [arg for path in configs for arg in ("--config", str(path))],
        cwd=confirmed,
        capture_output=True,
        text=True,
        env=job_env(),
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "has not finished" in result.stderr and "_seed_9/report.json" in result.stderr
    assert report.read_bytes() == before


def test_the_report_page_shows_the_seed_spread_and_the_winner():
    from leanhpo.report_page import _confirm_section

    trials = [_report(0, 0.80), _report(1, 0.75)]
    extra = [_report(0, 0.50, 1), _report(1, 0.76, 1)]
    _, _, block = choose_over_seeds(trials, extra, _plan([0, 1]))
    block["winner_test_per_seed"] = [
        {"folder": "trial_0001", "test_criteria_f1_macro": 0.61, "exported": False},
        {"folder": "confirm_trial_0001_seed_1", "test_criteria_f1_macro": 0.66, "exported": True},
    ]
    html = _confirm_section({"confirm": block})
    assert html.count("<li>") == 4  # two configurations, the winner note, the per-seed line
    assert "trial 2 (search rank 2): 0.755 ± 0.007 over 2 run(s)" in html
    assert "confirm_trial_0001_seed_1 0.660 (exported)" in html
    assert _confirm_section({"confirm": None}) == ""
