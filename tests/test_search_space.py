"""The default search space of config.yaml: what it samples is always a valid trial config, its
conditional parameters appear exactly when their condition holds, and a short study on the tiny
encoder reaches the model structure it promises (issue 4, acceptance 1 on the tiny encoder)."""

from __future__ import annotations

import copy
from collections import Counter

import optuna
import pytest
import yaml
from conftest import REPO
from studyhelper import Study

from leanhpo.config import Config, apply_params, deep_merge, sample_params, validate_config
from leanhpo.config.search_space import active_space, condition_holds
from leanhpo.config.validate import load_schema
from leanhpo.study.setup import sampler_for

STRUCTURE = ("criteria_head", "pooling", "evidence_head", "coupling", "loss")
OPTIMISER = ("learning_rate", "head_learning_rate", "batch_size", "warmup_ratio", "weight_decay")


@pytest.fixture(scope="module")
def default_config() -> dict:
    with (REPO / "config.yaml").open() as handle:
        return validate_config(yaml.safe_load(handle))


def test_default_space_covers_structure_and_optimiser(default_config):
    space = active_space(default_config)
    for name in (*STRUCTURE, *OPTIMISER, "dropout"):
        assert name in space, name
    assert space["coupling_method"]["condition"] == {"coupling": ["coupled"]}
    assert set(space["focal_gamma"]["condition"]["loss"]) == {"focal", "adaptive_focal", "hybrid"}
    assert space["augmentation_methods"]["condition"] == {"augmentation_prob": [0.2]}


def test_window_pooling_is_searched_and_trial_1_keeps_the_default(default_config):
    """Every window pooling is a choice, in config.yaml and in the real-study overlay; trial 1
    (the enqueued known-good set) keeps the default, so adding the parameter left it as it was;
    a sampled value reaches the typed config."""
    schema = load_schema()["properties"]["model"]["properties"]["window_pooling"]
    with (REPO / "config.yaml").open() as base, (REPO / "overlays/real-redsm5.yaml").open() as real:
        recipe = validate_config(deep_merge(yaml.safe_load(base), yaml.safe_load(real)))
    for config in (default_config, recipe):
        assert active_space(config)["window_pooling"]["choices"] == schema["enum"]
    trial_1 = default_config["study"]["enqueue"][0]
    assert (
        trial_1["window_pooling"] == default_config["model"]["window_pooling"] == schema["default"]
    )
    for kind in schema["enum"]:
        resolved = apply_params(default_config, {"window_pooling": kind})
        assert Config.from_dict(resolved).model.window_pooling == kind


@pytest.mark.parametrize("sampler", ["project", "random"])
def test_default_space_samples_200_valid_trial_configs(default_config, sampler):
    """The project's own sampler (TPE, seeded per slot) over 200 asks, with varied objective
    values so TPE leaves its random start-up phase; and a random sampler, which must reach
    every choice (TPE may rightly stop proposing one)."""
    space = active_space(default_config)
    chosen = sampler_for(11) if sampler == "project" else optuna.samplers.RandomSampler(seed=11)
    study = optuna.create_study(direction="maximize", sampler=chosen)
    seen: dict[str, Counter] = {name: Counter() for name in space}
    for number in range(200):
        trial = study.ask()
        params = sample_params(trial, default_config)
        for name, spec in space.items():
            assert (name in params) == condition_holds(spec, params), (name, params)
        resolved = apply_params(default_config, params)
        validate_config(copy.deepcopy(resolved))  # every semantic check, not only the schema
        typed = Config.from_dict(resolved)
        for name, value in params.items():
            seen[name][str(value)] += 1
        assert typed.model.evidence_head == params["evidence_head"]
        study.tell(trial, (number * 7919 % 101) / 101)
    for name, spec in space.items():
        if sampler == "random" and spec["type"] == "categorical":
            missing = {str(c) for c in spec["choices"]} - set(seen[name])
            assert not missing, f"{name}: {missing} never sampled in 200 trials"


def test_a_12_trial_study_with_the_default_space_reaches_the_structure(tmp_path, default_config):
    """Acceptance 1 of issue 4 on the tiny encoder (docs/benchmarks.md has the MiniLM run):
    no trial fails and the reports show >= 3 criteria heads, evidence heads and losses."""
    space = copy.deepcopy(default_config["search_space"])
    study = Study(
        tmp_path,
        study={"n_trials": 12},
        search_space=space,
        train={"epochs": 1},
        retention={"keep_best_trials": 1},
    )
    reports = [study.run(slot) for slot in range(12)]
    assert [r["status"] for r in reports] == ["completed"] * 12, [r.get("failure") for r in reports]
    for key, section in (("criteria_head", "model"), ("evidence_head", "model"), ("loss", "train")):
        distinct = {r["config"][section][key] for r in reports}
        assert len(distinct) >= 3, (key, distinct)
    for report in reports:
        metrics = report["validation_metrics"]
        assert metrics["val_evidence_null_threshold"] is not None
        assert report["config"]["model"]["null_threshold"] == "auto"


def test_parallel_trials_lie_about_running_ones():
    """Parallel trial jobs (issue 9): TPE counts a running trial as a bad result (constant liar),
    so a new trial does not pile onto the parameters of one still running; sequential trials
    have no running neighbour to lie about."""
    parallel = sampler_for(11, "tpe", parallel=True)
    assert parallel.make(5)._constant_liar is True
    assert parallel.make_relative is not None
    assert parallel.make_relative(5, 0)._constant_liar is True
    assert sampler_for(11).make(5)._constant_liar is False
