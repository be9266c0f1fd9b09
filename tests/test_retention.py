"""Retention planning: worked examples plus property tests of the SPEC invariants.

The property tests replay a whole trial: after every save the plan is applied, so
deleted epochs leave the record list exactly as they leave the disk.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leanhpo.checkpoints import RetentionPlan, RetentionPolicy, plan_retention

NAN = float("nan")
# A small value set forces ties; None and NaN are the unranked metrics.
METRIC_VALUES = [None, NAN, 0.1, 0.5, 0.9, float("-inf")]


def ranked(metric: float | None) -> bool:
    return metric is not None and not math.isnan(metric)


policies = st.integers(1, 3).flatmap(
    lambda k: st.builds(
        RetentionPolicy,
        keep_last_n=st.integers(0, 3),
        keep_best_k=st.just(k),
        keep_best_k_max=st.integers(k, k + 2),
    )
)
metric_sequences = st.lists(st.sampled_from(METRIC_VALUES), min_size=1, max_size=15)


def check_step(
    plan: RetentionPlan, records: list[tuple[int, float | None]], policy: RetentionPolicy
) -> None:
    epochs = {epoch for epoch, _ in records}
    newest = max(epochs)
    assert plan.keep | plan.delete == epochs and not plan.keep & plan.delete
    assert plan.keep  # a resume-capable checkpoint always remains
    if policy.keep_last_n or not plan.best:
        assert newest in plan.keep  # the checkpoint just written survives its own prune
    assert plan.co_best <= plan.best <= plan.keep
    assert len(plan.best - plan.co_best) <= policy.keep_best_k_max
    newest_n = sorted(epochs, reverse=True)[: policy.keep_last_n]
    assert set(newest_n) <= plan.keep
    usable = [(epoch, metric) for epoch, metric in records if ranked(metric)]
    assert all(ranked(dict(records)[epoch]) for epoch in plan.best)
    assert len(plan.best) >= min(policy.keep_best_k, len(usable))
    if usable:
        top = max(metric for _, metric in usable)  # type: ignore[type-var]
        assert plan.co_best == {epoch for epoch, metric in usable if metric == top}
    # The resume points: the newest max(1, keep_last_n) kept epochs, the newest kept among them.
    assert plan.full <= plan.keep and max(plan.keep) in plan.full
    assert plan.full == set(sorted(plan.keep, reverse=True)[: max(1, policy.keep_last_n)])


@settings(max_examples=400, deadline=None)
@given(policy=policies, metrics=metric_sequences)
def test_invariants_hold_after_every_save(
    policy: RetentionPolicy, metrics: list[float | None]
) -> None:
    records: list[tuple[int, float | None]] = []
    deleted: set[int] = set()
    stripped: set[int] = set()
    for epoch, metric in enumerate(metrics):
        records.append((epoch, metric))
        plan = plan_retention(records, policy)
        check_step(plan, records, policy)
        assert not plan.keep & deleted  # a deleted checkpoint never comes back
        deleted |= plan.delete
        # Stripping cannot be undone: an epoch that lost its optimizer state is never again
        # asked to be a resume point.
        assert not plan.full & stripped
        stripped |= plan.keep - plan.full
        records = [record for record in records if record[0] in plan.keep]
        # Every epoch holding the best metric so far is still on disk (co-best, never pruned).
        history = list(enumerate(metrics[: epoch + 1]))
        usable = [(e, m) for e, m in history if ranked(m)]
        if usable:
            top = max(m for _, m in usable)  # type: ignore[type-var]
            assert {e for e, m in usable if m == top} <= {e for e, _ in records}

    final = plan_retention(records, policy, final=True)
    assert final.keep | final.delete == {epoch for epoch, _ in records}
    assert final.full == set()  # a finished trial never resumes
    if any(ranked(metric) for metric in metrics):
        assert final.keep == final.best and final.co_best <= final.keep
        assert len(final.best - final.co_best) <= policy.keep_best_k_max
    else:
        assert final.keep == {len(metrics) - 1}


@settings(max_examples=300, deadline=None)
@given(policy=policies, metrics=metric_sequences)
def test_incremental_pruning_ends_with_the_best_of_the_whole_history(
    policy: RetentionPolicy, metrics: list[float | None]
) -> None:
    """Pruning as we go never loses a checkpoint that hindsight would have kept."""
    records: list[tuple[int, float | None]] = []
    for epoch, metric in enumerate(metrics):
        records.append((epoch, metric))
        keep = plan_retention(records, policy).keep
        records = [record for record in records if record[0] in keep]
    hindsight = plan_retention(list(enumerate(metrics)), policy, final=True)
    assert plan_retention(records, policy, final=True).keep == hindsight.keep


def test_ties_for_best_are_all_kept_beyond_the_cap() -> None:
    records = [(0, 0.9), (1, 0.9), (2, 0.9), (3, 0.5)]
    plan = plan_retention(records, RetentionPolicy(keep_last_n=0, keep_best_k=1, keep_best_k_max=2))
    assert plan.co_best == plan.best == {0, 1, 2}
    assert plan.keep == {0, 1, 2} and plan.delete == {3}  # keep_last_n=0: the best suffice
    final = plan_retention(records, RetentionPolicy(keep_last_n=0), final=True)
    assert final.keep == {0, 1, 2} and final.delete == {3}


def test_ties_with_the_kth_extend_up_to_the_cap_earliest_first() -> None:
    records = [(0, 0.9), (1, 0.8), (2, 0.8), (3, 0.8), (4, 0.1)]
    plan = plan_retention(records, RetentionPolicy(keep_best_k=2, keep_best_k_max=3), final=True)
    assert plan.co_best == {0}
    assert plan.best == plan.keep == {0, 1, 2}
    assert plan.delete == {3, 4}


def test_during_a_trial_the_last_n_and_newest_are_kept() -> None:
    records = [(0, 0.9), (1, 0.1), (2, 0.2), (3, 0.3)]
    plan = plan_retention(records, RetentionPolicy(keep_last_n=2))
    assert plan.keep == {0, 2, 3} and plan.delete == {1}
    plan = plan_retention(records, RetentionPolicy(keep_last_n=0))
    assert plan.keep == {0}  # the best is resume-capable too: keep_last_n=0 saves the space
    plan = plan_retention([(0, None), (1, None)], RetentionPolicy(keep_last_n=0))
    assert plan.keep == {1}  # nothing ranked: the newest stays so that a resume is possible


def test_unranked_metrics_never_count_as_best() -> None:
    plan = plan_retention([(0, None), (1, NAN), (2, 0.1), (3, None)], RetentionPolicy(), final=True)
    assert plan.best == plan.co_best == plan.keep == {2}


def test_final_without_any_ranked_metric_keeps_the_newest() -> None:
    plan = plan_retention([(0, None), (4, NAN)], RetentionPolicy(), final=True)
    assert plan.best == set() and plan.keep == {4} and plan.delete == {0}


def test_empty_and_duplicate_records() -> None:
    assert plan_retention([], RetentionPolicy()) == RetentionPlan(
        frozenset(), frozenset(), frozenset(), frozenset()
    )
    with pytest.raises(ValueError, match="duplicate epochs"):
        plan_retention([(1, 0.1), (1, 0.2)], RetentionPolicy())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keep_last_n": -1}, "keep_last_n must be >= 0"),
        ({"keep_best_k": 0}, "keep_best_k must be >= 1"),
        ({"keep_best_k": 3, "keep_best_k_max": 2}, r"keep_best_k_max \(2\) must be >="),
        ({"keep_best_k": 1.5}, "must be an integer"),
        ({"keep_last_n": True}, "must be an integer"),
    ],
)
def test_impossible_policies_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetentionPolicy(**kwargs)  # type: ignore[arg-type]
