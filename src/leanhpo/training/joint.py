"""The joint metric: the criteria decision and its evidence scored together, per (post,
symptom) pair (issue 25, item 4). Pure numpy, no torch, no I/O.

A pair is right when its decision is right and, for a symptom the post shows, the evidence
given matches a gold sentence exactly (after stripping surrounding whitespace, as
`exact_match`). So a pair the post does not show is right when it is decided absent, whatever
sentence the evidence head may have found; one it shows is right only when it is decided
present *and* the right sentence is given. Pairs whose gold evidence could not be located or
lies outside every window (`excluded`) are skipped, as by every evidence metric.

- `accuracy`: the share of right pairs (the issue's joint metric). Most pairs are absent ones,
  so predicting nothing at all already scores the share of absent pairs (about 0.88 on
  ReDSM5): read it beside that floor (the trivial baselines report it).
- `f1`: the F1 of "present with the right sentence", pooled over pairs: TP = a pair shown,
  decided present and given a matching sentence; FP = any other pair decided present; FN = any
  other pair shown. It ignores the absent pairs that nothing predicted, so predicting nothing
  scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from leanhpo.training.metrics import EvidenceExample, MetricValue, evidence_metrics

JOINT_KEYS = ("accuracy", "f1", "n_pairs", "n_excluded", "n_evidence", "n_evidence_absent")


def pair_outcomes(examples: Sequence[EvidenceExample], decided: np.ndarray) -> np.ndarray:
    """[n_pairs, 4] per pair: right, TP, FP, FN as 0/1 (all 0 for an excluded pair).
    `decided[i]` is whether pair i's symptom was decided present."""
    if len(decided) != len(examples):
        raise ValueError(f"{len(examples)} pairs but {len(decided)} decisions")
    out = np.zeros((len(examples), 4))
    for i, (example, present) in enumerate(zip(examples, np.asarray(decided, bool), strict=True)):
        if example.excluded:
            continue
        shown = bool(example.gold_spans)
        matched = shown and present and evidence_metrics([example])["exact_match"] == 1.0
        out[i] = (
            float(matched or (not shown and not present)),
            float(matched),
            float(present and not matched),
            float(shown and not matched),
        )
    return out


def joint_metrics(
    examples: Sequence[EvidenceExample], decided: np.ndarray
) -> dict[str, MetricValue]:
    """`accuracy` and `f1` (see the module docstring), the pairs scored and excluded, and the
    evidence the pairs were given: `n_evidence` sentences in all, `n_evidence_absent` of them
    for symptoms decided absent (0 under model.evidence_for: present)."""
    outcomes = pair_outcomes(examples, decided)
    scored = np.array([not e.excluded for e in examples], dtype=bool)
    right, tp, fp, fn = outcomes.sum(axis=0)
    given = np.array(
        [e.pred_span is not None and e.pred_span[0] < e.pred_span[1] for e in examples]
    )
    return {
        "accuracy": float(right / scored.sum()) if scored.any() else None,
        # undefined without a pair the posts show, as a symptom's F1 is
        "f1": float(2 * tp / (2 * tp + fp + fn)) if tp + fn > 0 else None,
        "n_pairs": float(scored.sum()),
        "n_excluded": float((~scored).sum()),
        "n_evidence": float(given.sum()),
        "n_evidence_absent": float((given & ~np.asarray(decided, bool)).sum()),
    }
