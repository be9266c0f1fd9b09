"""study.pruner (issue 11, item 1): a pruned trial ends `pruned` in state.json, Optuna, its report
and MLflow, keeps no checkpoint, and every decision survives a crash at any instant: the rerun
reaches the state of the uninterrupted study, for median and for successive halving, whose
decisions write rung values to the storage while they are taken."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from studyhelper import Study
from workflowhelper import job_env, kill_storm, snakemake_command

from leanhpo.config import ConfigError
from leanhpo.fsutil import read_json
from leanhpo.study import pruners
from leanhpo.study.evaluate import pick_best
from leanhpo.study.pruners import build_pruner, decide
from leanhpo.tracking import Tracker
from leanhpo.trial import job
from leanhpo.workflow import SEARCH_ENV

TrialState = optuna.trial.TrialState
EPOCHS = 3
N_TRIALS = 6
# A wide learning-rate range gives trials that differ enough for the pruners to act.
SPREAD = {
    "train": {"epochs": EPOCHS},
    "search_space": {
        "learning_rate": {"type": "float", "low": 1.0e-6, "high": 3.0e-3, "log": True}
    },
}
OPTIONS = {
    "median": {"n_startup_trials": 2},
    "percentile": {"percentile": 50.0, "n_startup_trials": 2},
    "successive_halving": {},
    "hyperband": {},
    "threshold": {"lower": 1.0},  # no trial reaches it: every trial stops after epoch 1
    "none": {"patience": 0},  # stop as soon as an epoch is worse than the best before it
}


class Crash(Exception):
    """Stands in for a kill -9 at a chosen instant."""


@pytest.fixture(autouse=True)
def _no_driver(monkeypatch):
    # Set first, so that teardown restores the variable's absence even after a test has
    # announced a search (announce_search writes os.environ itself).
    monkeypatch.setenv(SEARCH_ENV, "")
    monkeypatch.delenv(SEARCH_ENV)
    monkeypatch.delenv("LEANHPO_N_TRIALS", raising=False)


def _study(root: Path, pruner: str, **options) -> Study:
    study_cfg = {"n_trials": N_TRIALS, "pruner": pruner, "pruner_options": options}
    return Study(root, study=study_cfg, **SPREAD)


def _outcomes(study: Study) -> list[tuple]:
    """Per slot: status, the epoch it was pruned after, its validation history."""
    rows = []
    for slot in range(N_TRIALS):
        report = read_json(study.report_path(slot))
        pruning = report["pruning"] or {}
        rows.append((report["status"], pruning.get("pruned_at_epoch"), report["history"]))
    return rows


def _assert_consistent(study: Study) -> None:
    """What a pruned (or completed) trial shows everywhere, checked slot by slot."""
    trials = {t.user_attrs["leanhpo.slot"]: t for t in study.optuna().get_trials()}
    tracker = study.tracker()
    for slot in range(N_TRIALS):
        report = read_json(study.report_path(slot))
        state = read_json(study.report_path(slot).parent / "state.json")
        trial = trials[slot]
        run = tracker.client.get_run(report["mlflow"]["run_id"])
        decisions = report["pruning"]["decisions"]
        assert run.info.status == "FINISHED"
        if report["status"] == "pruned":
            epoch = report["pruning"]["pruned_at_epoch"]
            assert state["status"] == "pruned" and state["pruning"]["pruned_at_epoch"] == epoch
            assert trial.state == TrialState.PRUNED and trial.last_step == epoch
            assert len(report["history"]) == epoch < EPOCHS
            assert decisions[str(epoch)] is True
            assert not any(decisions[str(e)] for e in range(1, epoch))
            assert not list((study.report_path(slot).parent / "checkpoints").glob("epoch_*"))
            assert not any(c["retained"] for c in report["checkpoints"])
            assert run.data.tags["leanhpo.status"] == "pruned"
            assert run.data.tags["leanhpo.pruned_at_epoch"] == str(epoch)
        else:
            assert report["status"] == "completed" and trial.state == TrialState.COMPLETE
            assert len(report["history"]) == EPOCHS
            assert sorted(decisions) == [str(e) for e in range(1, EPOCHS)]
            assert not any(decisions.values())
        for key, points in tracker.metric_history(run.info.run_id).items():
            steps = [s for s, _ in points]
            assert len(steps) == len(set(steps)), f"{key} logged twice in slot {slot}"


def _run_all(study: Study) -> None:
    for slot in range(N_TRIALS):
        study.run(slot)


@pytest.mark.parametrize(
    ("overlay", "needle"),
    [
        ({"pruner": "median", "pruner_options": {"percentile": 10}}, "pruner_options.percentile"),
        ({"pruner": "threshold"}, "needs lower"),
        ({"pruner": "median", "pruner_options": {"min_delta": 0.1}}, "only patience uses it"),
        ({"pruner": "hyperband", "pruner_options": {"min_resource": 3}}, "use at most 2"),
        (
            {"pruner": "hyperband", "pruner_options": {"max_resource": 1, "min_resource": 2}},
            "pruner_options.max_resource",
        ),
        ({"pruner": "asha"}, "study.pruner"),
    ],
)
def test_pruner_options_are_checked_before_anything_runs(tmp_path, overlay, needle):
    with pytest.raises(ConfigError, match=r"study\.pruner") as info:
        Study(tmp_path, study=overlay, train={"epochs": 3})
    assert needle in str(info.value)


def test_a_pruner_that_could_never_act_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"can never stop a trial of train\.epochs=1"):
        Study(tmp_path, study={"pruner": "median"}, train={"epochs": 1})


def test_each_name_builds_its_optuna_pruner():
    assert build_pruner("none", {}, 4) is None
    assert isinstance(build_pruner("median", {}, 4), optuna.pruners.MedianPruner)
    assert isinstance(build_pruner("percentile", {}, 4), optuna.pruners.PercentilePruner)
    assert isinstance(build_pruner("threshold", {"lower": 0.1}, 4), optuna.pruners.ThresholdPruner)
    halving = build_pruner("successive_halving", {"reduction_factor": 2}, 4)
    assert isinstance(halving, optuna.pruners.SuccessiveHalvingPruner)
    assert halving._min_resource == 1 and halving._reduction_factor == 2  # never "auto"
    band = build_pruner("hyperband", {}, 4)
    assert isinstance(band, optuna.pruners.HyperbandPruner) and band._max_resource == 4
    patient = build_pruner("median", {"patience": 2, "min_delta": 0.01}, 4)
    assert isinstance(patient, optuna.pruners.PatientPruner)
    assert isinstance(patient._wrapped_pruner, optuna.pruners.MedianPruner)
    assert patient._patience == 2 and patient._min_delta == 0.01


def _memory_study(finished: list[list[float]], running: list[float]) -> tuple[optuna.Study, int]:
    """An in-memory study: finished trials with their per-epoch values (each passed rung 0 of
    successive halving with its epoch-1 value, as its own decision recorded), then a running
    one."""
    study = optuna.create_study(direction="maximize", study_name="unit")
    for values in finished:
        study.add_trial(
            optuna.trial.create_trial(
                value=max(values),
                intermediate_values={e + 1: v for e, v in enumerate(values)},
                system_attrs={"completed_rung_0": values[0]},
            )
        )
    trial = study.ask()
    for epoch, value in enumerate(running, start=1):
        trial.report(value, epoch)
    return study, trial._trial_id


def test_a_decision_is_the_same_however_often_it_is_asked():
    """Optuna's successive halving records the trial's rung while deciding: asked again after a
    kill, it believes the rung passed and lets the trial go on. decide() replays the trial's
    reports on a copy of the study, so its answer does not change."""
    finished = [[0.9, 0.9], [0.8, 0.85], [0.7, 0.7]]
    study, trial_id = _memory_study(finished, running=[0.1])

    def fresh():
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)

    assert decide(study, trial_id, 1, fresh()) is True
    assert study._storage.get_trial(trial_id).system_attrs["completed_rung_0"] == 0.1
    assert decide(study, trial_id, 1, fresh()) is True  # the rerun after a kill
    # What calling Optuna's pruner again would have answered: the bug decide() avoids.
    naive = fresh().prune(study, study._storage.get_trial(trial_id))
    assert naive is False


def test_patience_alone_stops_a_trial_that_stopped_improving():
    study, falling = _memory_study([], running=[0.5, 0.4, 0.3])
    pruner = build_pruner("none", {"patience": 1}, 4)
    assert pruner is not None
    assert decide(study, falling, 2, pruner) is False  # one epoch of patience left
    assert decide(study, falling, 3, pruner) is True
    study, rising = _memory_study([], running=[0.3, 0.4, 0.5])
    assert decide(study, rising, 3, pruner) is False


@pytest.mark.slow
@pytest.mark.parametrize("pruner", sorted(OPTIONS))
def test_every_pruner_runs_a_study_and_a_pruned_trial_keeps_nothing(tmp_path, pruner):
    study = _study(tmp_path, pruner, **OPTIONS[pruner])
    _run_all(study)
    _assert_consistent(study)
    statuses = [status for status, _, _ in _outcomes(study)]
    if pruner == "threshold":
        assert statuses == ["pruned"] * N_TRIALS
    elif pruner in ("median", "successive_halving"):  # these trials differ enough
        assert 0 < statuses.count("pruned") < N_TRIALS, statuses
    reports = [read_json(study.report_path(slot)) for slot in range(N_TRIALS)]
    if "completed" in statuses:
        assert pick_best(reports)["status"] == "completed"
    else:
        with pytest.raises(RuntimeError, match="no trial of the study completed"):
            pick_best(reports)


@pytest.mark.slow
@pytest.mark.parametrize("pruner", ["median", "successive_halving"])
def test_a_crash_at_any_instant_reaches_the_uninterrupted_state(tmp_path, monkeypatch, pruner):
    """Crashes before a decision, after it (successive halving's rung value written, the
    decision not yet recorded), between state.json saying pruned and Optuna being told, and
    before the pruned trial's checkpoints are deleted; each followed by the rerun."""
    reference = _study(tmp_path / "reference", pruner, **OPTIONS[pruner])
    _run_all(reference)
    expected = _outcomes(reference)
    assert any(status == "pruned" for status, _, _ in expected)

    study = _study(tmp_path / "crashed", pruner, **OPTIONS[pruner])
    fired: list[str] = []
    real_decide, real_tell, real_settle = decide, optuna.Study.tell, job.prune_study_checkpoints

    def once(window: str) -> bool:
        if window in fired:
            return False
        fired.append(window)
        return True

    def decide_(optuna_study, trial_id, epoch, built):
        if optuna_study._storage.get_trial(trial_id).number >= 2 and once("before_decision"):
            raise Crash
        verdict = real_decide(optuna_study, trial_id, epoch, built)
        if verdict and once("after_decision"):
            raise Crash
        return verdict

    def tell(self, trial, values=None, state=None, **kwargs):
        if state == TrialState.PRUNED and once("before_tell"):
            raise Crash
        return real_tell(self, trial, values, state, **kwargs)

    def settle(study_dir, *args):
        if "before_tell" in fired and once("before_settle"):
            raise Crash
        return real_settle(study_dir, *args)

    monkeypatch.setattr(pruners, "decide", decide_)
    monkeypatch.setattr(optuna.Study, "tell", tell)
    monkeypatch.setattr(job, "prune_study_checkpoints", settle)
    for slot in range(N_TRIALS):
        while True:
            try:
                study.run(slot)
                break
            except Crash:
                state = read_json(study.report_path(slot).parent / "state.json")
                if fired[-1] == "before_tell":  # state.json is told first, Optuna second
                    assert state["status"] == "pruned"
                    trial = study.optuna().get_trials()[slot]
                    assert trial.state == TrialState.RUNNING
                if fired[-1] == "before_settle":  # not yet deleted: the rerun deletes them
                    assert list((study.report_path(slot).parent / "checkpoints").glob("epoch_*"))
    assert fired == ["before_decision", "after_decision", "before_tell", "before_settle"]
    assert _outcomes(study) == expected
    _assert_consistent(study)
    states = [t.state for t in study.optuna().get_trials()]
    assert TrialState.RUNNING not in states
    # The rung values later trials compare against are the uninterrupted study's.
    rungs = [
        {k: v for k, v in t.system_attrs.items() if k.startswith("completed_rung_")}
        for t in study.optuna().get_trials()
    ]
    assert rungs == [
        {k: v for k, v in t.system_attrs.items() if k.startswith("completed_rung_")}
        for t in reference.optuna().get_trials()
    ]


STORM_TRIALS = 8
STORM_KILLS = 5


def _storm_outcomes(study_dir: Path) -> dict[int, tuple]:
    rows = {}
    for slot in range(STORM_TRIALS):
        report = read_json(study_dir / f"trial_{slot:04d}" / "report.json")
        pruning = report["pruning"] or {}
        history = [(h["epoch"], h["metrics"]["val_criteria_f1_macro"]) for h in report["history"]]
        rows[slot] = (report["status"], pruning.get("pruned_at_epoch"), history)
    return rows


@pytest.mark.slow
@pytest.mark.workflow
def test_hyperband_study_killed_at_random_instants_prunes_the_same_trials(tmp_path):
    """Issue 11 acceptance: a tiny study with pruner hyperband through Snakemake, kill -9 (the
    whole process group) at seeded random instants, each followed by the resume command: the
    same trials are pruned at the same epochs as in the uninterrupted study, no trial is left
    RUNNING, and no pruned trial holds a checkpoint. The targets are the trial reports (the
    study evaluation is tested elsewhere), and reduction_factor 2 prunes half of each rung, so
    8 trials prune several."""
    overlay = tmp_path / "hyperband.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                **SPREAD,
                "study": {
                    "n_trials": STORM_TRIALS,
                    "pruner": "hyperband",
                    "pruner_options": {"reduction_factor": 2},
                },
            }
        )
    )

    reports = [f"experiments/tiny/trial_{slot:04d}/report.json" for slot in range(STORM_TRIALS)]

    def command(workdir: Path) -> list[str]:
        base = snakemake_command(workdir, overlay)
        return [*base, "--cores", "1", "--rerun-incomplete", *reports]

    clean, stormed = tmp_path / "clean", tmp_path / "storm"
    for folder in (clean, stormed):
        folder.mkdir()
    started = time.monotonic()
    result = subprocess.run(command(clean), capture_output=True, text=True, env=job_env())
    uninterrupted_s = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-4000:]
    expected = _storm_outcomes(clean / "experiments" / "tiny")
    assert any(status == "pruned" for status, _, _ in expected.values()), expected

    kills = kill_storm(command(stormed), STORM_KILLS, seed=11, uninterrupted_s=uninterrupted_s)
    final = subprocess.run(command(stormed), capture_output=True, text=True, env=job_env())
    assert final.returncode == 0, final.stderr[-4000:]
    assert len(kills) >= 3, kills

    study_dir = stormed / "experiments" / "tiny"
    assert _storm_outcomes(study_dir) == expected
    storage = f"sqlite:///{stormed}/experiments/optuna.db"
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    states = {t.user_attrs["leanhpo.slot"]: t.state for t in trials}
    assert len(trials) == STORM_TRIALS
    for slot, (status, _, _) in expected.items():
        assert states[slot] == (TrialState.PRUNED if status == "pruned" else TrialState.COMPLETE)
        if status == "pruned":
            assert not list((study_dir / f"trial_{slot:04d}" / "checkpoints").glob("epoch_*"))
    runs = Tracker(f"sqlite:///{stormed}/experiments/mlflow.db", "leanhpo")
    trial_runs = runs.client.search_runs([runs.experiment_id], "tags.`leanhpo.slot` != ''")
    assert len(trial_runs) == STORM_TRIALS  # none created twice
    for run in trial_runs:
        assert run.info.status == "FINISHED", run.info.run_name


@pytest.mark.slow
def test_study_outputs_show_pruned_trials_as_pruned(tmp_path):
    """The study report counts them, the evaluation never picks one, retention.json keeps
    none of their checkpoints, and the plots and trials table are written with them."""
    from leanhpo.plots import plot_study
    from leanhpo.study.evaluate import evaluate_study
    from leanhpo.study.prune import prune_study

    study = _study(tmp_path, "median", **OPTIONS["median"])
    _run_all(study)
    paths = [study.report_path(slot) for slot in range(N_TRIALS)]
    pruned = {s for s, (status, _, _) in enumerate(_outcomes(study)) if status == "pruned"}
    assert pruned
    retention = prune_study(
        study.study_json, study.dir / "retention.json", study.config["retention"]
    )
    assert not pruned & {entry["slot"] for entry in retention["kept"]}
    output = study.dir / "study_report.json"
    config = {**study.config, "evaluation": {**study.config["evaluation"], "bootstrap_samples": 0}}
    report = evaluate_study(study.study_json, study.data, paths, output, config)
    assert report["trial_counts"]["pruned"] == len(pruned)
    assert report["trial_counts"]["completed"] == N_TRIALS - len(pruned)
    assert report["best_trial"]["slot"] not in pruned
    kinds = {"disk": "png", "importances": "png", "trials": "csv", "test": "csv"}
    items = {name: study.dir / f"{name}.{kind}" for name, kind in kinds.items()}
    plot_study(paths, output, study.dir / "h.png", study.dir / "c.png", items)
    assert (study.dir / "h.png").stat().st_size > 1000
    rows = (study.dir / "trials.csv").read_text().splitlines()
    assert sum(",pruned," in row for row in rows) == len(pruned)
