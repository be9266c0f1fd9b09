"""Micro-batches: one training batch run as several forward/backward passes of whole units.

With `model.long_posts: windows` a batch of `train.batch_size` units (posts or pairs) carries all
their windows, and length grouping puts the longest posts together: hundreds of rows, more than
a GPU holds activations for. `train.max_batch_rows` bounds the rows of one pass. The collated
batch is cut, in order, into runs of whole units (a unit's windows are pooled into one criteria
prediction, so they are never split; a unit with more windows than the cap runs alone), each
padded only to its own longest row, with `window_owner` renumbered from 0.

Each part's losses are weighted by its share of what the whole batch's losses average over, so
the accumulated gradients (and the logged losses) are the whole batch's:
- criteria: every criteria loss is a mean over (unit, output) entries;
- evidence: each head's own denominator (`EvidenceHead.loss_denominator`): the (window, output)
  entries with a span target (start/end heads, biaffine), with a sentence target (reranker), or
  the attended tokens of those entries (bio_crf).
Every head's mean splits exactly, so the equivalence holds up to float summation order. What a
split does change: dropout masks are drawn per pass (the same distribution, other draws), and
under bf16 autocast the rounding differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# Collated keys by their leading axis (see features.collate): [W, T] per token of a window,
# [W, ...] per window, [U, ...] per unit. `window_owner` and `sentence_spans` are handled apart.
TOKEN_KEYS = frozenset({"input_ids", "attention_mask", "span_mask", "token_type_ids"})
WINDOW_KEYS = frozenset({"start_positions", "end_positions", "sentence_targets"})
UNIT_KEYS = frozenset({"labels", "symptoms"})
SPECIAL_KEYS = frozenset({"window_owner", "sentence_spans"})


@dataclass(frozen=True)
class MicroBatch:
    """A part of a batch; `shares` (criteria, evidence) weight its losses, None = the whole."""

    batch: dict[str, torch.Tensor]
    shares: tuple[float, float] | None = None


def split_batch(
    batch: dict[str, torch.Tensor],
    max_rows: int | None,
    evidence_denominator: Callable[[dict[str, Any]], int],
) -> list[MicroBatch]:
    """`batch` as micro-batches of at most `max_rows` rows (whole units; a larger unit alone).

    A batch that fits (or no cap) comes back whole and unweighted, so it runs exactly as it
    would without a cap. `evidence_denominator` is `MultiTaskModel.evidence_loss_denominator`.
    """
    if max_rows is None or batch["input_ids"].shape[0] <= max_rows:
        return [MicroBatch(batch)]
    unknown = set(batch) - TOKEN_KEYS - WINDOW_KEYS - UNIT_KEYS - SPECIAL_KEYS
    if unknown:
        raise ValueError(f"cannot split batch keys {sorted(unknown)}: add them to microbatch.py")
    parts = [
        _part(batch, rows, units) for rows, units in unit_runs(batch["window_owner"], max_rows)
    ]
    criteria_total = batch["labels"].numel()
    evidence_total = evidence_denominator(batch)
    return [
        MicroBatch(
            part,
            (
                part["labels"].numel() / criteria_total,
                evidence_denominator(part) / evidence_total if evidence_total else 0.0,
            ),
        )
        for part in parts
    ]


def unit_runs(window_owner: torch.Tensor, max_rows: int) -> list[tuple[slice, slice]]:
    """(rows, units) of each micro-batch: consecutive whole units, filled greedily up to
    `max_rows` rows; a unit with more windows than that is a run of its own."""
    sizes = torch.bincount(window_owner).tolist()
    in_order = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    if not torch.equal(window_owner.cpu(), in_order):
        raise ValueError("window_owner must list each unit's windows together, units in order")
    return runs_of(sizes, max_rows)


def runs_of(sizes: list[int], max_rows: int | None) -> list[tuple[slice, slice]]:
    """(rows, units) of each pass for units of `sizes` windows, in order (`unit_runs` on the
    sizes alone; the memory preflight plans with it). No cap: one pass."""
    runs: list[tuple[slice, slice]] = []
    first_row = first_unit = row = 0
    for unit, size in enumerate(sizes):
        if max_rows is not None and row > first_row and row + size - first_row > max_rows:
            runs.append((slice(first_row, row), slice(first_unit, unit)))
            first_row, first_unit = row, unit
        row += size
    runs.append((slice(first_row, row), slice(first_unit, len(sizes))))
    return runs


def _part(batch: dict[str, torch.Tensor], rows: slice, units: slice) -> dict[str, torch.Tensor]:
    """The rows and units of one micro-batch, padded to its own longest row and sentence list."""
    attended = batch["attention_mask"][rows] != 0
    positions = torch.arange(1, attended.shape[1] + 1, device=attended.device)
    width = int((attended * positions).max())  # padding is on the right (collate)
    spans = batch["sentence_spans"][rows]
    sentences = max(1, int((spans[..., 1] >= spans[..., 0]).sum(-1).max()))
    part = {"sentence_spans": spans[:, :sentences], "window_owner": batch["window_owner"][rows]}
    part["window_owner"] = part["window_owner"] - units.start
    for key, value in batch.items():
        if key in TOKEN_KEYS:
            part[key] = value[rows, :width].contiguous()
        elif key in WINDOW_KEYS:
            part[key] = value[rows]
        elif key in UNIT_KEYS:
            part[key] = value[units]
    return part
