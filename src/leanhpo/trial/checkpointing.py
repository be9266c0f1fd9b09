"""A trial's checkpoints: resume from the newest full one, the metadata stored with each, the
disk preflight, the save, and retention after every save and at the end. The epoch loop
(trial/runner.py) calls these in the order that makes publishing exactly-once."""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Any

from leanhpo.checkpoints import CheckpointStore, RetentionPolicy, plan_retention
from leanhpo.logs import event
from leanhpo.storage.estimate import checkpoint_bytes
from leanhpo.study.pressure import StorageGuard
from leanhpo.study.prune import epoch_values, strip_checkpoint
from leanhpo.training.setup import Network, Optimisation
from leanhpo.trial import state as ckpt_state

if TYPE_CHECKING:
    from leanhpo.trial.runner import TrialSpec


def resume(
    store: CheckpointStore | None,
    network: Network,
    optimisation: Optimisation,
    compat: dict[str, Any],
    log: logging.Logger,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int, float]:
    """Restore the newest full checkpoint into `network` and `optimisation`; return its history,
    ledger, epoch and training seconds (empty and 0 when there is none)."""
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


def checkpoint_meta(
    spec: TrialSpec,
    compat: dict[str, Any],
    epoch: int,
    optimisation: Optimisation,
    history: list[dict[str, Any]],
    ledger: list[dict[str, Any]],
    train_seconds: float,
) -> dict[str, Any]:
    """What every checkpoint stores beside its tensors: enough to resume, audit and load it."""
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


def ensure_room(
    spec: TrialSpec,
    network: Network,
    optimisation: Optimisation,
    store: CheckpointStore,
    history: list[dict[str, Any]],
) -> None:
    """The disk preflight for one more checkpoint of this network (study/pressure.py)."""
    if spec.guard is not None:
        needed = checkpoint_bytes(network.model, optimisation.optimizer)
        spec.guard.ensure_room(needed, store, epoch_values(history, spec.metric))


def save_epoch(
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


def retention_policy(spec: TrialSpec) -> RetentionPolicy:
    """The disk guard's policy (tightened under disk pressure), else the trial's own."""
    return spec.guard.policy if spec.guard is not None else spec.policy


def apply_retention(
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
    policy = retention_policy(spec)
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


def final_keep(
    store: CheckpointStore | None, history: list[dict[str, Any]], spec: TrialSpec
) -> list[int]:
    """The epochs the final retention keeps once the trial has finished."""
    if store is None:
        return []
    values = epoch_values(history, spec.metric)
    records = [(i.epoch, values.get(i.epoch)) for i in store.list()]
    return sorted(plan_retention(records, retention_policy(spec), final=True).keep)
