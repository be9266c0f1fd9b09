"""Which checkpoints of one trial to keep: pure functions, no I/O.

The store deletes what ``plan_retention`` says; keeping the decision pure lets property
tests check the retention invariants over thousands of save sequences in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Record = tuple[int, float | None]


@dataclass(frozen=True)
class RetentionPolicy:
    """Per-trial retention knobs (SPEC section 5); defaults match ``config.yaml``."""

    keep_last_n: int = 1
    keep_best_k: int = 1
    keep_best_k_max: int = 2
    # Kept epochs outside RetentionPlan.full lose their optimizer state (CheckpointStore.strip).
    weights_only: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.weights_only, bool):
            raise ValueError(
                f"retention.weights_only must be true or false, got {self.weights_only!r}"
            )
        for name in ("keep_last_n", "keep_best_k", "keep_best_k_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"retention.{name} must be an integer, got {value!r}")
        if self.keep_last_n < 0:
            raise ValueError(f"retention.keep_last_n must be >= 0, got {self.keep_last_n}")
        if self.keep_best_k < 1:
            raise ValueError(
                f"retention.keep_best_k must be >= 1 (a trial must keep its best checkpoint), "
                f"got {self.keep_best_k}"
            )
        if self.keep_best_k_max < self.keep_best_k:
            raise ValueError(
                f"retention.keep_best_k_max ({self.keep_best_k_max}) must be >= "
                f"retention.keep_best_k ({self.keep_best_k})"
            )


@dataclass(frozen=True)
class RetentionPlan:
    """Epoch sets; ``keep`` and ``delete`` partition the epochs given to the planner.

    ``full`` (a subset of ``keep``) holds the epochs that may still resume the trial; every
    other kept epoch will only ever be evaluated or exported, and can lose its optimizer state.
    """

    keep: frozenset[int]
    delete: frozenset[int]
    co_best: frozenset[int]
    best: frozenset[int]
    full: frozenset[int] = frozenset()


def plan_retention(
    records: Sequence[Record], policy: RetentionPolicy, final: bool = False
) -> RetentionPlan:
    """Split the trial's existing checkpoints into keep and delete; the metric is maximised.

    ``records`` holds one ``(epoch, metric)`` pair per checkpoint on disk. A metric of
    None or NaN is unranked: it never enters ``best`` or ``co_best``.

    * ``co_best``: every epoch whose metric equals the maximum (exact float equality).
    * ``best``: the top ``keep_best_k`` by metric, ties broken by the earlier epoch;
      then epochs tied with the k-th value are added while ``best`` holds fewer than
      ``keep_best_k_max``; then all of ``co_best``, even beyond ``keep_best_k_max``
      (SPEC: ties for best are all kept).
    * During the trial (``final=False``): ``keep`` = ``best`` plus the newest
      ``keep_last_n`` epochs. With ``keep_last_n=0`` a resume restarts from the newest best
      epoch and retrains the rest (deterministically, with the same metrics), which is the
      disk-saving trade the user asked for. Only when no epoch has a ranked metric is the
      newest kept anyway, so a resume point always remains.
    * ``full`` during the trial: the newest ``max(1, keep_last_n)`` kept epochs, the resume
      points; a best epoch older than them will never resume.
    * At the end (``final=True``): ``keep`` = ``best``, and ``full`` is empty: a finished
      trial never resumes. When no epoch has a ranked metric ``best`` is empty and the newest
      epoch is kept instead, so that a planner never deletes every checkpoint on its own; the
      caller may delete it explicitly.
    * ``delete``: every other epoch.
    """
    epochs = [epoch for epoch, _ in records]
    if len(set(epochs)) != len(epochs):
        raise ValueError(f"duplicate epochs in retention records: {sorted(epochs)}")
    if not records:
        empty: frozenset[int] = frozenset()
        return RetentionPlan(empty, empty, empty, empty)
    ranked = _ranked(records)
    co_best = _co_best(ranked)
    best = _best(ranked, policy) | co_best
    newest = max(epochs)
    if final:
        keep = best or frozenset({newest})
        full: frozenset[int] = frozenset()
    else:
        keep = best | _newest(epochs, policy.keep_last_n) | (frozenset() if best else {newest})
        full = _newest(keep, max(1, policy.keep_last_n))
    return RetentionPlan(
        keep=frozenset(keep),
        delete=frozenset(epochs) - keep,
        co_best=co_best,
        best=best,
        full=full,
    )


def _ranked(records: Iterable[Record]) -> list[tuple[int, float]]:
    """Records with a usable metric, best first; ties go to the earlier epoch."""
    usable = [
        (epoch, float(metric))
        for epoch, metric in records
        if metric is not None and not math.isnan(metric)
    ]
    return sorted(usable, key=lambda record: (-record[1], record[0]))


def _co_best(ranked: list[tuple[int, float]]) -> frozenset[int]:
    if not ranked:
        return frozenset()
    top = ranked[0][1]
    return frozenset(epoch for epoch, metric in ranked if metric == top)


def _best(ranked: list[tuple[int, float]], policy: RetentionPolicy) -> frozenset[int]:
    chosen = [epoch for epoch, _ in ranked[: policy.keep_best_k]]
    if len(ranked) > policy.keep_best_k:
        kth_metric = ranked[policy.keep_best_k - 1][1]
        for epoch, metric in ranked[policy.keep_best_k :]:
            if metric != kth_metric or len(chosen) >= policy.keep_best_k_max:
                break
            chosen.append(epoch)
    return frozenset(chosen)


def _newest(epochs: Iterable[int], count: int) -> frozenset[int]:
    return frozenset(sorted(epochs, reverse=True)[:count])
