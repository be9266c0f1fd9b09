"""One evaluation pass over a split, the per-pair evidence it yields, and the null and decision
thresholds a trial resolves from a validation pass. No file I/O, no tracking, no Optuna."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

from leanhpo.config import ModelConfig, TrainConfig
from leanhpo.metric_names import DECISION_THRESHOLD_KEYS, SYMPTOMS
from leanhpo.models import MultiTaskModel
from leanhpo.training.answer_length import answer_tokens
from leanhpo.training.calibrate import calibrate_null_threshold, tune_decision_thresholds
from leanhpo.training.decode import char_span
from leanhpo.training.features import EncodedSplit
from leanhpo.training.joint import joint_metrics
from leanhpo.training.loop import autocast, batch_losses, make_loader, to_device
from leanhpo.training.metrics import (
    DEFAULT_THRESHOLD,
    EvidenceExample,
    criteria_metrics,
    evidence_metrics,
    threshold_vector,
)


@dataclass
class Evaluation:
    losses: dict[str, float]
    probabilities: np.ndarray  # [n_posts, 9]
    labels: np.ndarray  # [n_posts, 9]
    candidates: list[EvidenceExample]  # every pair with its BEST span (no null threshold)
    margins: list[float]  # per pair: null score - best span score (inf: no span possible)
    pair_posts: np.ndarray | None = None  # per pair: its post's row in probabilities/labels

    def decided_pairs(self, decision_thresholds: float | np.ndarray) -> np.ndarray:
        """[n_pairs] bool: whether each pair's symptom is decided present (the pairs are
        post-major, symptom-minor, as `evidence_pairs` builds them)."""
        decided = self.probabilities >= threshold_vector(decision_thresholds)
        return np.asarray(decided.reshape(-1))

    def gated_margins(
        self, evidence_for: str, decision_thresholds: float | np.ndarray
    ) -> list[float]:
        """The null margins under model.evidence_for: with `present`, a pair decided absent gets
        an infinite margin, so it is null under every null threshold."""
        if evidence_for == "all":
            return list(self.margins)
        if evidence_for != "present":
            raise ValueError(f"model.evidence_for must be present or all, not {evidence_for!r}")
        decided = self.decided_pairs(decision_thresholds)
        return [m if d else math.inf for m, d in zip(self.margins, decided, strict=True)]

    def evidence(
        self,
        null_threshold: float,
        evidence_for: str = "all",
        decision_thresholds: float | np.ndarray = DEFAULT_THRESHOLD,
    ) -> list[EvidenceExample]:
        """The pairs as decoded under `null_threshold` (null where the margin exceeds it) and
        model.evidence_for (`present`: null wherever the symptom is decided absent at
        `decision_thresholds`; `all`, the default here, the evidence head's own decision)."""
        margins = self.gated_margins(evidence_for, decision_thresholds)
        return [
            replace(pair, pred_span=None) if margin > null_threshold else pair
            for pair, margin in zip(self.candidates, margins, strict=True)
        ]

    def calibrated_null_threshold(
        self, evidence_for: str = "all", decision_thresholds: float | np.ndarray = DEFAULT_THRESHOLD
    ) -> float:
        """The null threshold that maximises balanced_f1 of the evidence as it is given: with
        `present`, over every pair, those decided absent counting as null (docs/metrics.md)."""
        margins = self.gated_margins(evidence_for, decision_thresholds)
        return calibrate_null_threshold(self.candidates, margins)

    def tuned_decision_thresholds(self) -> np.ndarray:
        return tune_decision_thresholds(self.labels, self.probabilities)

    def metrics(
        self,
        prefix: str,
        null_threshold: float,
        decision_thresholds: float | np.ndarray = DEFAULT_THRESHOLD,
        evidence_for: str = "all",
    ) -> dict[str, float | None]:
        """Flat metrics with `prefix` (e.g. 'val_'); None where a value is undefined.

        Symptoms are decided at `decision_thresholds` (one for all, or one per symptom),
        reported as `<prefix>criteria_threshold_<S>`; evidence is decoded under
        `null_threshold` (reported as `<prefix>evidence_null_threshold`) and `evidence_for`,
        and the `<prefix>joint_*` metrics score each decision with its evidence.
        """
        decision = threshold_vector(decision_thresholds)
        flat: dict[str, float | None] = {f"{prefix}{k}": v for k, v in self.losses.items()}
        for key, value in criteria_metrics(self.labels, self.probabilities, decision).items():
            flat[f"{prefix}criteria_{key}"] = value
        for key, value in zip(DECISION_THRESHOLD_KEYS, decision, strict=True):
            flat[f"{prefix}{key}"] = float(value)
        given = self.evidence(null_threshold, evidence_for, decision)
        for key, value in evidence_metrics(given).items():
            flat[f"{prefix}evidence_{key}"] = value
        flat[f"{prefix}evidence_null_threshold"] = null_threshold
        for key, value in joint_metrics(given, self.decided_pairs(decision)).items():
            flat[f"{prefix}joint_{key}"] = value
        return flat


def resolve_null_threshold(
    model_cfg: ModelConfig,
    validation: Evaluation,
    decision_thresholds: float | np.ndarray = DEFAULT_THRESHOLD,
) -> float:
    """`model.null_threshold`, or with `auto` the one calibrated on this validation pass for
    the evidence as model.evidence_for gives it (with `present`: the pairs decided present at
    `decision_thresholds`, the others being null)."""
    if model_cfg.null_threshold == "auto":
        return validation.calibrated_null_threshold(model_cfg.evidence_for, decision_thresholds)
    return float(model_cfg.null_threshold)


def resolve_decision_thresholds(model_cfg: ModelConfig, validation: Evaluation) -> np.ndarray:
    """Per symptom: `model.decision_threshold`, or with `auto` the cut that maximises the
    symptom's F1 on this validation pass."""
    if model_cfg.decision_threshold == "auto":
        return validation.tuned_decision_thresholds()
    return threshold_vector(float(model_cfg.decision_threshold))


@torch.no_grad()
def evaluate(
    model: MultiTaskModel,
    split: EncodedSplit,
    model_cfg: ModelConfig,
    train: TrainConfig,
    device: torch.device,
    pad_token_id: int,
    class_weights: torch.Tensor | None = None,
    progress: str | None = "eval",
) -> Evaluation:
    """One pass: criteria probabilities, losses and each pair's best span with its null margin
    (the null threshold is applied afterwards, so it can be calibrated without a second pass).
    `progress` names the batch bar on stderr; None shows none."""
    model.eval()
    longest_answer = answer_tokens(model_cfg)  # resolved from the training split (auto)
    n_posts = len(split.posts)
    probabilities = np.zeros((n_posts, len(SYMPTOMS)), dtype=np.float64)
    predicted: dict[tuple[int, int], tuple[tuple[int, int] | None, float]] = {}
    sums = {"loss": 0.0, "criteria_loss": 0.0, "evidence_loss": 0.0}
    batches = 0
    loader = make_loader(split, train.eval_batch_size, pad_token_id, shuffle_seed=None)
    cursor = 0
    bar = tqdm(loader, desc=progress, leave=False, mininterval=5.0, disable=progress is None)
    for batch in bar:
        rows = split.examples[cursor : cursor + len(batch["input_ids"])]  # windows
        cursor += len(rows)
        owners = batch["window_owner"].tolist()
        batch = to_device(batch, device)
        with autocast(device, train.amp):
            outputs, total, crit, evid = batch_losses(model, batch, train, class_weights)
        batches += 1
        for key, value in zip(sums, (total, crit, evid), strict=True):
            sums[key] += float(value)
        probs = torch.sigmoid(outputs["criteria_logits"]).cpu().numpy()  # per unit
        candidates = model.evidence_candidates(outputs, batch, longest_answer)
        for row, example in enumerate(rows):
            for out, symptom in enumerate(example.symptom_indices):
                pair = (example.post_index, symptom)
                probabilities[pair] = probs[owners[row], out]
                span, margin = candidates[row][out]
                # A unit's evidence is its most confident window's: the smallest null margin
                # (a span seen by two overlapping windows is one prediction).
                if pair not in predicted or margin < predicted[pair][1]:
                    predicted[pair] = (char_span(example.offsets, span), margin)
    labels = np.array([p["labels"] for p in split.posts], dtype=np.int64).reshape(n_posts, -1)
    pairs, margins = evidence_pairs(split, predicted)
    losses = {k: v / max(batches, 1) for k, v in sums.items()}
    pair_posts = np.repeat(np.arange(n_posts), len(SYMPTOMS))  # evidence_pairs: post by post
    return Evaluation(losses, probabilities, labels, pairs, margins, pair_posts)


def evidence_pairs(
    split: EncodedSplit, predicted: dict[tuple[int, int], tuple[tuple[int, int] | None, float]]
) -> tuple[list[EvidenceExample], list[float]]:
    """Every (post, symptom) pair of the split with its predicted span and null margin (a pair
    missing from `predicted` is null); pairs whose evidence lies outside the window are
    marked excluded."""
    reached = {
        (ex.post_index, symptom)
        for ex in split.examples
        for out, symptom in enumerate(ex.symptom_indices)
        if ex.start_positions[out] >= 0
    }  # a positive pair some window can learn (its gold span, or null beside it elsewhere)
    excluded = {
        (ex.post_index, symptom)
        for ex in split.examples
        for out, symptom in enumerate(ex.symptom_indices)
        if ex.labels[out] and (ex.post_index, symptom) not in reached
    }
    examples, margins = [], []
    for post_index, post in enumerate(split.posts):
        for symptom in range(len(SYMPTOMS)):
            gold = (
                tuple(tuple(span) for span in post["evidence"][symptom])
                if post["labels"][symptom]
                else ()
            )
            span, margin = predicted.get((post_index, symptom), (None, float("inf")))
            examples.append(
                EvidenceExample(
                    text=post["text"],
                    gold_spans=gold,
                    pred_span=span,
                    excluded=(post_index, symptom) in excluded,
                )
            )
            margins.append(margin)
    return examples, margins
