"""The passes the seeded training order will run, known before training: what the memory
preflight checks and what `train.max_batch_rows: auto` must hold.

The order depends only on (seed, epoch) (`loop.epoch_shuffle_seed`), so it is planned with the
training loader itself (`make_loader`: seeded, length-grouped), whose collation here only counts
each unit's windows: the plan is the order, not a copy of its logic. With augmentation each
epoch re-encodes rewritten evidence sentences; the plan uses the split as encoded, which a
rewrite changes by a window at most now and then (the memory guard covers the rest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from leanhpo.training.features import EncodedSplit, Example
from leanhpo.training.loop import epoch_shuffle_seed, make_loader
from leanhpo.training.microbatch import runs_of


@dataclass(frozen=True)
class Pass:
    """One forward/backward pass: its rows, its widest row (a pass is padded to it) and where
    the order first runs it (epoch, step)."""

    rows: int
    width: int
    epoch: int
    step: int

    @property
    def size(self) -> int:
        """Rows times width: what its activations grow with (linearly, at a fixed width)."""
        return self.rows * self.width


@dataclass(frozen=True)
class BatchPlan:
    largest_batch: Pass  # the largest whole batch: one pass with no cap
    largest_pass: Pass  # the largest pass under the cap
    largest_unit: Pass  # the post (or pair) with most windows: no pass can be smaller
    epochs: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            name: vars(getattr(self, name))
            for name in ("largest_batch", "largest_pass", "largest_unit")
        }


def _units(examples: list[Example]) -> list[tuple[int, int]]:
    """(windows, widest window) of each unit of a batch, in order (collate's units)."""
    units: list[tuple[int, int]] = []
    last = None
    for example in examples:
        if not units or example.unit != last:
            units.append((0, 0))
            last = example.unit
        rows, width = units[-1]
        units[-1] = (rows + 1, max(width, len(example.input_ids)))
    return units


def _passes(units: list[tuple[int, int]], max_rows: int | None) -> list[tuple[int, int]]:
    """(rows, width) of each pass `split_batch` makes of a batch of these units."""
    sizes = [rows for rows, _ in units]
    if max_rows is not None and sum(sizes) <= max_rows:
        max_rows = None  # a batch that fits runs whole
    return [
        (rows.stop - rows.start, max(width for _, width in units[members]))
        for rows, members in runs_of(sizes, max_rows)
    ]


def plan_batches(
    split: EncodedSplit,
    batch_size: int,
    seed: int,
    epochs: range,
    max_rows: int | None,
) -> BatchPlan:
    """The largest batch, the largest pass under `max_rows` and the largest unit over the
    training order of `epochs`."""
    empty = Pass(0, 0, 0, 0)
    batch = largest = unit = empty
    for epoch in epochs:
        loader = make_loader(split, batch_size, 0, epoch_shuffle_seed(seed, epoch), _units)
        for step, units in enumerate(loader, start=1):
            whole = Pass(sum(r for r, _ in units), max(w for _, w in units), epoch, step)
            batch = whole if whole.size > batch.size else batch
            for rows, width in _passes(units, max_rows):
                largest = max(largest, Pass(rows, width, epoch, step), key=lambda p: p.size)
            for rows, width in units:
                unit = max(unit, Pass(rows, width, epoch, step), key=lambda p: p.size)
    return BatchPlan(batch, largest, unit, tuple(epochs))
