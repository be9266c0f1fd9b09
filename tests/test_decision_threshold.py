"""model.decision_threshold (issue 11, item 4): per-symptom decision thresholds, tuned on
validation with `auto`, stored with every checkpoint and reused unchanged by the test
evaluation, the export and predict.

The sweep is checked against brute force; the pipeline on one tiny in-process study with `auto`
(tests/studyhelper.py): one trial of two epochs, the study evaluation, the export.
"""

from __future__ import annotations

import json
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import f1_score
from studyhelper import Study

from leanhpo.checkpoints import CheckpointStore
from leanhpo.config import Config, ConfigError, validate_config
from leanhpo.data import load_split
from leanhpo.export import (
    INFO_NAME,
    ExportError,
    load_exported,
    model_card,
    predict_texts,
    write_export,
)
from leanhpo.export.bundle import read_decision_thresholds
from leanhpo.metric_names import DECISION_THRESHOLD_KEYS, SYMPTOMS
from leanhpo.study.evaluate import (
    best_networks,
    evaluate_study,
    score_test_split,
    validation_decision_thresholds,
)
from leanhpo.study.export import export_best_model
from leanhpo.training.bootstrap import criteria_resamples, resample_counts
from leanhpo.training.calibrate import tune_decision_thresholds
from leanhpo.training.evaluation import Evaluation, resolve_decision_thresholds
from leanhpo.training.metrics import (
    DEFAULT_THRESHOLD,
    EvidenceExample,
    criteria_metrics,
    threshold_vector,
)

VAL_KEYS = [f"val_{key}" for key in DECISION_THRESHOLD_KEYS]


# ---------------------------------------------------------------------------- the sweep


def _cuts(scores: np.ndarray) -> np.ndarray:
    """The candidate cuts the sweep promises: below the lowest score, and between neighbours."""
    distinct = np.unique(scores)
    return np.concatenate([[distinct[0] / 2], (distinct[:-1] + distinct[1:]) / 2])


def _f1(labels: np.ndarray, scores: np.ndarray, cut: float) -> float:
    """F1 by counting (sklearn's definition; f1_score itself is too slow for the brute force,
    and criteria_metrics checks the result with sklearn)."""
    predicted, positive = scores >= cut, labels == 1
    return 2 * int((predicted & positive).sum()) / (int(positive.sum()) + int(predicted.sum()))


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.integers(2, 40))
    labels = rng.integers(0, 2, size=(n, len(SYMPTOMS)))
    labels[0], labels[1] = 1, 0  # both kinds in every column
    if rng.random() < 0.5:  # coarse scores: many ties, as a saturated sigmoid gives
        scores = rng.choice([0.0, 0.1, 0.3, 0.5, 0.7, 1.0], size=labels.shape)
    else:
        scores = rng.random(labels.shape) ** 3  # skewed low, like rare symptoms
    return labels, scores


def test_the_sweep_is_exact_against_brute_force():
    """Over many random cases, each tuned threshold reaches the best F1 that ANY threshold
    (every score itself, 0 and above 1) gives, and is the optimal cut nearest 0.5."""
    rng = np.random.default_rng(11)
    for _ in range(150):
        labels, scores = _random_case(rng)
        tuned = tune_decision_thresholds(labels, scores)
        metrics = criteria_metrics(labels, scores, tuned)
        for j, name in enumerate(SYMPTOMS):
            y, s = labels[:, j], scores[:, j]
            anywhere = [*np.unique(s), 0.0, 1.0 + 1e-9]
            best = max(_f1(y, s, t) for t in anywhere)
            assert metrics[f"f1_{name}"] == pytest.approx(best, abs=1e-12)
            cuts = _cuts(s)
            values = np.array([_f1(y, s, cut) for cut in cuts])
            optimal = cuts[np.isclose(values, values.max(), rtol=0, atol=1e-12)]
            assert tuned[j] == min(optimal, key=lambda c: (abs(c - 0.5), c))


TIES = {
    # All predicted (cut 0.05) and only the top post (cut 0.85) both give F1 2/3.
    "nearer_wins": ([1, 0, 0, 1], [0.1, 0.2, 0.8, 0.9], 0.85, 2 / 3),
    # Equally near 0.5 (cuts 0.25 and 0.75, both F1 1/2): the lower one.
    "equally_near": ([0, 0, 1, 0, 0, 0, 1, 0], [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9], 0.25, 0.5),
    # Saturated probabilities (0 and 1 exactly), separable: the cut between them.
    "saturated": ([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0], 0.5, 1.0),
}


@pytest.mark.parametrize("case", list(TIES))
def test_ties_go_to_the_cut_nearest_one_half(case):
    labels, scores, cut, f1 = TIES[case]
    y, s = np.array(labels)[:, None], np.array(scores)[:, None]
    tuned = tune_decision_thresholds(y, s)
    assert tuned.tolist() == [pytest.approx(cut)]
    assert _f1(y[:, 0], s[:, 0], tuned[0]) == pytest.approx(f1)


def test_degenerate_symptoms_keep_one_half():
    """No positive, no negative, or one score for all: nothing to tune (the constant column
    with both kinds predicts everything, its only cut)."""
    labels = np.zeros((5, len(SYMPTOMS)), dtype=int)
    scores = np.linspace(0.1, 0.9, 5)[:, None].repeat(len(SYMPTOMS), axis=1)
    labels[:, 1] = 1  # every post positive
    labels[:, 2], scores[:, 2] = [1, 0, 1, 0, 0], 0.7
    labels[:, 3:] = [[0], [0], [0], [1], [1]]  # separable: tuned
    tuned = tune_decision_thresholds(labels, scores)
    assert tuned[0] == DEFAULT_THRESHOLD and tuned[1] == DEFAULT_THRESHOLD
    assert tuned[2] == pytest.approx(0.35)  # below 0.7: all predicted, F1 > 0
    assert tuned[3:] == pytest.approx([0.6] * (len(SYMPTOMS) - 3))
    with pytest.raises(ValueError, match="labels and probabilities"):
        tune_decision_thresholds(labels[:, :3], scores)


def test_criteria_metrics_and_the_bootstrap_take_one_threshold_per_symptom():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, size=(30, len(SYMPTOMS)))
    scores = rng.random(labels.shape)
    thresholds = np.linspace(0.2, 0.8, len(SYMPTOMS))
    metrics = criteria_metrics(labels, scores, thresholds)
    for j, name in enumerate(SYMPTOMS):
        by_hand = _f1(labels[:, j], scores[:, j], thresholds[j])
        assert metrics[f"f1_{name}"] == pytest.approx(by_hand)
    assert metrics["f1_macro"] != criteria_metrics(labels, scores)["f1_macro"]
    counts = resample_counts(len(labels), 20, seed=3)
    fast = criteria_resamples(labels, scores, counts, thresholds)
    for b in range(len(counts)):
        drawn = np.repeat(np.arange(len(labels)), counts[b])
        slow = criteria_metrics(labels[drawn], scores[drawn], thresholds)
        for key in ("f1_macro", "f1_micro", "accuracy", f"precision_{SYMPTOMS[4]}"):
            assert fast[key][b] == pytest.approx(slow[key], abs=1e-12), key
    with pytest.raises(ValueError, match="one finite threshold or 9"):
        threshold_vector([0.5, 0.5])


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize("value", ["foo", "AUTO", 0, 1, 1.5, -0.1, True, None, [0.5]])
def test_config_rejects_anything_but_auto_or_a_probability(value):
    with pytest.raises(ConfigError) as caught:
        validate_config({"model": {"decision_threshold": value}})
    message = str(caught.value)
    assert "model.decision_threshold" in message
    assert "is not 'auto' or a number in (0, 1)" in message


def test_config_accepts_auto_and_probabilities_and_defaults_to_one_half():
    assert Config.from_dict({}).model.decision_threshold == 0.5
    for value in ("auto", 0.3, 0.999):
        assert Config.from_dict(
            {"model": {"decision_threshold": value}}
        ).model.decision_threshold == (value)


def test_a_number_is_used_and_logged_for_every_symptom():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, size=(12, len(SYMPTOMS)))
    pairs = [EvidenceExample("text", (), None)] * labels.size  # nine per post, no evidence
    evaluation = Evaluation(
        {"loss": 1.0}, rng.random(labels.shape), labels, pairs, [math.inf] * labels.size
    )
    fixed = Config.from_dict({"model": {"decision_threshold": 0.3}}).model
    thresholds = resolve_decision_thresholds(fixed, evaluation)
    assert thresholds.tolist() == [0.3] * len(SYMPTOMS)
    flat = evaluation.metrics("val_", 0.0, thresholds)
    assert [flat[key] for key in VAL_KEYS] == [0.3] * len(SYMPTOMS)
    expected = criteria_metrics(labels, evaluation.probabilities, 0.3)["f1_macro"]
    assert flat["val_criteria_f1_macro"] == expected
    auto = Config.from_dict({"model": {"decision_threshold": "auto"}}).model
    tuned = resolve_decision_thresholds(auto, evaluation)
    assert tuned.tolist() == tune_decision_thresholds(labels, evaluation.probabilities).tolist()
    # An old snapshot (no thresholds logged) falls back to the config, except under auto.
    assert validation_decision_thresholds({}, Config.from_dict({})).tolist() == [0.5] * 9
    with pytest.raises(RuntimeError, match="val_criteria_threshold_DEPRESSED_MOOD"):
        validation_decision_thresholds(
            {}, Config.from_dict({"model": {"decision_threshold": "auto"}})
        )


# ---------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One tiny study under `auto`: a trial of two epochs (also scored on test for analysis),
    the study evaluation, the export."""
    root = tmp_path_factory.mktemp("decision_auto")
    study = Study(root, model={"decision_threshold": "auto"}, evaluation={"per_trial_test": True})
    trial = study.run(0)
    report_path = study.dir / "study_report.json"
    report = evaluate_study(
        study.study_json, study.data, [study.report_path(0)], report_path, study.config
    )
    folder = study.dir / "best_model"
    export_best_model(study.dir, report_path, folder)
    return SimpleNamespace(study=study, trial=trial, report=report, folder=folder)


def _thresholds(metrics: dict) -> list[float]:
    return [metrics[key] for key in VAL_KEYS]


def test_each_epoch_logs_nine_tuned_thresholds_kept_in_the_checkpoint(made):
    trial = made.trial
    assert trial["status"] == "completed" and len(trial["history"]) == 2
    tracker = made.study.tracker()
    logged = tracker.metric_history(trial["mlflow"]["run_id"])
    for entry in trial["history"]:
        thresholds = _thresholds(entry["metrics"])
        assert all(0.0 <= t <= 1.0 for t in thresholds)
        assert any(t != 0.5 for t in thresholds), "auto tuned nothing"
        for key, value in zip(VAL_KEYS, thresholds, strict=True):
            assert (entry["epoch"], value) in logged[key]
    store = CheckpointStore(made.study.dir / "trial_0000" / "checkpoints")
    for epoch in trial["best_epochs"]:
        snapshot = store.load(epoch).meta["metrics"]
        history = next(h["metrics"] for h in trial["history"] if h["epoch"] == epoch)
        assert _thresholds(snapshot) == _thresholds(history)


def test_validation_metrics_are_scored_under_the_tuned_thresholds(made):
    """The checkpoint again on validation: its thresholds are those the sweep gives on these
    scores, and the logged criteria metrics those of criteria_metrics under them."""
    study, trial = made.study, made.trial
    network = best_networks(trial, study.dir, study.data, logging.getLogger("test"))[0]
    validation = load_split(study.data, "validation")
    train = load_split(study.data, "train")
    evaluation = score_test_split(network.network, network.config, validation, train)
    stored = trial["history"][network.entry["epoch"] - 1]["metrics"]
    tuned = tune_decision_thresholds(evaluation.labels, evaluation.probabilities)
    assert tuned == pytest.approx(_thresholds(stored), rel=1e-9)
    recomputed = criteria_metrics(evaluation.labels, evaluation.probabilities, tuned)
    at_half = criteria_metrics(evaluation.labels, evaluation.probabilities)
    assert stored["val_criteria_f1_macro"] == pytest.approx(recomputed["f1_macro"], abs=1e-12)
    assert recomputed["f1_macro"] >= at_half["f1_macro"]  # tuned on these very posts


def test_the_test_evaluation_reuses_the_checkpoints_thresholds(made):
    study, trial, report = made.study, made.trial, made.report
    store = CheckpointStore(study.dir / "trial_0000" / "checkpoints")
    networks = best_networks(trial, study.dir, study.data, logging.getLogger("test"))
    test_posts, train = load_split(study.data, "test"), load_split(study.data, "train")
    primary = min(report["checkpoints"], key=lambda c: c["epoch"])
    for row in report["checkpoints"]:
        snapshot = store.load(row["epoch"]).meta["metrics"]
        assert row["decision_thresholds"] == dict(zip(SYMPTOMS, _thresholds(snapshot), strict=True))
        network = next(n for n in networks if n.entry["epoch"] == row["epoch"])
        evaluation = score_test_split(network.network, network.config, test_posts, train)
        thresholds = [row["decision_thresholds"][s] for s in SYMPTOMS]
        expected = criteria_metrics(evaluation.labels, evaluation.probabilities, thresholds)
        criteria = row["test_metrics"]["criteria_matching"]
        assert criteria["f1_macro"] == expected["f1_macro"]
        for name in SYMPTOMS:
            assert criteria["per_criterion"][name]["f1"] == expected[f"f1_{name}"]
    # The per-trial test evaluation (evaluation.per_trial_test) reuses them the same way.
    analysis = trial["test_metrics_for_analysis"]
    assert analysis["decision_thresholds"] == primary["decision_thresholds"]
    assert (
        analysis["test_metrics"]["criteria_matching"]
        == (primary["test_metrics"]["criteria_matching"])
    )
    # The bootstrap's point value and the baseline comparison use them too.
    comparison = report["baseline_comparison"]
    assert comparison["model_f1_macro"] == primary["test_metrics"]["criteria_matching"]["f1_macro"]
    assert comparison["baseline"] in ("prevalence", "all_positive")
    interval = report["test_metrics_ci"]["criteria_matching"]["f1_macro"]
    assert interval["low"] <= comparison["model_f1_macro"] <= interval["high"]


def test_the_export_writes_the_thresholds_and_predict_applies_them(made):
    primary = min(made.report["checkpoints"], key=lambda c: c["epoch"])
    info = json.loads((made.folder / INFO_NAME).read_text())
    assert info["decision_thresholds"] == primary["decision_thresholds"]
    assert "decision_threshold" not in info
    model = load_exported(made.folder, "cpu")
    thresholds = [primary["decision_thresholds"][s] for s in SYMPTOMS]
    assert list(model.decision_thresholds) == thresholds
    gold = load_split(made.study.data, "test")
    rows = predict_texts(model, [p["text"] for p in gold])
    for row in rows:
        for name, threshold in zip(SYMPTOMS, thresholds, strict=True):
            decision = row["symptoms"][name]
            assert decision["present"] == (decision["probability"] >= threshold), name
    # The decisions, scored against gold, are the study report's test figures.
    present = np.array([[row["symptoms"][s]["present"] for s in SYMPTOMS] for row in rows])
    labels = np.array([p["labels"] for p in gold])
    defined = np.flatnonzero(labels.any(axis=0))  # a symptom no test post shows is left out
    f1_macro = f1_score(labels, present, labels=defined, average="macro", zero_division=0)
    assert f1_macro == pytest.approx(primary["test_metrics"]["criteria_matching"]["f1_macro"])
    card = (made.folder / "README.md").read_text()
    assert "tuned on validation" in card
    assert f"{SYMPTOMS[0]} {thresholds[0]:.4g}" in card or f">= {thresholds[0]:.4g}" in card


def test_the_export_refuses_a_report_with_other_thresholds(made, tmp_path):
    report = json.loads((made.study.dir / "study_report.json").read_text())
    primary = min(report["checkpoints"], key=lambda c: c["epoch"])
    primary["decision_thresholds"][SYMPTOMS[0]] += 0.01
    stale = tmp_path / "study_report.json"
    stale.write_text(json.dumps(report))
    with pytest.raises(ExportError, match="decided the test symptoms at thresholds"):
        export_best_model(made.study.dir, stale, tmp_path / "out")


def test_an_old_export_with_one_threshold_still_loads_and_predicts(made, tmp_path):
    """Exports written before per-symptom thresholds hold one `decision_threshold`."""
    model = load_exported(made.folder, "cpu")
    info = {"config": model.info["config"], "decision_threshold": 0.3, "null_threshold": 0.0}
    card = model_card({**info, "symptoms": list(SYMPTOMS)})
    assert "decided at probability >= 0.3" in card
    write_export(model.network, info, card, tmp_path / "old")
    old = load_exported(tmp_path / "old", "cpu")
    assert old.decision_thresholds == (0.3,) * len(SYMPTOMS)
    rows = predict_texts(old, ["I cannot sleep and nothing is fun.", "A fine day."])
    for row in rows:
        for decision in row["symptoms"].values():
            assert decision["present"] == (decision["probability"] >= 0.3)
    broken = {"decision_thresholds": {SYMPTOMS[0]: 0.5}}
    with pytest.raises(ExportError, match="lacks decision_thresholds"):
        read_decision_thresholds(broken, "x.json")
    with pytest.raises(ExportError, match="must be numbers"):
        read_decision_thresholds({"decision_thresholds": dict.fromkeys(SYMPTOMS, "0.5")}, "x")


def test_the_default_threshold_keeps_the_fingerprint_of_studies_started_before_it(
    tmp_path,
) -> None:
    """A study fingerprinted before the key existed resumes and grows at 0.5; auto is a change."""
    import copy

    from conftest import tiny_config_dict

    from leanhpo.trial.fingerprint import changed_keys, fingerprint, training_sections

    config = tiny_config_dict(tmp_path)
    assert config["model"]["decision_threshold"] == 0.5
    older = copy.deepcopy(config)
    del older["model"]["decision_threshold"]
    assert fingerprint(config, "data") == fingerprint(older, "data")
    tuned = copy.deepcopy(config)
    tuned["model"]["decision_threshold"] = "auto"
    assert fingerprint(tuned, "data") != fingerprint(config, "data")
    changed = changed_keys(training_sections(older), training_sections(tuned))
    assert changed == ["model.decision_threshold"]
