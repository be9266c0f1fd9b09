"""A trial's memory before training: rows per pass (`train.max_batch_rows`, `auto` resolved from
the memory the job has), the preflight over the seeded order's passes, and the guard that
watches training (leanhpo.memory). The trial report and log get the figures.

The order of a trial job: build the network, resume, then `plan_memory` (it measures a row's cost
on the real model), then the epochs. A resumed trial keeps the rows it resolved first unless
less memory is free now: the same passes give the same float sums and dropout draws as an
uninterrupted run.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from leanhpo.config import Config
from leanhpo.logs import event
from leanhpo.memory.attempts import AttemptLog
from leanhpo.memory.budget import MemoryBudget, MemoryTooSmallError, RowCost, memory_fixes
from leanhpo.memory.guard import MemoryGuard
from leanhpo.memory.limits import MemoryReading, MemoryWatch, cuda_reading
from leanhpo.storage.preflight import human
from leanhpo.training.batch_plan import BatchPlan, plan_batches
from leanhpo.training.features import EncodedSplit
from leanhpo.training.setup import Network, Optimisation
from leanhpo.trial.row_cost import row_cost

# AdamW keeps two moments per trained parameter, allocated at the first step.
ADAM_MOMENTS = 2


def reserve_bytes(network: Network, optimisation: Optimisation) -> int:
    """What training allocates beside the passes that the row cost does not hold: AdamW's
    moments, before the first step (a resumed optimizer holds them already)."""
    if optimisation.optimizer.state:
        return 0
    params = network.model.parameters()
    return ADAM_MOMENTS * sum(p.numel() * p.element_size() for p in params if p.requires_grad)


def device_reading(network: Network, watch: MemoryWatch) -> MemoryReading:
    device = network.device
    if device.type == "cuda":
        return cuda_reading(
            device.index if device.index is not None else torch.cuda.current_device()
        )
    return watch.read()


def resolve_rows(
    configured: int | str | None, budget: MemoryBudget, kept: int | None
) -> int | None:
    """`train.max_batch_rows` as a number (or None: no cap). `auto` from the budget, never more
    than what this trial resolved before (`kept`)."""
    if configured != "auto":
        return configured if isinstance(configured, int) else None
    rows = budget.auto_rows()
    return min(rows, kept) if kept else rows


def trained_config(config: Config, rows: int | None) -> Config:
    """The config the epoch loop trains with: `auto` replaced by its rows."""
    return replace(config, train=replace(config.train, max_batch_rows=rows))


def fixes_for(config: Config, largest_post_rows: int) -> list[str]:
    settings = {
        "max_batch_rows": config.train.max_batch_rows,
        "max_windows": config.model.max_windows,
        "max_length": config.model.max_length,
        "model_id": config.model.id,
    }
    return memory_fixes(settings, largest_post_rows)


def plan_memory(
    network: Network,
    optimisation: Optimisation,
    config: Config,
    split: EncodedSplit,
    seed: int,
    start_epoch: int,
    trial_dir: Path,
    record: AttemptLog,
    log: logging.Logger,
) -> tuple[int | None, MemoryGuard]:
    """Rows per pass and the guard, attached to the encoder; raises MemoryTooSmallError (exit
    73) when not even the longest post fits, OutOfMemoryStop when the cap (a number, or null)
    lets the order build a pass that does not."""
    watch = MemoryWatch.discover()
    reading = device_reading(network, watch)
    # The reading before the probe: what the probe's passes leave to the allocator is reused by
    # the training passes, whose overhead and rows the row cost already counts.
    cost = row_cost(trial_dir.parent, network, optimisation, config, split, reading)
    budget = MemoryBudget(reading, reserve_bytes(network, optimisation), cost)
    kept = (record.data.get("plan") or {}).get("rows_per_pass")
    rows = resolve_rows(config.train.max_batch_rows, budget, kept)
    epochs = range(start_epoch + 1, config.train.epochs + 1)
    plan = plan_batches(split, config.train.batch_size, seed, epochs, rows)
    fixes = fixes_for(config, plan.largest_unit.rows)
    summary = _summary(config, rows, budget, plan)
    record.set_plan(summary)
    event(log, _describe(config, rows, budget, plan), kind="memory_plan", **summary)
    unit = plan.largest_unit
    if unit.rows and not budget.fits(unit.rows, unit.width):
        figures = budget.figures(unit.rows, unit.width)
        reason = (
            f"the longest post ({unit.rows} windows of up to {unit.width} tokens, met at epoch "
            f"{unit.epoch}, step {unit.step}) needs {human(figures['needed_bytes'])} in one pass, "
            f"more than the {human(budget.reading.limit)} limit allows"
        )
        raise MemoryTooSmallError({"reason": reason, **figures, "fixes": fixes})
    guard = MemoryGuard(budget, watch, record, rows, fixes)
    guard.attach(network.model, network.model.encoder, optimisation.optimizer)
    largest = plan.largest_pass
    if largest.rows:
        guard.start_epoch(largest.epoch)
        try:
            guard.before_pass(largest.step, largest.rows, largest.width)  # the preflight
        except BaseException:
            guard.detach()
            raise
    return rows, guard


def _summary(
    config: Config, rows: int | None, budget: MemoryBudget, plan: BatchPlan
) -> dict[str, Any]:
    return {
        "max_batch_rows": config.train.max_batch_rows,
        "rows_per_pass": rows,
        **budget.cost.to_dict(),
        "reserve_bytes": budget.reserve,
        "limit_bytes": budget.reading.limit,
        "used_bytes_at_start": budget.reading.used,
        "limit_source": budget.reading.source,
        "largest_pass_bytes": budget.cost.pass_bytes(
            plan.largest_pass.rows, plan.largest_pass.width
        ),
        **plan.to_dict(),
    }


def _describe(config: Config, rows: int | None, budget: MemoryBudget, plan: BatchPlan) -> str:
    reading, cost = budget.reading, budget.cost
    cap = "no cap" if rows is None else f"{rows} rows per pass"
    batch = plan.largest_batch
    return (
        f"memory: train.max_batch_rows {config.train.max_batch_rows} -> {cap}; "
        f"{human(cost.per_row)} per row of {cost.width} tokens ({cost.method}); "
        f"{human(reading.headroom)} free of {human(reading.limit)} ({reading.source}); "
        f"largest batch {batch.rows} rows (epoch {batch.epoch}, step {batch.step}), largest "
        f"pass {plan.largest_pass.rows} rows, longest post {plan.largest_unit.rows} windows"
    )


def replay_config(
    network: Network,
    optimisation: Optimisation,
    config: Config,
    split: EncodedSplit,
    rows_per_pass: int | None,
) -> Config:
    """The config a replay (the trial retrained in memory: checkpointing off) trains with:
    `auto` as the trial resolved it (its report's memory.rows_per_pass: the same passes, the
    same result), else resolved here like a trial's, without a guard or a record."""
    if config.train.max_batch_rows != "auto":
        return config
    if rows_per_pass is not None:
        return trained_config(config, rows_per_pass)
    watch = MemoryWatch.discover()
    reading = device_reading(network, watch)
    cost: RowCost = row_cost(None, network, optimisation, config, split, reading)
    budget = MemoryBudget(reading, reserve_bytes(network, optimisation), cost)
    return trained_config(config, budget.auto_rows())
