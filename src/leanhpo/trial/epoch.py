"""One epoch of a trial: training in the order fixed by (seed, epoch), augmentation included,
then the validation pass with the trial's thresholds; and the trivial baselines. The same code
serves a trial, a resumed trial, a replay (checkpointing off) and the benchmarks."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from leanhpo.config import Config
from leanhpo.logs import event
from leanhpo.training.answer_length import resolve_answer_tokens
from leanhpo.training.evaluation import (
    evaluate,
    evidence_pairs,
    resolve_decision_thresholds,
    resolve_null_threshold,
)
from leanhpo.training.features import EncodedSplit, train_prevalence
from leanhpo.training.joint import joint_metrics
from leanhpo.training.loop import EpochResult, epoch_shuffle_seed, make_loader, train_one_epoch
from leanhpo.training.metrics import (
    DEFAULT_THRESHOLD,
    baseline_criteria_metrics,
    evidence_metrics,
)
from leanhpo.training.setup import Network, Optimisation, build_network, build_optimisation, encode
from leanhpo.trial.memory import replay_config

LOG = logging.getLogger("leanhpo.trial")


def _finite(metrics: dict[str, float | None]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def compute_baseline(
    train_posts: list[dict[str, Any]], val: EncodedSplit, metric: str
) -> dict[str, Any]:
    """Trivial predictors on the validation split, and the strongest one's optimisation value."""
    labels = np.array([p["labels"] for p in val.posts], dtype=np.int64)
    prevalence = np.array(train_prevalence(train_posts))
    criteria = baseline_criteria_metrics(prevalence, labels)
    all_null, _ = evidence_pairs(val, {})  # the model's pairs and exclusions, all predicted null
    # What each criteria baseline decides, pair by pair (post-major, as evidence_pairs): its
    # joint scores, with no evidence at all, are the floor of the joint metrics.
    decided = {
        "prevalence": np.broadcast_to(prevalence >= DEFAULT_THRESHOLD, labels.shape),
        "all_positive": np.ones(labels.shape, dtype=bool),
    }
    baselines: dict[str, dict[str, float]] = {
        name: _finite(
            {
                **{f"val_criteria_{k}": v for k, v in values.items()},
                **{
                    f"val_joint_{k}": v
                    for k, v in joint_metrics(all_null, decided[name].reshape(-1)).items()
                },
            }
        )
        for name, values in criteria.items()
    }
    baselines["always_null"] = _finite(
        {f"val_evidence_{k}": v for k, v in evidence_metrics(all_null).items()}
    )
    scored = {name: values[metric] for name, values in baselines.items() if metric in values}
    best_name = max(scored, key=lambda n: scored[n]) if scored else None
    return {
        "metrics": baselines,
        "best": best_name,
        "optimization_metric_value": scored.get(best_name) if best_name else None,
    }


def train_and_validate(
    network: Network,
    optimisation: Optimisation,
    config: Config,
    seed: int,
    epoch: int,
    train_split: EncodedSplit,
    val_split: EncodedSplit,
) -> dict[str, float]:
    """A trial's epoch: train it, validate, resolve the null and decision thresholds on that
    validation pass, and return the epoch's finite train_* and val_* metrics. `config` has
    train.max_batch_rows resolved (a number or None: trial/memory.py)."""
    result = train_epoch(network, optimisation, config, seed, epoch, train_split, f"epoch {epoch}")
    evaluation = evaluate(
        network.model,
        val_split,
        config.model,
        config.train,
        network.device,
        network.pad_token_id,
        optimisation.class_weights,
    )
    # The decisions first: with model.evidence_for present they decide which pairs get
    # evidence, and so the pairs the null threshold is calibrated on.
    decision = resolve_decision_thresholds(config.model, evaluation)
    threshold = resolve_null_threshold(config.model, evaluation, decision)
    flat = evaluation.metrics("val_", threshold, decision, config.model.evidence_for)
    return {**result.metrics, **_finite(flat)}


def replay_training(
    config: Config,
    seed: int,
    train_posts: list[dict[str, Any]],
    until_epoch: int,
    rows_per_pass: int | None = None,
) -> Network:
    """Retrain a trial in memory up to `until_epoch`, exactly as the trial did (with
    train.max_batch_rows auto: at the `rows_per_pass` of its report).

    The final evaluation uses this when the study ran with checkpointing off. The per-epoch
    validation pass is skipped: in eval mode it draws no random numbers, so skipping it does not
    change the training trajectory.
    """
    network = build_network(config, seed)
    config = resolve_answer_tokens(config, network.tokenizer, train_posts)  # as the trial did
    train_split = encode(network, config, train_posts)
    optimisation = build_optimisation(network, config, train_split)
    trained = replay_config(network, optimisation, config, train_split, rows_per_pass)
    for epoch in range(1, until_epoch + 1):
        train_epoch(network, optimisation, trained, seed, epoch, train_split, f"replay {epoch}")
    return network


def train_epoch(
    network: Network,
    optimisation: Optimisation,
    config: Config,
    seed: int,
    epoch: int,
    train_split: EncodedSplit,
    progress: str,
) -> EpochResult:
    """One epoch in the order fixed by (seed, epoch), augmentation included: the same in a
    trial, a resumed trial and a replay."""
    split, augmentation = _augmented(network, config, seed, epoch, train_split)
    loader = make_loader(
        split, config.train.batch_size, network.pad_token_id, epoch_shuffle_seed(seed, epoch)
    )
    result = train_one_epoch(
        network.model,
        loader,
        optimisation.optimizer,
        optimisation.scheduler,
        config.train,
        network.device,
        optimisation.class_weights,
        progress,
    )
    result.metrics.update(augmentation)
    return result


def _augmented(
    network: Network, config: Config, seed: int, epoch: int, train_split: EncodedSplit
) -> tuple[EncodedSplit, dict[str, float]]:
    """The epoch's training split with its evidence sentences rewritten (train.augmentation_prob),
    and the epoch's counts as metrics. Only the train split ever reaches this."""
    if config.train.augmentation_prob <= 0:
        return train_split, {}
    from leanhpo.data.augment import augment_split

    methods = config.train.augmentation_methods
    posts, stats = augment_split(
        "train", train_split.posts, config.train.augmentation_prob, methods, seed, epoch
    )
    counts = {
        "train_augmented_posts": float(stats["posts_augmented"]),
        "train_augmented_sentences": float(stats["sentences_rewritten"]),
        "train_augmentation_unchanged": float(stats["sentences_unchanged"]),
        **{f"train_augmented_{method}": float(n) for method, n in stats["by_method"].items()},
    }
    message = f"epoch {epoch}: augmented {stats['sentences_rewritten']} evidence sentences"
    event(LOG, message, kind="augmentation", epoch=epoch, examples=stats["examples"], counts=counts)
    return encode(network, config, posts), counts
