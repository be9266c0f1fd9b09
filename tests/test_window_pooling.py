"""Window pooling without a length bias (issue 25, item 5): mean and attention pool a post's
windows into a vector whose level does not depend on how many windows the post has; max does
(bench/window_pooling.py measures it on MiniLM)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from leanhpo.config import Config
from leanhpo.metric_names import SYMPTOMS
from leanhpo.models.pooling import WINDOW_POOLINGS, WindowPool
from leanhpo.training.features import Windowing, collate, encode_posts
from leanhpo.training.setup import build_network

LENGTH_FREE = ("mean", "attention")
SIZE = 32
UNITS = 400  # units per window count: enough that the means below are steady
# A feature's spread is 1 below: max drifts by 0.56 at 2 windows, 1.4 at 8; a freshly
# initialised attention by at most 0.03 (its random scorer favours some windows a little).
DRIFT_TOLERANCE = 0.1


def drift(pool: WindowPool, n_windows: int, seed: int) -> float:
    """Mean over units and features of (pooled vector - the unit's mean window vector), for
    UNITS units of `n_windows` windows drawn independently from one distribution: whatever
    the pooling adds because a unit has more windows, since the content does not change."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(UNITS * n_windows, SIZE, generator=generator)
    owner = torch.arange(UNITS).repeat_interleave(n_windows)
    with torch.no_grad():
        pooled = pool(values, owner)
        mean_window = WindowPool("mean", SIZE)(values, owner)
    return float((pooled - mean_window).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", LENGTH_FREE)
def test_a_length_free_pooling_does_not_drift_with_the_number_of_windows(kind, seed):
    torch.manual_seed(seed)
    pool = WindowPool(kind, SIZE)  # attention as freshly initialised, as a trial starts
    for n_windows in (1, 2, 4, 8, 16):
        assert abs(drift(pool, n_windows, seed)) < DRIFT_TOLERANCE, n_windows


def test_max_drifts_upward_with_the_number_of_windows():
    """The length bias the others avoid: the elementwise max of more windows is larger."""
    pool = WindowPool("max", SIZE)
    drifts = [drift(pool, n_windows, seed=0) for n_windows in (1, 2, 4, 8, 16)]
    assert drifts[0] == 0.0
    assert all(later > earlier + DRIFT_TOLERANCE for earlier, later in itertools.pairwise(drifts))


@pytest.mark.parametrize("kind", WINDOW_POOLINGS)
def test_pooled_vector_against_the_windows_elementwise(kind):
    """max is at or above every window; mean and attention (weights that sum to 1) lie within
    the windows' range, feature by feature, so they never leave the windows' scale."""
    torch.manual_seed(0)
    pool = WindowPool(kind, SIZE)
    counts = torch.tensor([1, 2, 3, 7, 12])
    owner = torch.arange(len(counts)).repeat_interleave(counts)
    values = torch.randn(len(owner), SIZE) * 3
    with torch.no_grad():
        pooled = pool(values, owner)
    for unit in range(len(counts)):
        own = values[owner == unit]
        if kind == "max":
            assert torch.equal(pooled[unit], own.max(0).values)
        assert (pooled[unit] >= own.min(0).values - 1e-5).all()
        assert (pooled[unit] <= own.max(0).values + 1e-5).all()


@pytest.mark.parametrize("kind", WINDOW_POOLINGS)
def test_a_post_of_copies_of_one_window_reads_as_that_window(kind):
    """The tiny BERT end to end: a post that is one window, and posts that are 2 or 5 copies
    of it, get the same criteria logits (same content, only more windows of it)."""
    config = Config.from_dict(
        {
            "model": {
                "id": "tiny", "max_length": 64, "long_posts": "windows", "window_stride": 16,
                "window_pooling": kind,
            },
            "train": {"device": "cpu"},
        }
    )  # fmt: skip
    network = build_network(config, seed=0)
    assert network.model.window_pool.kind == kind  # the config reaches the model
    network.model.eval()
    post = {
        "post_id": "p",
        "text": "I have felt empty and hopeless every single day for months.",
        "labels": [0] * len(SYMPTOMS),
        "evidence": [[] for _ in SYMPTOMS],
    }
    windowing = Windowing(64, "windows", stride=16, max_windows=8)
    window = encode_posts([post], network.tokenizer, "multi_label", windowing).examples[0]
    units = [1, 2, 5]
    examples = [
        dataclasses.replace(window, unit=unit)
        for unit, copies in enumerate(units)
        for _ in range(copies)
    ]
    batch = collate(examples, network.pad_token_id)
    with torch.no_grad():
        logits = network.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            span_mask=batch["span_mask"],
            window_owner=batch["window_owner"],
        )["criteria_logits"]
    assert logits.shape[0] == len(units)
    for row in range(1, len(units)):
        torch.testing.assert_close(logits[row], logits[0], rtol=1e-5, atol=1e-5)


def test_a_study_that_ran_on_max_is_told_how_to_continue():
    """The default changed from max to mean: the refusal names the value that continues it."""
    from leanhpo.workflow.guard import Change, rerun_refusal

    change = {"model.window_pooling": Change("max", "mean", {"run_trial"}, {0})}
    message = rerun_refusal("demo", change, False, 3)
    assert message is not None and "earlier default of model.window_pooling" in message
    assert "set model.window_pooling: 'max'" in message
