"""One trial's epoch loop: train -> validate -> save checkpoint -> publish metrics -> prune
(retention) -> ask the pruner whether to stop.

The order is the exactly-once guarantee: an epoch's metrics are published only after its
checkpoint is committed, and a resumed trial first re-publishes the history stored in the
checkpoint (the publisher skips points it already holds), so no epoch is missing or doubled.
Publishing goes through a callback; this module knows the checkpoint store but not MLflow.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leanhpo import __version__
from leanhpo.checkpoints import CheckpointStore, RetentionPolicy
from leanhpo.config import Config
from leanhpo.logs import event
from leanhpo.memory.attempts import AttemptLog
from leanhpo.metric_names import baseline_metric
from leanhpo.models import compatibility_metadata
from leanhpo.study.pressure import StorageGuard
from leanhpo.training.answer_length import resolve_answer_tokens
from leanhpo.training.compute import describe_compute, deterministic_kernels_only
from leanhpo.training.features import EncodedSplit
from leanhpo.training.setup import Network, build_network, build_optimisation, encode
from leanhpo.trial import state as ckpt_state
from leanhpo.trial.checkpointing import (
    apply_retention,
    checkpoint_meta,
    ensure_room,
    final_keep,
    resume,
    save_epoch,
)
from leanhpo.trial.epoch import compute_baseline, train_and_validate
from leanhpo.trial.memory import plan_memory, trained_config

Publisher = Callable[[int, dict[str, float]], None]


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
    # The trial's memory record (memory.json); the job begins and ends its attempt. None: a
    # record of this run only (unit tests).
    memory: AttemptLog | None = None


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
    compute: dict[str, Any] | None = None  # device, precision, determinism (training.compute)
    pruned_at_epoch: int | None = None  # the epoch after which study.pruner stopped the trial
    # Config values resolved from the data at the start (model.max_answer_tokens: auto), as
    # {"model.max_answer_tokens": {"configured": "auto", "resolved": 61}}.
    resolved_settings: dict[str, Any] = field(default_factory=dict)


def run_training(
    spec: TrialSpec,
    train_posts: list[dict[str, Any]],
    val_posts: list[dict[str, Any]],
    publish: Publisher,
    log: logging.Logger,
) -> TrainingOutcome:
    network = build_network(spec.config, spec.seed)
    # What the data decides (model.max_answer_tokens: auto), before anything is decoded; the
    # checkpoints store the resolved config, so every later use decodes as this trial does.
    configured = spec.config.model.max_answer_tokens
    spec.config = config = resolve_answer_tokens(spec.config, network.tokenizer, train_posts)
    resolved = {}
    if configured != config.model.max_answer_tokens:
        resolved["model.max_answer_tokens"] = {
            "configured": configured,
            "resolved": config.model.max_answer_tokens,
        }
        event(
            log,
            f"model.max_answer_tokens auto: {config.model.max_answer_tokens} tokens, the longest "
            "gold evidence of the training split",
            kind="resolved",
            settings=resolved,
        )
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
    history, ledger, start_epoch, train_seconds = resume(store, network, optimisation, compat, log)
    for past in history:  # exactly-once: the publisher skips what MLflow already holds
        publish(past["epoch"], past["metrics"])
    baseline = compute_baseline(train_posts, val_split, spec.metric)
    publish(
        0,
        {
            baseline_metric(name, k): v
            for name, m in baseline["metrics"].items()
            for k, v in m.items()
        },
    )
    # Killed after a decision to stop (or before it was taken): decide, or read it back, first.
    pruned_at = start_epoch if _stops(spec, start_epoch, config.train.epochs) else None
    remaining = range(start_epoch + 1, config.train.epochs + 1) if pruned_at is None else ()
    trained, guard = config, None
    if remaining:  # the disk preflight, then the memory's, before any epoch
        if store is not None:
            ensure_room(spec, network, optimisation, store, history)
        record = spec.memory or AttemptLog(spec.trial_dir)
        with deterministic_kernels_only():  # the row cost's probe runs training passes too
            rows, guard = plan_memory(
                network, optimisation, config, train_split, spec.seed, start_epoch,
                spec.trial_dir, record, log,
            )  # fmt: skip
        trained = trained_config(config, rows)  # auto resolved; checkpoints keep `auto`
    with guard or contextlib.nullcontext():
        for epoch in remaining:
            event(
                log, f"epoch {epoch}/{config.train.epochs} started", kind="epoch_start", epoch=epoch
            )
            if guard is not None:
                guard.start_epoch(epoch)
            started = time.monotonic()
            with deterministic_kernels_only():
                metrics = train_and_validate(
                    network, optimisation, trained, spec.seed, epoch, train_split, val_split
                )
            train_seconds += time.monotonic() - started
            history.append({"epoch": epoch, "metrics": metrics})
            if store is not None:
                ensure_room(spec, network, optimisation, store, history)
                meta = checkpoint_meta(
                    spec, compat, epoch, optimisation, history, ledger, train_seconds
                )
                if spec.fence is not None:
                    spec.fence()
                info = save_epoch(
                    store, epoch, *ckpt_state.pack(network, optimisation, meta), spec.guard
                )
                ledger.append({**info.to_dict(), "metric": metrics.get(spec.metric)})
            # Visible only now that the epoch's checkpoint is committed (exactly once on resume).
            publish(epoch, metrics)
            apply_retention(store, history, spec, log)
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
    retained = [] if pruned_at is not None else final_keep(store, history, spec)
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
    outcome.resolved_settings = resolved
    return outcome


def _stops(spec: TrialSpec, epoch: int, epochs: int) -> bool:
    """Whether study.pruner stops the trial after `epoch`; never before the first epoch or
    after the last (a trial that trained every epoch is completed)."""
    return spec.stop_after is not None and 0 < epoch < epochs and spec.stop_after(epoch)


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
        compute=describe_compute(
            network.device.type, spec.config.train.amp, spec.config.train.deterministic
        ),
    )
