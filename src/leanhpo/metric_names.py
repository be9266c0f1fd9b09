"""Names of the metrics the trainer logs per epoch (SPEC 1a).

A leaf module with no imports from the package, so that config validation (which must reject an
unknown `study.metric` before anything runs) and the trainer (which logs them) share one list.
"""

from __future__ import annotations

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
# Logged with every evaluation beside the criteria metrics (`val_criteria_threshold_<S>`): the
# probability at or above which each symptom counts as present (model.decision_threshold, tuned
# on validation with `auto`), so every checkpoint's metric snapshot holds the cuts it was
# scored with. Not maximisable: a threshold is a setting, not a score.
DECISION_THRESHOLD_KEYS: tuple[str, ...] = tuple(f"criteria_threshold_{s}" for s in SYMPTOMS)
EVIDENCE_SUMMARY = ("exact_match", "f1", "char_f1", "null_span_accuracy", "balanced_f1")

# Higher is better for all of these, so each can be the study's optimisation metric.
MAXIMISABLE_METRICS: tuple[str, ...] = (
    *(f"val_criteria_{name}" for name in CRITERIA_SUMMARY),
    *(f"val_criteria_{m}_{s}" for s in SYMPTOMS for m in CRITERIA_PER_SYMPTOM),
    *(f"val_evidence_{name}" for name in EVIDENCE_SUMMARY),
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
