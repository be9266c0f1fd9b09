"""Rows per forward/backward pass from the memory a job may use, and the two memory stops.

A training pass's peak grows linearly with its rows: every row of a long post is a full window
(`model.max_length` tokens) and keeps its activations until the backward pass. MiniLM at 256
tokens costs about 120 MB a row on the CPU (docs/benchmarks.md), so the 300-row batch that length
grouping builds from eight long posts needs about 36 GB.

- `train.max_batch_rows: auto`: rows = (headroom - overhead - reserve) * USE_FRACTION / bytes per
  row, where headroom is what the tightest limit leaves free once the model is built, overhead
  what a pass holds besides its rows (the gradients above all, measured with the row cost) and
  reserve what training allocates at its first step (AdamW's moments).
- Too small for one post: the largest post's windows alone (a post is never split: its windows
  are pooled into one prediction) do not fit under the limit. No trial can run: exit 73, like the
  disk preflight, with the figures and the fixes.
- Out of memory: a pass that would not fit (a fixed cap or none, or a guard that saw memory near
  the limit). That is the trial's own setting, so the trial is recorded as failed (reason
  `out_of_memory`, the figures) and the study goes on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from leanhpo.exit_codes import ResourceStop
from leanhpo.memory.limits import MemoryReading
from leanhpo.storage.preflight import human

# auto fills half of what is free with one pass's activations: the rest absorbs what the
# estimate does not see (allocator slack, the validation pass, other processes growing).
USE_FRACTION = 0.5
# The guard stops a pass that would leave less than this free under the limit.
STOP_MARGIN_FRACTION = 0.03
MIN_STOP_MARGIN = 64 << 20
OUT_OF_MEMORY = "out_of_memory"


@dataclass(frozen=True)
class RowCost:
    """Bytes one more row adds to a training pass's peak, measured at `width` tokens a row, and
    the peak of a pass without rows above the memory in use before any pass (`overhead`: the
    gradients, and what a first pass allocates once)."""

    per_row: int
    width: int
    method: str  # how it was found (docs/operations.md): measured peak RSS, CUDA peak, estimate
    overhead: int = 0

    def pass_bytes(self, rows: int, width: int | None = None) -> int:
        """A pass of `rows` rows of `width` tokens (the widest row: a pass is padded to it).
        Linear in the width, which overstates narrower rows (attention is quadratic)."""
        return math.ceil(rows * self.per_row * (width or self.width) / self.width)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bytes_per_row": self.per_row,
            "row_width": self.width,
            "method": self.method,
            "overhead_bytes": self.overhead,
        }


def stop_margin(limit: int) -> int:
    return max(MIN_STOP_MARGIN, int(limit * STOP_MARGIN_FRACTION))


@dataclass(frozen=True)
class MemoryBudget:
    """What one trial may spend on a pass: the reading once the model was built (before any
    pass), and what training allocates beside the passes that the row cost does not hold
    (`reserve`: AdamW's moments, before the first step)."""

    reading: MemoryReading
    reserve: int
    cost: RowCost

    def needed(self, rows: int, width: int | None = None) -> int:
        """Memory in use (of the limit) at the peak of such a pass."""
        fixed = self.reading.used + self.cost.overhead + self.reserve
        return fixed + self.cost.pass_bytes(rows, width)

    def fits(self, rows: int, width: int | None = None) -> bool:
        limit = self.reading.limit
        return self.needed(rows, width) <= limit - stop_margin(limit)

    def auto_rows(self) -> int:
        """Rows a pass may hold under `auto` (at least 1: a post larger than that runs alone)."""
        spare = (self.reading.headroom - self.cost.overhead - self.reserve) * USE_FRACTION
        return max(1, int(spare // max(1, self.cost.per_row)))

    def figures(self, rows: int, width: int | None = None) -> dict[str, Any]:
        return {
            **self.cost.to_dict(),
            "rows": rows,
            "needed_bytes": self.needed(rows, width),
            "used_bytes": self.reading.used,
            "reserve_bytes": self.reserve,
            "limit_bytes": self.reading.limit,
            "available_bytes": self.reading.headroom,
            "limit_source": self.reading.source,
        }


def _yaml(value: Any) -> str:
    return "null" if value is None else str(value)


def memory_fixes(settings: dict[str, Any], largest_post_rows: int) -> list[str]:
    """The config keys and resources that lower the need or raise the limit. `settings`:
    max_batch_rows, max_windows, max_length, model_id."""
    fixes = []
    if settings["max_batch_rows"] != "auto":
        fixes.append(
            f"train.max_batch_rows: auto (now {_yaml(settings['max_batch_rows'])}): rows per pass from "
            "the memory the job has; or a smaller number"
        )
    fixes += [
        f"lower model.max_windows (now {settings['max_windows']}; the longest post has "
        f"{largest_post_rows} windows): later text is counted as excluded",
        f"lower model.max_length (now {settings['max_length']} tokens a window)",
        f"a smaller model (model.id now {settings['model_id']!r})",
        "more memory: a larger machine or cgroup; on a cluster raise resources.mem_mb "
        "(SLURM --mem)",
    ]
    return fixes


class MemoryTooSmallError(ResourceStop):
    """Not even the largest post fits in one pass: no trial of this config can train here."""

    kind = "memory_too_small"

    def render(self) -> str:
        p = self.payload
        lines = [
            f"leanhpo: not enough memory to train: {p['reason']}",
            f"  memory: {human(p['limit_bytes'])} limit ({p['limit_source']}), "
            f"{human(p['used_bytes'])} in use, {human(p['available_bytes'])} available",
            f"  one pass: {human(p['bytes_per_row'])} per row of {p['row_width']} tokens "
            f"({p['method']}); the longest post is {p['rows']} rows: "
            f"{human(p['needed_bytes'] - p['used_bytes'])} more, with "
            f"{human(p['overhead_bytes'] + p['reserve_bytes'])} for gradients and optimizer "
            "state",
            "  to fix, then rerun (nothing was trained or written):",
            *(f"    - {fix}" for fix in p["fixes"]),
        ]
        return "\n".join(lines)


class OutOfMemoryStop(RuntimeError):
    """A pass would not fit (or memory came near the limit): the trial fails for memory, before
    the kernel's OOM killer ends the process, and the study goes on."""

    def __init__(self, message: str, figures: dict[str, Any]) -> None:
        super().__init__(message)
        self.figures = figures

    def failure(self) -> dict[str, Any]:
        """The trial's `failure` record (state.json, report, Optuna, MLflow)."""
        return {"reason": OUT_OF_MEMORY, "message": str(self), "memory": self.figures}
