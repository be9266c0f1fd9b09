"""What issue 25's metric changes do to a finished study's reported figures: the study's best
checkpoint scored on validation and test as before them and as now.

    .venv/bin/python bench/evidence_for.py experiments/demo [--out bench/results/evidence_for.json]

None of the changes alters training, and the default study metric (val_criteria_f1_macro)
ranks trials and epochs as before (leaving a symptom out of the macro average is the same
monotone change for every trial), so the study's best checkpoint is the one the code before
them would have selected. It is loaded verified (the study evaluation's own `best_networks`),
run once over validation and once over test (`evaluate`), and scored under:

- before: evidence for all nine symptoms (`model.evidence_for: all`), the null threshold
  calibrated on every validation pair, `max_answer_tokens` 96, and the nine-symptom macro
  averages with `zero_division=0` (a symptom without a positive scores 0);
- now: the study's own settings (by default `present`, the null threshold calibrated for the
  evidence as given, `max_answer_tokens` auto, undefined symptoms left out);

and, to tell the parts apart, three variants between them: each of the two decoding changes
alone (`all` with the resolved `max_answer_tokens`; `present` with 96), and `present` with the
null threshold calibrated on every pair as before (the other target docs/metrics.md weighs).
Prints and writes them all, with the joint metrics and the evidence given for symptoms decided
absent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import benchenv
import numpy as np
from sklearn.metrics import f1_score

from leanhpo.data import load_split
from leanhpo.fsutil import read_json
from leanhpo.study.evaluate import best_networks, pick_best, score_test_split
from leanhpo.training.evaluation import Evaluation

OLD_MAX_ANSWER_TOKENS = 96
SHOWN = (
    "criteria_f1_macro",
    "criteria_defined_symptoms",
    "criteria_ten_label_f1_macro",
    "criteria_ten_label_f1_micro",
    "criteria_ten_label_subset_accuracy",
    "evidence_f1",
    "evidence_exact_match",
    "evidence_null_span_accuracy",
    "evidence_balanced_f1",
    "evidence_null_threshold",
    "joint_accuracy",
    "joint_f1",
    "joint_n_evidence",
    "joint_n_evidence_absent",
)


def scored(
    validation: Evaluation,
    test: Evaluation,
    decision: np.ndarray,
    evidence_for: str,
    calibrated_for: str,
) -> dict[str, dict[str, Any]]:
    """Validation and test figures under `evidence_for`, at the checkpoint's decision
    thresholds, with the null threshold calibrated on validation for the evidence as
    `calibrated_for` gives it."""
    threshold = validation.calibrated_null_threshold(calibrated_for, decision)
    out = {}
    for name, evaluation in (("validation", validation), ("test", test)):
        flat = evaluation.metrics("", threshold, decision, evidence_for)
        out[name] = {k: flat.get(k) for k in SHOWN}
        predicted = evaluation.probabilities >= decision
        # what the report said before: the mean over all nine, a symptom without a positive 0
        out[name]["criteria_f1_macro_over_nine"] = float(
            f1_score(evaluation.labels, predicted, average="macro", zero_division=0)
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench/results/evidence_for.json"))
    args = parser.parse_args()
    study_dir, data_dir = args.study_dir, args.study_dir / "data"
    reports = [read_json(p) for p in sorted(study_dir.glob("trial_*/report.json"))]
    best = pick_best(reports)
    log = logging.getLogger("bench")
    entry, network, config, _, decision = min(
        best_networks(best, study_dir, data_dir, log), key=lambda n: n.entry["epoch"]
    )
    train = load_split(data_dir, "train")
    splits = {name: load_split(data_dir, name) for name in ("validation", "test")}
    resolved, now = config.model.max_answer_tokens, config.model.evidence_for
    variants = {  # name: (max_answer_tokens, evidence_for, null threshold calibrated for)
        "before": (OLD_MAX_ANSWER_TOKENS, "all", "all"),
        "all, max_answer_tokens resolved": (resolved, "all", "all"),
        "present, max_answer_tokens 96": (OLD_MAX_ANSWER_TOKENS, "present", "present"),
        "present, calibrated on all pairs": (resolved, "present", "all"),
        "now": (resolved, now, now),
    }
    results: dict[str, Any] = {}
    passes_by_length: dict[Any, list[Evaluation]] = {}
    for variant, (max_answer_tokens, evidence_for, calibrated_for) in variants.items():
        if max_answer_tokens not in passes_by_length:
            model = dataclasses.replace(config.model, max_answer_tokens=max_answer_tokens)
            variant_config = dataclasses.replace(config, model=model)
            passes_by_length[max_answer_tokens] = [
                score_test_split(network, variant_config, splits[n], train) for n in splits
            ]
        results[variant] = {
            "max_answer_tokens": max_answer_tokens,
            "evidence_for": evidence_for,
            "null_threshold_calibrated_for": calibrated_for,
            **scored(*passes_by_length[max_answer_tokens], decision, evidence_for, calibrated_for),
        }
    report = {
        "environment": benchenv.environment(),
        "study": benchenv.relative_path(study_dir),
        "best_trial_slot": best["slot"],
        "checkpoint": entry["id"],
        "posts": {name: len(posts) for name, posts in splits.items()},
        "results": results,
        "generated_at": datetime.now(UTC).isoformat(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for number, variant in enumerate(variants, start=1):
        print(f"({number}) {variant}")
    for name in ("validation", "test"):
        print(f"{name}: {'metric':34s}" + "".join(f"{f'({n})':>8s}" for n in range(1, 6)))
        for key in (*SHOWN, "criteria_f1_macro_over_nine"):
            values = "".join(f"{_fmt(results[v][name][key]):>8s}" for v in variants)
            print(f"  {key:40s}{values}")
    print(f"written: {args.out}")


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
