"""One trial's epoch loop: train -> validate -> save checkpoint -> publish metrics -> prune
(retention) -> ask the pruner whether to stop.

The order is the exactly-once guarantee: an epoch's metrics are published only after its
checkpoint is committed, and a resumed trial first re-publishes the history stored in the
checkpoint (the publisher skips points it already holds), so no epoch is missing or doubled.
Publishing goes through a callback; this module knows the checkpoint store but not MLflow.
"""

from __future__ import annotations

import errno
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leanhpo import __version__
from leanhpo.checkpoints import CheckpointStore, RetentionPolicy, plan_retention
from leanhpo.config import Config
from leanhpo.logs import event
from leanhpo.models import compatibility_metadata
from leanhpo.storage.estimate import checkpoint_bytes
from leanhpo.study.pressure import StorageGuard
from leanhpo.study.prune import epoch_values, strip_checkpoint
from leanhpo.training.features import EncodedSplit, train_prevalence
from leanhpo.training.loop import (
    EpochResult,
    epoch_shuffle_seed,
    evaluate,
    evidence_pairs,
    make_loader,
    resolve_decision_thresholds,
    resolve_null_threshold,
    train_one_epoch,
)
from leanhpo.training.metrics import baseline_criteria_metrics, evidence_metrics
from leanhpo.training.setup import Network, Optimisation, build_network, build_optimisation, encode
from leanhpo.trial import state as ckpt_state

Publisher = Callable[[int, dict[str, float]], None]
LOG = logging.getLogger("leanhpo.trial")


@dataclass
class TrialSpec:
    config: Config  # resolved: the trial's sampled params applied
    params: dict[str, Any]
    seed: int
    metric: str
    trial_dir: Path
    policy: RetentionPolicy
    identity: dict[str, Any]  # slot, uuid, study id: stored in every checkpoint
    guard: StorageGuard | None = None  # disk pressure and preflight; None in unit tests
    # Raises unless this process still owns the slot (study/lease.py); before every save.
    fence: Callable[[], None] | None = None
    # study.pruner: whether to stop after an epoch (asked after every epoch but the last, once
    # its checkpoint is committed and its metrics published; the answer is recorded before it
    # is returned, so a rerun gets the same one). None: never stop.
    stop_after: Callable[[int], bool] | None = None


@dataclass
class TrainingOutcome:
    history: list[dict[str, Any]]
    ledger: list[dict[str, Any]]
    retained: list[int]
    best_epochs: list[int]  # all epochs tied for the best value (co-best)
    best_value: float | None
    baseline: dict[str, Any]
    evidence_window: dict[str, int]
    resumed_from_epoch: int
    train_seconds: float
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    tmp_cleaned: int = 0
    encoder: dict[str, Any] = field(default_factory=dict)
    pruned_at_epoch: int | None = None  # the epoch after which study.pruner stopped the trial


def _finite(metrics: dict[str, float | None]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def compute_baseline(
    train_posts: list[dict[str, Any]], val: EncodedSplit, metric: str
) -> dict[str, Any]:
    """Trivial predictors on the validation split, and the strongest one's optimisation value."""
    labels = np.array([p["labels"] for p in val.posts], dtype=np.int64)
    criteria = baseline_criteria_metrics(np.array(train_prevalence(train_posts)), labels)
    all_null, _ = evidence_pairs(val, {})  # the model's pairs and exclusions, all predicted null
    baselines: dict[str, dict[str, float]] = {
        name: _finite({f"val_criteria_{k}": v for k, v in values.items()})
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


def run_training(
    spec: TrialSpec,
    train_posts: list[dict[str, Any]],
    val_posts: list[dict[str, Any]],
    publish: Publisher,
    log: logging.Logger,
) -> TrainingOutcome:
    config = spec.config
    network = build_network(config, spec.seed)
    train_split, val_split = (
        encode(network, config, train_posts),
        encode(network, config, val_posts),
    )
    optimisation = build_optimisation(network, config, train_split)
    compat = compatibility_metadata(network.model, config.model.id, __version__)
    store = (
        CheckpointStore(spec.trial_dir / "checkpoints", log=log)
        if config.train.checkpointing
        else None
    )
    history, ledger, start_epoch, train_seconds = _resume(store, network, optimisation, compat, log)
    for past in history:  # exactly-once: the publisher skips what MLflow already holds
        publish(past["epoch"], past["metrics"])
    baseline = compute_baseline(train_posts, val_split, spec.metric)
    publish(
        0,
        {
            f"baseline_{name}_{k}": v
            for name, m in baseline["metrics"].items()
            for k, v in m.items()
        },
    )
    # Killed after a decision to stop (or before it was taken): decide, or read it back, first.
    pruned_at = start_epoch if _stops(spec, start_epoch, config.train.epochs) else None
    if store is not None and pruned_at is None and start_epoch < config.train.epochs:
        _ensure_room(spec, network, optimisation, store, history)  # preflight before training
    remaining = range(start_epoch + 1, config.train.epochs + 1) if pruned_at is None else ()
    for epoch in remaining:
        event(log, f"epoch {epoch}/{config.train.epochs} started", kind="epoch_start", epoch=epoch)
        started = time.monotonic()
        metrics = _train_and_validate(
            network, optimisation, config, spec.seed, epoch, train_split, val_split
        )
        train_seconds += time.monotonic() - started
        history.append({"epoch": epoch, "metrics": metrics})
        if store is not None:
            _ensure_room(spec, network, optimisation, store, history)
            meta = _meta(spec, compat, epoch, optimisation, history, ledger, train_seconds)
            if spec.fence is not None:
                spec.fence()
            info = _save(store, epoch, *ckpt_state.pack(network, optimisation, meta), spec.guard)
            ledger.append({**info.to_dict(), "metric": metrics.get(spec.metric)})
        # Visible only now that the epoch's checkpoint is committed (exactly once on resume).
        publish(epoch, metrics)
        _prune(store, history, spec, log)
        event(
            log,
            f"epoch {epoch} done",
            kind="epoch_end",
            epoch=epoch,
            epochs=config.train.epochs,
            metric=spec.metric,
            value=metrics.get(spec.metric),
        )
        if _stops(spec, epoch, config.train.epochs):
            pruned_at = epoch
            break
    if pruned_at is not None:
        event(log, f"pruned after epoch {pruned_at}", kind="pruned", epoch=pruned_at)
    # The final retention (best only, weights only) is the job's, once state.json says the
    # trial finished (study/prune.settle_trial): until then the newest full checkpoint stays.
    retained = [] if pruned_at is not None else _final_keep(store, history, spec)
    outcome = _outcome(
        spec,
        history,
        ledger,
        retained,
        baseline,
        train_split,
        val_split,
        start_epoch,
        train_seconds,
        store,
        network,
    )
    outcome.pruned_at_epoch = pruned_at
    return outcome


def _stops(spec: TrialSpec, epoch: int, epochs: int) -> bool:
    """Whether study.pruner stops the trial after `epoch`; never before the first epoch or
    after the last (a trial that trained every epoch is completed)."""
    return spec.stop_after is not None and 0 < epoch < epochs and spec.stop_after(epoch)


def _train_and_validate(
    network: Network,
    optimisation: Optimisation,
    config: Config,
    seed: int,
    epoch: int,
    train_split: EncodedSplit,
    val_split: EncodedSplit,
) -> dict[str, float]:
    result = _train_epoch(network, optimisation, config, seed, epoch, train_split, f"epoch {epoch}")
    evaluation = evaluate(
        network.model,
        val_split,
        config.model,
        config.train,
        network.device,
        network.pad_token_id,
        optimisation.class_weights,
    )
    threshold = resolve_null_threshold(config.model, evaluation)
    decision = resolve_decision_thresholds(config.model, evaluation)
    return {**result.metrics, **_finite(evaluation.metrics("val_", threshold, decision))}


def _resume(
    store: CheckpointStore | None,
    network: Network,
    optimisation: Optimisation,
    compat: dict[str, Any],
    log: logging.Logger,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int, float]:
    if store is None:
        return [], [], 0, 0.0
    loaded = store.load_latest_valid(resumable_only=True)
    if loaded is None:
        if store.list():  # weights-only checkpoints cannot resume: never a fresh optimizer
            event(
                log,
                "no full checkpoint to resume from: restarting the trial from epoch 1 with the "
                "same parameters and seed (the same metrics, recomputed)",
                logging.WARNING,
                kind="restart",
            )
        return [], [], 0, 0.0
    ckpt_state.check_compatible(loaded, network, compat)
    ckpt_state.restore(loaded, network, optimisation)
    meta = loaded.meta
    ledger = [*meta["ledger"], {**loaded.info.to_dict(), "metric": meta["metric_value"]}]
    event(
        log,
        f"resumed from checkpoint {loaded.info.id}",
        kind="resume",
        epoch=meta["epoch"],
        path=str(loaded.info.path),
    )
    return list(meta["history"]), ledger, int(meta["epoch"]), float(meta["train_seconds"])


def _meta(
    spec: TrialSpec,
    compat: dict[str, Any],
    epoch: int,
    optimisation: Optimisation,
    history: list[dict[str, Any]],
    ledger: list[dict[str, Any]],
    train_seconds: float,
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "global_step": epoch * optimisation.steps_per_epoch,
        "metrics": history[-1]["metrics"],
        "metric_name": spec.metric,
        "metric_value": history[-1]["metrics"].get(spec.metric),
        "history": history,
        "ledger": ledger,
        "train_seconds": train_seconds,
        "config": spec.config.to_dict(),
        "params": spec.params,
        "seed": spec.seed,
        "compat": compat,
        "trial": spec.identity,
    }


def _ensure_room(
    spec: TrialSpec,
    network: Network,
    optimisation: Optimisation,
    store: CheckpointStore,
    history: list[dict[str, Any]],
) -> None:
    if spec.guard is not None:
        needed = checkpoint_bytes(network.model, optimisation.optimizer)
        spec.guard.ensure_room(needed, store, epoch_values(history, spec.metric))


def _save(
    store: CheckpointStore,
    epoch: int,
    groups: dict[str, Any],
    meta: dict[str, Any],
    guard: StorageGuard | None,
) -> Any:
    """Save; a disk that fills up during the write (another process, a bad estimate) becomes
    the same NoSpaceError as the preflight. The store has already removed its temporary folder,
    so nothing half-written remains."""
    try:
        return store.save(epoch, groups, meta)
    except OSError as error:
        if error.errno != errno.ENOSPC or guard is None:
            raise
        raise guard.write_failed(error) from error


def _policy(spec: TrialSpec) -> RetentionPolicy:
    return spec.guard.policy if spec.guard is not None else spec.policy


def _prune(
    store: CheckpointStore | None,
    history: list[dict[str, Any]],
    spec: TrialSpec,
    log: logging.Logger,
) -> None:
    """Apply retention after a save: delete what the plan drops, strip the kept epochs that
    will never resume. A failure here is logged, not raised: pruning must never cost a metric,
    and the next save prunes again."""
    if store is None:
        return
    policy = _policy(spec)
    values = epoch_values(history, spec.metric)
    infos = store.list()
    plan = plan_retention([(i.epoch, values.get(i.epoch)) for i in infos], policy)
    for info in infos:
        try:
            if info.epoch in plan.delete:
                store.delete(info.epoch)
                event(log, f"pruned checkpoint epoch {info.epoch}", kind="prune", epoch=info.epoch)
            elif policy.weights_only and info.resumable and info.epoch not in plan.full:
                strip_checkpoint(store, info.epoch, log)
        except OSError as error:
            event(
                log,
                f"could not prune epoch {info.epoch}: {error}",
                logging.WARNING,
                kind="prune_failed",
            )


def _final_keep(
    store: CheckpointStore | None, history: list[dict[str, Any]], spec: TrialSpec
) -> list[int]:
    if store is None:
        return []
    values = epoch_values(history, spec.metric)
    records = [(i.epoch, values.get(i.epoch)) for i in store.list()]
    return sorted(plan_retention(records, _policy(spec), final=True).keep)


def _outcome(
    spec: TrialSpec,
    history: list[dict[str, Any]],
    ledger: list[dict[str, Any]],
    retained: list[int],
    baseline: dict[str, Any],
    train_split: EncodedSplit,
    val_split: EncodedSplit,
    start_epoch: int,
    train_seconds: float,
    store: CheckpointStore | None,
    network: Network,
) -> TrainingOutcome:
    values = [(h["epoch"], h["metrics"].get(spec.metric)) for h in history]
    ranked = [v for _, v in values if v is not None and math.isfinite(v)]
    best_value = max(ranked) if ranked else None
    best_epochs = [e for e, v in values if best_value is not None and v == best_value]
    window = {f"train_{k}": int(v) for k, v in train_split.stats.items()}
    window.update({f"validation_{k}": int(v) for k, v in val_split.stats.items()})
    return TrainingOutcome(
        history=history,
        ledger=ledger,
        retained=retained,
        best_epochs=best_epochs,
        best_value=best_value,
        baseline=baseline,
        evidence_window=window,
        resumed_from_epoch=start_epoch,
        train_seconds=train_seconds,
        quarantined=list(store.quarantined) if store else [],
        tmp_cleaned=store.cleaned_tmp if store else 0,
        encoder=vars(network.encoder_info),
    )


def replay_training(
    config: Config, seed: int, train_posts: list[dict[str, Any]], until_epoch: int
) -> Network:
    """Retrain a trial in memory up to `until_epoch`, exactly as the trial did.

    The final evaluation uses this when the study ran with checkpointing off. The per-epoch
    validation pass is skipped: in eval mode it draws no random numbers, so skipping it does not
    change the training trajectory.
    """
    network = build_network(config, seed)
    train_split = encode(network, config, train_posts)
    optimisation = build_optimisation(network, config, train_split)
    for epoch in range(1, until_epoch + 1):
        _train_epoch(network, optimisation, config, seed, epoch, train_split, f"replay {epoch}")
    return network


def _train_epoch(
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
