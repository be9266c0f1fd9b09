"""Names of the metrics the trainer logs per epoch (SPEC 1a), and how MLflow groups them.

A leaf module with no imports from the package, so that config validation (which must reject an
unknown `study.metric` before anything runs) and the trainer (which logs them) share one list.
"""

from __future__ import annotations

from collections.abc import Mapping

SYMPTOMS: tuple[str, ...] = (
    "DEPRESSED_MOOD",
    "ANHEDONIA",
    "APPETITE_CHANGE",
    "SLEEP_ISSUES",
    "PSYCHOMOTOR",
    "FATIGUE",
    "WORTHLESSNESS",
    "COGNITIVE_ISSUES",
    "SUICIDAL_THOUGHTS",
)

CRITERIA_SUMMARY = (
    "accuracy",
    "f1_macro",
    "f1_micro",
    "precision_macro",
    "recall_macro",
    "precision_micro",
    "recall_micro",
    "exact_match_ratio",
    "pr_auc_macro",
)
CRITERIA_PER_SYMPTOM = ("f1", "precision", "recall", "pr_auc")
# The 10-label view (the nine symptoms plus NO_SYMPTOMS) in which the ReDSM5 authors report
# their baselines, logged as `val_criteria_ten_label_<name>` (training/metrics.py).
TEN_LABEL_SUMMARY = ("f1_macro", "f1_micro", "subset_accuracy", "f1_no_symptoms")
# Logged beside the criteria metrics, not maximisable: how many symptoms the macro averages
# cover (those some post of the split shows; an undefined symptom is left out, never a 0).
DEFINED_SYMPTOMS_KEY = "criteria_defined_symptoms"
# Logged with every evaluation beside the criteria metrics (`val_criteria_threshold_<S>`): the
# probability at or above which each symptom counts as present (model.decision_threshold, tuned
# on validation with `auto`), so every checkpoint's metric snapshot holds the cuts it was
# scored with. Not maximisable: a threshold is a setting, not a score.
DECISION_THRESHOLD_KEYS: tuple[str, ...] = tuple(f"criteria_threshold_{s}" for s in SYMPTOMS)
EVIDENCE_SUMMARY = ("exact_match", "f1", "char_f1", "null_span_accuracy", "balanced_f1")
# The decision and its evidence scored together, per (post, symptom) pair (training/joint.py).
JOINT_SUMMARY = ("accuracy", "f1")

# Higher is better for all of these, so each can be the study's optimisation metric.
MAXIMISABLE_METRICS: tuple[str, ...] = (
    *(f"val_criteria_{name}" for name in CRITERIA_SUMMARY),
    *(f"val_criteria_ten_label_{name}" for name in TEN_LABEL_SUMMARY),
    *(f"val_criteria_{m}_{s}" for s in SYMPTOMS for m in CRITERIA_PER_SYMPTOM),
    *(f"val_evidence_{name}" for name in EVIDENCE_SUMMARY),
    *(f"val_joint_{name}" for name in JOINT_SUMMARY),
)

# Logged every epoch as well, but lower is better, so they cannot be maximised.
LOSS_METRICS = (
    "train_loss",
    "train_criteria_loss",
    "train_evidence_loss",
    "val_loss",
    "val_criteria_loss",
    "val_evidence_loss",
)

# The main per-epoch curves: what a person opens a trial's metrics to see.
CURVE_METRICS: tuple[str, ...] = (
    *LOSS_METRICS,
    *(f"val_criteria_{name}" for name in CRITERIA_SUMMARY),
    *(f"val_evidence_{name}" for name in EVIDENCE_SUMMARY),
    *(f"val_joint_{name}" for name in JOINT_SUMMARY),
)

# MLflow's UI (3.17) draws a run's metric charts in sections named by the part of the key before
# its last "/": first the named sections in alphabetical order, then one "Model metrics" section
# with every key without a "/". SPEC 1a fixes names without a "/" for the main curves, and they
# stay the metrics' names (for study.metric, the reports, MLflow searches); so that a trial's
# metrics open on its curves anyway, each epoch logs them a second time as
# `learning_curves/<name>`, a section that sorts before the others. The trivial baselines (step
# 0, a bar chart each) go to sections of their own, `trivial_baselines/<baseline>`, after it.
CURVES_GROUP = "learning_curves"
BASELINES_GROUP = "trivial_baselines"


def curve_copies(metrics: dict[str, float], optimised: str) -> dict[str, float]:
    """The `learning_curves/` copies of an epoch's main curves, and of the study's metric
    (`study.metric`) when that is another one (a per-symptom score)."""
    shown = {*CURVE_METRICS, optimised}
    return {f"{CURVES_GROUP}/{key}": value for key, value in metrics.items() if key in shown}


def undefined_symptoms(flat: Mapping[str, float | None], prefix: str = "") -> list[str]:
    """The symptoms that no post of the evaluated split shows (`<prefix>criteria_support_<S>`
    is 0): undefined, and left out of every macro average."""
    return [s for s in SYMPTOMS if not flat.get(f"{prefix}criteria_support_{s}")]


def baseline_metric(baseline: str, metric: str) -> str:
    """The MLflow key of a trivial baseline's score, e.g. trivial_baselines/prevalence/val_loss."""
    return f"{BASELINES_GROUP}/{baseline}/{metric}"
