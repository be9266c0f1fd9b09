"""study.sampler, study.n_startup_trials and study.enqueue (issue 11, items 2 and 3): every sampler
runs a tiny study, draws reproducibly (run twice, and killed and resumed), grid refuses an
infinite space, and enqueued sets are exactly the first slots' params, through resume and growth."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import REPO
from studyhelper import Study

from leanhpo.config import ConfigError, sample_params, validate_config
from leanhpo.config.strategy import enqueued_params, grid_points
from leanhpo.study.samplers import SAMPLERS, SLOT_ATTR, sampler_for
from leanhpo.study.setup import (
    attach_slot,
    create_or_load_study,
    open_study,
    sampler_from_config,
    storage_for,
)
from leanhpo.workflow import SEARCH_ENV, announce_search, with_planned_study

# A finite space, so that every sampler (grid too) runs the same tiny study: 2 x 3 = 6 points.
FINITE_SPACE = {
    "learning_rate": {"type": "categorical", "choices": [1.0e-4, 5.0e-4]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
}
JOINT = ("tpe", "qmc", "cmaes", "gp")  # the samplers that draw some parameters jointly
# Sampling is under test, not training: short posts, one epoch, no checkpoints.
FAST = {
    "train": {"epochs": 1, "checkpointing": False},
    "data": {"sample_posts": 40, "sample_profile": "short"},
    "model": {"long_posts": "truncate", "max_length": 64},
}


@pytest.fixture(autouse=True)
def _no_driver(monkeypatch):
    """No Snakemake driver: a trial job then takes the search strategy from its own config."""
    # Set first, so that teardown restores the variable's absence even after a test has
    # announced a search (announce_search writes os.environ itself).
    monkeypatch.setenv(SEARCH_ENV, "")
    monkeypatch.delenv(SEARCH_ENV)
    monkeypatch.delenv("LEANHPO_N_TRIALS", raising=False)


@pytest.fixture(scope="module")
def default_config() -> dict:
    with (REPO / "config.yaml").open() as handle:
        return validate_config(yaml.safe_load(handle))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """One folder (Optuna and MLflow databases) for the in-process studies of this module, each
    under its own study.name: creating the databases is most of a tiny study's set-up."""
    return tmp_path_factory.mktemp("samplers")


def _with(config: dict, **study) -> dict:
    return validate_config({**config, "study": {**config["study"], **study}})


# --- every sampler, end to end --------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_completes_a_3_trial_study(root, name):
    space = {"dropout": FINITE_SPACE["dropout"]}
    if name == "grid":  # 2 batch sizes x 3 dropouts = 6 points
        space.update(learning_rate=None, batch_size={"type": "categorical", "choices": [4, 8]})
    study = Study(
        root,
        study={"name": f"every_{name}", "sampler": name, "n_startup_trials": 1},
        search_space=space,
        **FAST,
    )
    reports = [study.run(slot) for slot in range(3)]
    assert [r["status"] for r in reports] == ["completed"] * 3
    assert {r["config"]["study"]["sampler"] for r in reports} == {name}  # recorded per trial
    for report in reports:
        assert report["params"]["dropout"] in (0.0, 0.1, 0.2)
        if name != "grid":
            assert 1e-4 <= report["params"]["learning_rate"] <= 1e-3
    if name == "grid":
        points = [r["params"] for r in reports]
        assert all(p in grid_points(study.config) for p in points)
        assert len({json.dumps(p, sort_keys=True) for p in points}) == 3  # no point twice


def test_the_same_config_run_twice_draws_the_same_params(root):
    """tpe with one start-up trial, so slot 1 is drawn jointly (multivariate TPE). The two runs
    differ only in study.name, which names the Optuna study and takes no part in the draws."""
    runs = []
    for name in ("twice_a", "twice_b"):
        study = Study(root, study={"name": name, "n_startup_trials": 1}, **FAST)
        runs.append([study.run(slot)["params"] for slot in range(2)])
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[0][1]


# --- reproducible and resumable draws, per sampler (no training) ----------------------------


class Killed(Exception):
    """Stands for the kill -9 between two suggest calls."""


class StopAfter:
    def __init__(self, trial, count: int) -> None:
        self.trial, self.left = trial, count

    def __getattr__(self, name):
        method = getattr(self.trial, name)

        def suggest(*args, **kwargs):
            if self.left == 0:
                raise Killed
            self.left -= 1
            return method(*args, **kwargs)

        return suggest


def _draw(url: str, config: dict, slot: int, stop_after: int | None = None, joint=True) -> dict:
    """What a trial job does for `slot`, up to the params, in a fresh process's objects;
    joint=False takes the joint draw away (every parameter drawn on its own)."""
    sampler = sampler_from_config(config)
    if not joint:
        sampler.make_relative = None
    study = optuna.load_study(study_name="s", storage=_storage(url), sampler=sampler)
    frozen = attach_slot(study, slot, enqueued_params(config, slot))
    trial = optuna.trial.Trial(study, frozen._trial_id)
    return sample_params(StopAfter(trial, stop_after) if stop_after else trial, config)


@functools.cache
def _storage(url: str) -> optuna.storages.BaseStorage:
    """One storage per database for the whole test (opening one takes a while)."""
    create_or_load_study("s", url)
    return storage_for(url)


def _finish(url: str, slot: int, value: float) -> None:
    study = optuna.load_study(study_name="s", storage=_storage(url))
    study.tell(attach_slot(study, slot).number, value)


def _study_params(url: str, config: dict, slots: int, killed_slot=None, joint=True) -> list:
    drawn = []
    for slot in range(slots):
        if slot == killed_slot:
            with pytest.raises(Killed):
                _draw(url, config, slot, stop_after=2)
        drawn.append(_draw(url, config, slot, joint=joint))  # a re-attached trial: stored params
        _finish(url, slot, (slot * 7919 % 101) / 101)
    return drawn


# A finite part of the default space for grid, with a conditional float on a step.
GRID_SPACE = {
    "loss": {"type": "categorical", "choices": ["bce", "focal", "hybrid"]},
    "focal_gamma": {
        "type": "float",
        "low": 1.0,
        "high": 3.0,
        "step": 1.0,
        "condition": {"loss": ["focal", "hybrid"]},
    },
    "batch_size": {"type": "categorical", "choices": [8, 16]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_each_sampler_draws_reproducibly_and_a_resumed_trial_draws_the_same(
    tmp_path, default_config, name
):
    """The default (conditional, mixed) search space; grid on a finite one. Slot 3 is killed
    after two suggest calls and resumed by a fresh sampler: it must draw what the uninterrupted
    run drew, and a second study must draw the same throughout."""
    raw = {**default_config, "study": {**default_config["study"], "sampler": name}}
    raw["study"]["n_startup_trials"] = 1
    if name == "grid":
        raw["search_space"] = {**dict.fromkeys(default_config["search_space"]), **GRID_SPACE}
        raw["study"]["enqueue"] = []  # config.yaml's warm start names the replaced space
    config = validate_config(raw)
    first = _study_params(f"sqlite:///{tmp_path}/a.db", config, 4)
    # A second study of the same config, whose slot 3 is killed and resumed.
    resumed = _study_params(f"sqlite:///{tmp_path}/b.db", config, 4, killed_slot=3)
    assert resumed == first
    assert len({json.dumps(p, sort_keys=True) for p in first}) == 4
    if name in JOINT:  # the joint draw really decides: without it slots 2 and 3 differ
        alone = _study_params(f"sqlite:///{tmp_path}/c.db", config, 4, joint=False)
        assert alone[:1] == first[:1]
        assert all(alone[slot] != first[slot] for slot in (2, 3))


def test_cmaes_draws_floats_jointly_and_categoricals_per_parameter(tmp_path, default_config):
    """The documented fallback: CMA-ES leaves categoricals to per-parameter TPE, no error."""
    config = _with(default_config, sampler="cmaes", n_startup_trials=1)
    _study_params(f"sqlite:///{tmp_path}/a.db", config, 3)
    study = open_study("s", f"sqlite:///{tmp_path}/a.db", 0, sampler=sampler_from_config(config))
    space = study.sampler.infer_relative_search_space(study, study.get_trials()[-1])
    assert "learning_rate" in space and "weight_decay" in space
    assert not {"criteria_head", "loss", "batch_size"} & set(space)
    assert any(k.startswith("cma:") for k in study.get_trials()[-1].system_attrs)


# --- grid ------------------------------------------------------------------------------------


def test_grid_over_an_infinite_space_is_refused_at_validation(default_config):
    with pytest.raises(ConfigError) as error:
        _with(default_config, sampler="grid")
    message = str(error.value)
    assert "config key 'study.sampler'" in message
    assert "search_space.learning_rate is a float without a step" in message
    assert "search_space.criteria_head" not in message  # categoricals are finite


def test_the_study_step_validates_its_sections_without_a_search_space():
    """create_study validates only study and tracking: no space to check the strategy against."""
    study = {"sampler": "grid", "enqueue": [{"loss": "focal"}]}
    assert validate_config({"study": study})["study"]["sampler"] == "grid"
    with pytest.raises(ConfigError, match=r"enqueue\[0\]\.loss': not a search_space parameter"):
        validate_config({"study": study, "search_space": {"dropout": FINITE_SPACE["dropout"]}})


def test_grid_varies_a_conditional_parameter_only_where_it_applies(tiny_config):
    config = {
        **tiny_config,
        "search_space": {
            "loss": {"type": "categorical", "choices": ["bce", "focal"]},
            "focal_gamma": {
                "type": "float",
                "low": 1.0,
                "high": 3.0,
                "step": 1.0,
                "condition": {"loss": ["focal"]},
            },
            "batch_size": {"type": "int", "low": 4, "high": 8, "step": 4},
        },
    }
    points = grid_points(validate_config(config))
    assert len(points) == (1 + 3) * 2  # bce once, focal with each gamma; two batch sizes
    assert {"loss": "bce", "batch_size": 4} in points
    assert {"loss": "focal", "focal_gamma": 2.0, "batch_size": 8} in points


def test_grid_refuses_more_slots_than_points(tiny_config):
    config = {**tiny_config, "search_space": FINITE_SPACE}
    config["study"] = {**config["study"], "sampler": "grid", "n_trials": 7}
    with pytest.raises(ConfigError, match=r"'study.n_trials': 7 trials, .* 6 points"):
        validate_config(config)
    config["study"]["enqueue"] = [{"dropout": 0.0}]  # one enqueued set makes room for one more
    validate_config(config)


# --- enqueue ---------------------------------------------------------------------------------


def test_enqueued_sets_are_the_first_slots_params_through_resume_and_growth(root):
    enqueue = [{"learning_rate": 5.0e-4, "dropout": 0.25}, {"dropout": 0}]
    study = Study(
        root,
        study={"name": "enqueued", "enqueue": enqueue, "n_startup_trials": 1},
        **FAST,
    )
    # Slot 1 is killed after its first suggest, before any training.
    optuna_study = study.optuna()
    frozen = attach_slot(optuna_study, 1, enqueued_params(study.config, 1))
    with pytest.raises(Killed):
        sample_params(
            StopAfter(optuna.trial.Trial(optuna_study, frozen._trial_id), 1), study.config
        )
    reports = [study.run(0)]
    # Resumed after the config's set for slot 1 changed: the set its trial was created with wins.
    study.config["study"]["enqueue"] = [enqueue[0], {"dropout": 0.3}]
    reports.append(study.run(1))
    study.config["study"]["enqueue"] = enqueue
    reports.append(study.run(2))
    assert reports[0]["params"] == {"learning_rate": 5.0e-4, "dropout": 0.25}
    assert reports[1]["params"]["dropout"] == 0.0  # the set's value (an int in YAML), as a float
    assert isinstance(reports[1]["params"]["dropout"], float)
    assert reports[1]["params"]["learning_rate"] != 5.0e-4  # left out: sampled
    assert reports[2]["params"] not in [r["params"] for r in reports[:2]]
    # Rerun (the finished slots re-attach), then grow to 4 slots: nothing shifts or repeats.
    rerun = [study.run(slot)["params"] for slot in range(3)]
    assert rerun == [r["params"] for r in reports]
    assert study.run(3)["params"]["dropout"] not in (0.25, 0.0)
    trials = sorted(study.optuna().get_trials(), key=lambda t: t.user_attrs[SLOT_ATTR])
    assert [t.system_attrs.get("fixed_params") for t in trials] == [
        {"learning_rate": 5.0e-4, "dropout": 0.25},
        {"dropout": 0.0},
        None,
        None,
    ]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"momentum": 0.9}, "'study.enqueue[1].momentum': not a search_space parameter"),
        ({"learning_rate": 1.0}, "'study.enqueue[1].learning_rate': 1.0 is outside"),
        ({"learning_rate": "1e-4"}, "'study.enqueue[1].learning_rate': '1e-4' is text"),
        ({"batch_size": 12}, "'study.enqueue[1].batch_size': 12 is not one of the choices"),
        ({"loss": True}, "'study.enqueue[1].loss': True is not one of the choices"),
        ({"dropout": [0.1]}, "'study.enqueue[1].dropout': [0.1] (list) is not a number"),
        (
            {"loss": "bce", "focal_gamma": 2.0},
            "'study.enqueue[1].focal_gamma': never used: search_space.focal_gamma is sampled only",
        ),
    ],
)
def test_invalid_enqueue_entries_are_refused_naming_the_key(default_config, entry, expected):
    good = {"learning_rate": 5.0e-5, "loss": "focal", "focal_gamma": 2.0}
    with pytest.raises(ConfigError) as error:
        _with(default_config, enqueue=[good, entry])
    assert expected in str(error.value)
    assert "enqueue[0]" not in str(error.value)


def test_enqueue_on_a_stepped_parameter_must_lie_on_the_step(tiny_config):
    config = {**tiny_config, "search_space": FINITE_SPACE}
    config["study"] = {**config["study"], "enqueue": [{"dropout": 0.15}]}
    with pytest.raises(ConfigError, match=r"enqueue\[0\]\.dropout': 0.15 is not on the grid"):
        validate_config(config)
    config["study"]["enqueue"] = [{"dropout": 0.2, "learning_rate": 5.0e-4}]
    assert enqueued_params(validate_config(config), 0) == {"dropout": 0.2, "learning_rate": 5.0e-4}


# --- how the strategy reaches a trial job ---------------------------------------------------


def test_the_driver_hands_the_strategy_to_jobs_out_of_band(monkeypatch, tiny_config):
    """Not in the run_trial params (a rerun trigger): the job takes it from the environment."""
    study = {**tiny_config["study"], "sampler": "qmc", "enqueue": [{"dropout": 0.1}]}
    study["parallel"] = True
    announce_search(study)
    params_config = {**tiny_config, "study": {"name": "tiny", "seed": 7}}  # what params carry
    job = validate_config(with_planned_study(params_config, slot=2))
    assert job["study"]["sampler"] == "qmc"
    assert job["study"]["parallel"] is True
    assert job["study"]["enqueue"] == [{"dropout": 0.1}]
    assert job["study"]["n_trials"] == 3  # no driver count: the slot's own
    monkeypatch.delenv(SEARCH_ENV)
    assert validate_config(with_planned_study(params_config, 0))["study"]["sampler"] == "tpe"
    smk = (REPO / "rules" / "common.smk").read_text()
    assert 'announce_search(config["study"])' in smk


def test_sampler_for_refuses_an_unknown_name():
    with pytest.raises(ValueError, match="unknown sampler 'bogus'"):
        sampler_for(1, "bogus")


def test_study_sampler_must_be_a_known_name(tiny_config):
    config = {**tiny_config, "study": {**tiny_config["study"], "sampler": "nsga"}}
    with pytest.raises(ConfigError, match=r"'study.sampler': 'nsga' is not one of"):
        validate_config(config)


def test_attach_slot_without_enqueue_creates_a_plain_trial(tmp_path):
    url = f"sqlite:///{Path(tmp_path)}/p.db"
    create_or_load_study("s", url)
    frozen = attach_slot(open_study("s", url, 0), 0)
    assert "fixed_params" not in frozen.system_attrs
