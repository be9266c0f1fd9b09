"""The joint metric and model.evidence_for (issue 25, items 4 and 6): a decision and its evidence
scored together, evidence only where a symptom is decided present, and what that does to the
study's fingerprint, the guard and stored configs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config_dict

from leanhpo.config import Config, ConfigError, validate_config
from leanhpo.metric_names import MAXIMISABLE_METRICS
from leanhpo.training.bootstrap import bootstrap_test_metrics, joint_resamples, resample_counts
from leanhpo.training.joint import joint_metrics
from leanhpo.training.metrics import EvidenceExample

TEXT = "I cannot sleep. I feel worthless. Nice weather."
SLEEP, WORTHLESS, WEATHER = (0, 15), (16, 33), (34, len(TEXT))


def _pair(gold, pred, excluded=False) -> EvidenceExample:
    return EvidenceExample(TEXT, gold, pred, excluded=excluded)


def test_joint_metrics_by_hand() -> None:
    examples = [
        _pair((SLEEP,), SLEEP),  # shown, decided present, right sentence: right, TP
        _pair((SLEEP,), WEATHER),  # shown, present, wrong sentence: FP and FN
        _pair((WORTHLESS,), None),  # shown, present, no sentence: FP and FN
        _pair((WORTHLESS,), WORTHLESS),  # shown, decided absent (right span unused): FN
        _pair((), None),  # not shown, absent: right
        _pair((), WEATHER),  # not shown, absent, a sentence anyway (evidence_for all): right
        _pair((), None),  # not shown, decided present: FP
        _pair((SLEEP,), SLEEP, excluded=True),  # skipped
    ]
    decided = np.array([1, 1, 1, 0, 0, 0, 1, 1], dtype=bool)
    metrics = joint_metrics(examples, decided)
    assert metrics["accuracy"] == pytest.approx(3 / 7)
    tp, fp, fn = 1, 3, 3
    assert metrics["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert metrics["n_pairs"] == 7.0 and metrics["n_excluded"] == 1.0
    assert metrics["n_evidence"] == 5.0  # every span given, the excluded pair's included
    assert metrics["n_evidence_absent"] == 2.0  # pairs 3 and 5: decided absent, given a span
    nothing = joint_metrics(examples[:7], np.zeros(7, dtype=bool))
    assert nothing["accuracy"] == pytest.approx(3 / 7) and nothing["f1"] == 0.0
    no_positive = joint_metrics([_pair((), None)], np.ones(1, dtype=bool))
    assert no_positive["accuracy"] == 0.0 and no_positive["f1"] is None


def test_joint_intervals_equal_joint_metrics_of_each_resample() -> None:
    rng = np.random.default_rng(0)
    n_posts = 20
    labels = (rng.random((n_posts, 9)) < 0.3).astype(int)
    scores = np.clip(labels * 0.4 + rng.random(labels.shape) * 0.6, 0, 1)
    spans = (SLEEP, WORTHLESS, WEATHER, None)
    examples = [
        _pair((SLEEP,) if labels[p, s] else (), spans[rng.integers(4)], rng.random() < 0.05)
        for p in range(n_posts)
        for s in range(9)
    ]
    pair_posts = np.repeat(np.arange(n_posts), 9)
    decided = (scores >= 0.5).reshape(-1)
    counts = resample_counts(n_posts, 50, seed=4)
    fast = joint_resamples(examples, decided, pair_posts, counts)
    for b, row in enumerate(counts):
        drawn = np.repeat(np.arange(n_posts), row)
        chosen = [i for post in drawn for i in range(post * 9, post * 9 + 9)]
        slow = joint_metrics([examples[i] for i in chosen], decided[chosen])
        for key in ("accuracy", "f1"):
            expected = np.nan if slow[key] is None else slow[key]
            assert fast[key][b] == pytest.approx(expected, nan_ok=True), key
    result = bootstrap_test_metrics(
        labels, scores, examples, pair_posts, labels.mean(0), 50, 0.9, seed=4
    )
    assert result is not None
    point = joint_metrics(examples, decided)["accuracy"]
    assert result.intervals["joint_accuracy"]["low"] <= point
    assert point <= result.intervals["joint_accuracy"]["high"]


def test_the_joint_metrics_can_be_the_study_metric(tmp_path: Path) -> None:
    for name in ("val_joint_accuracy", "val_joint_f1"):
        assert name in MAXIMISABLE_METRICS
        config = tiny_config_dict(tmp_path, study={"metric": name})
        assert Config.from_dict(config).study.metric == name
    with pytest.raises(ConfigError, match="val_joint_accuracy"):
        validate_config({"study": {"metric": "val_joint"}})  # the error lists the valid names


def test_evidence_for_defaults_to_present_and_takes_present_or_all() -> None:
    assert Config.from_dict({}).model.evidence_for == "present"
    assert Config.from_dict({"model": {"evidence_for": "all"}}).model.evidence_for == "all"
    with pytest.raises(ConfigError, match=r"model\.evidence_for"):
        validate_config({"model": {"evidence_for": "absent"}})


def test_a_stored_config_without_evidence_for_reads_as_the_evidence_it_was_given(
    tmp_path: Path,
) -> None:
    """A checkpoint, trial report or export written before the key gave evidence for every
    symptom: read back, it says `all`, not today's default."""
    stored = Config.from_dict(tiny_config_dict(tmp_path)).to_dict()
    del stored["model"]["evidence_for"]
    assert Config.from_stored(stored).model.evidence_for == "all"
    assert Config.from_dict(stored).model.evidence_for == "present"
    stored["model"]["evidence_for"] = "present"
    assert Config.from_stored(stored).model.evidence_for == "present"


def test_a_study_started_before_evidence_for_continues_with_all_and_is_told_so(
    tmp_path: Path,
) -> None:
    """The fingerprint of a study started before the key holds no evidence_for: `all` (what the
    code did then) keeps it, `present` (the default) is a change, refused with the way out."""
    from leanhpo.trial.fingerprint import (
        StudyConfigMismatchError,
        check_trial_fingerprint,
        fingerprint,
        training_sections,
    )

    config = tiny_config_dict(tmp_path)
    older = copy.deepcopy(config)
    del older["model"]["evidence_for"]
    state = {"fingerprint": fingerprint(older, "d"), "fingerprint_config": training_sections(older)}
    as_before = copy.deepcopy(config)
    as_before["model"]["evidence_for"] = "all"
    assert fingerprint(as_before, "d") == state["fingerprint"]
    check_trial_fingerprint(state, fingerprint(as_before, "d"), as_before, "trial_0000")
    assert config["model"]["evidence_for"] == "present"
    with pytest.raises(StudyConfigMismatchError) as refused:
        check_trial_fingerprint(state, fingerprint(config, "d"), config, "trial_0000")
    message = str(refused.value)
    assert "model.evidence_for" in message and "set model.evidence_for: 'all'" in message


def test_the_guard_takes_a_new_key_at_its_earlier_value_as_no_change() -> None:
    from leanhpo.workflow.guard import _MISSING, Change, _same, rerun_refusal

    assert _same(_MISSING, "all", "model.evidence_for")
    assert not _same(_MISSING, "present", "model.evidence_for")
    assert not _same("all", "present", "model.evidence_for")
    assert not _same(_MISSING, "all", "model.pooling")
    change = Change(_MISSING, "present", {"run_trial"}, {0})
    message = rerun_refusal("demo", {"model.evidence_for": change}, False, 3)
    assert message is not None
    assert '(not set) -> "present"' in message
    assert "set model.evidence_for: 'all'" in message


@pytest.mark.slow
def test_a_trial_optimises_the_joint_f1_and_reports_it(tmp_path: Path) -> None:
    """study.metric val_joint_f1: every epoch logs it, the trial is scored by it, and the trivial
    baselines give its floor (no evidence at all: 0)."""
    from studyhelper import Study

    study = Study(tmp_path, study={"metric": "val_joint_f1"}, train={"epochs": 1})
    report = study.run(0)
    assert report["optimization_metric"] == "val_joint_f1"
    metrics = report["history"][0]["metrics"]
    assert report["best_validation_score"] == metrics["val_joint_f1"]
    assert 0.0 <= metrics["val_joint_accuracy"] <= 1.0
    assert metrics["val_joint_n_evidence_absent"] == 0.0  # evidence_for present
    assert report["baseline"]["optimization_metric_value"] == 0.0
    logged = study.tracker().client.get_run(report["mlflow"]["run_id"]).data.metrics
    assert logged["val_joint_f1"] == metrics["val_joint_f1"]
    assert "learning_curves/val_joint_f1" in logged
