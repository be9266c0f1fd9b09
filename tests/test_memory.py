"""The pieces of issue 29 on their own: the rows-per-pass arithmetic, the largest-batch finder,
the attempt record's verdict, the cgroup reading and the row-cost probe."""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from leanhpo.config import Config
from leanhpo.memory.attempts import AttemptLog
from leanhpo.memory.budget import MemoryBudget, RowCost, stop_margin
from leanhpo.memory.limits import MemoryReading, find_cgroups
from leanhpo.training.batch_plan import plan_batches
from leanhpo.training.features import encode_posts
from leanhpo.training.loop import epoch_shuffle_seed, make_loader, train_one_epoch
from leanhpo.training.microbatch import split_batch
from leanhpo.training.setup import build_network, build_optimisation, windowing
from leanhpo.trial.memory import resolve_rows
from leanhpo.trial.row_cost import measure

MIB = 1 << 20
GIB = 1 << 30


def _budget(limit: int, used: int, per_row: int, overhead: int = 0, reserve: int = 0):
    reading = MemoryReading(limit, used, "test")
    return MemoryBudget(reading, reserve, RowCost(per_row, 256, "test", overhead))


def test_auto_fills_half_of_what_is_free_after_the_fixed_costs():
    budget = _budget(24 * GIB, 4 * GIB, 120 * MIB, overhead=200 * MIB, reserve=180 * MIB)
    spare = 20 * GIB - 380 * MIB
    assert budget.auto_rows() == int(spare * 0.5 // (120 * MIB)) == 83
    assert budget.needed(83) == 4 * GIB + 380 * MIB + 83 * 120 * MIB
    assert budget.fits(83) and budget.fits(160) and not budget.fits(170)
    assert budget.needed(10, width=128) == 4 * GIB + 380 * MIB + 5 * 120 * MIB  # linear in width
    # nothing free: still one post per pass (a post larger than the cap runs alone)
    assert _budget(GIB, GIB, MIB).auto_rows() == 1


def test_the_guard_keeps_a_margin_below_the_limit():
    assert stop_margin(GIB) == 64 * MIB  # the floor
    assert stop_margin(24 * GIB) == int(24 * GIB * 0.03)
    budget = _budget(GIB, 0, MIB)
    assert budget.fits(GIB // MIB - 64) and not budget.fits(GIB // MIB - 63)


@pytest.mark.parametrize(
    ("configured", "kept", "expected"),
    [("auto", None, 83), ("auto", 40, 40), ("auto", 500, 83), (7, 40, 7), (None, 40, None)],
)
def test_a_number_overrides_auto_null_is_no_cap_and_a_resumed_trial_keeps_its_rows(
    configured, kept, expected
):
    budget = _budget(24 * GIB, 4 * GIB, 120 * MIB, overhead=200 * MIB, reserve=180 * MIB)
    assert resolve_rows(configured, budget, kept) == expected


@pytest.fixture(scope="module")
def long_split(sample_posts):
    config = Config.from_dict({"model": {"id": "tiny", "max_length": 64, "window_stride": 16}})
    network = build_network(config, 0)
    posts = sample_posts["train"]
    return network, encode_posts(posts, network.tokenizer, "multi_label", windowing(config))


@pytest.mark.parametrize(("batch_size", "seed", "cap"), [(8, 7, None), (4, 11, 12), (8, 3, 5)])
def test_the_plan_is_the_seeded_order_and_its_passes(long_split, batch_size, seed, cap):
    """The finder's largest batch, pass and post are those the training loader builds and
    split_batch runs, epoch by epoch."""
    network, split = long_split
    plan = plan_batches(split, batch_size, seed, range(1, 4), cap)
    batches, passes, posts = [], [], []
    for epoch in range(1, 4):
        loader = make_loader(split, batch_size, 0, epoch_shuffle_seed(seed, epoch))
        for step, batch in enumerate(loader, start=1):
            batches.append((batch["input_ids"].numel(), epoch, step))
            sizes = torch.bincount(batch["window_owner"]).tolist()
            posts += [(size, epoch, step) for size in sizes]
            for part in split_batch(batch, cap, network.model.evidence_loss_denominator):
                passes.append((part.batch["input_ids"].numel(), epoch, step))
    largest = max(batches, key=lambda b: b[0])  # the first of equals, as the plan keeps
    assert (plan.largest_batch.size, plan.largest_batch.epoch, plan.largest_batch.step) == largest
    assert plan.largest_pass.size == max(p[0] for p in passes)
    assert plan.largest_unit.rows == max(p[0] for p in posts) == max(map(len, split.units()))
    if cap is not None:
        assert plan.largest_pass.rows <= max(cap, plan.largest_unit.rows)


def _killed(epoch: int, step: int, kills: int | None, share: float = 0.2) -> dict:
    return {
        "ended": None,
        "epoch": epoch,
        "step": step,
        "rows": 60,
        "oom_kills": ["/cg", kills] if kills is not None else None,
        "peak_share": share,
        "peak_used_bytes": 1,
        "limit_bytes": GIB,
        "limit_source": "test",
    }


@pytest.mark.parametrize(
    ("attempts", "now", "failed"),
    [
        ([_killed(1, 1, 0), _killed(1, 1, 1)], 2, True),  # the counter rose during each
        ([_killed(1, 1, 0), _killed(1, 1, 1)], 1, False),  # not during the last one
        ([_killed(1, 1, 0), _killed(1, 2, 1)], 2, False),  # killed at two different batches
        ([_killed(2, 3, 5), _killed(2, 3, 5)], 5, False),  # kill -9 by a person: no evidence
        ([_killed(2, 3, None, 0.95), _killed(2, 3, None, 0.93)], None, True),  # near the limit
        ([_killed(1, 1, 0), {**_killed(1, 1, 1), "ended": "KeyboardInterrupt"}], 2, False),
        ([_killed(1, 1, 0)], 1, False),  # once is not yet a pattern
        ([_killed(0, 0, None, 0.95), _killed(0, 0, None, 0.95)], None, False),  # before a batch
    ],
)
def test_two_kills_at_one_batch_with_evidence_of_memory_fail_the_trial(
    tmp_path, attempts, now, failed
):
    (tmp_path / "memory.json").write_text(json.dumps({"plan": None, "attempts": attempts}))
    verdict = AttemptLog(tmp_path).killed_for_memory(("/cg", now) if now is not None else None)
    assert (verdict is not None) == failed
    if verdict:
        assert (verdict["epoch"], verdict["step"], verdict["rows"]) == (
            attempts[-1]["epoch"],
            attempts[-1]["step"],
            60,
        )


def test_a_process_in_a_memory_cgroup_reads_its_limit(memory_cgroup):
    group = memory_cgroup(700 * MIB)
    script = (
        "import json; from leanhpo.memory.limits import MemoryWatch; w = MemoryWatch.discover(); "
        "r = w.read(); print(json.dumps([r.limit, r.used, r.source, w.oom_kills()]))"
    )
    result = group.run([sys.executable, "-c", script], timeout=60)
    assert result.returncode == 0, result.stderr
    limit, used, source, kills = json.loads(result.stdout)
    assert limit == 700 * MIB and 0 < used < limit
    assert source == f"{group.version} {group.path}"
    assert kills == [str(group.path), 0]


def test_this_process_finds_its_own_memory_cgroup_then_its_ancestors():
    groups = find_cgroups()
    if not groups:
        pytest.skip("no memory cgroup controller is mounted")
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    fields = [line.split(":", 2) for line in lines]
    own = next(f[2] for f in fields if "memory" in f[1].split(",") or f[1] == "")
    assert str(groups[0].path).endswith(own.rstrip("/"))
    for child, parent in itertools.pairwise(groups):
        assert parent.path == child.path.parent


def test_the_probe_leaves_training_bitwise_as_it_was(sample_posts):
    """Measuring a row's cost runs passes on the model: no step, gradients dropped and the RNG
    restored, so the epoch that follows is the one that would have run without it."""
    config = Config.from_dict(
        {
            "model": {"id": "tiny", "max_length": 64, "window_stride": 16, "dropout": 0.2},
            "train": {"device": "cpu", "max_batch_rows": None, "loss": "bce"},
        }
    )
    results = []
    for probe in (False, True):
        network = build_network(config, 5)
        split = encode_posts(
            sample_posts["train"][:16], network.tokenizer, "multi_label", windowing(config)
        )
        optimisation = build_optimisation(network, config, split)
        if probe:
            widest = max(split.examples, key=lambda e: len(e.input_ids))
            reading = MemoryReading(64 * GIB, 0, "test")
            cost = measure(network, optimisation, config, split, widest, reading)
            assert cost.per_row > 0 and cost.width == len(widest.input_ids)
            assert all(p.grad is None for p in network.model.parameters())
        loader = make_loader(split, 4, network.pad_token_id, 1)
        train = replace(config.train, max_batch_rows=None)
        train_one_epoch(
            network.model,
            loader,
            optimisation.optimizer,
            optimisation.scheduler,
            train,
            network.device,
        )
        results.append([p.detach().clone() for p in network.model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_a_cached_row_cost_is_not_measured_again(tmp_path, sample_posts, monkeypatch):
    from leanhpo.trial import row_cost

    config = Config.from_dict(
        {"model": {"id": "tiny", "max_length": 64, "window_stride": 16}, "train": {"loss": "bce"}}
    )
    network = build_network(config, 0)
    split = encode_posts(
        sample_posts["train"][:8], network.tokenizer, "multi_label", windowing(config)
    )
    optimisation = build_optimisation(network, config, split)
    reading = MemoryReading(64 * GIB, 0, "test")
    first = row_cost.row_cost(tmp_path, network, optimisation, config, split, reading)
    monkeypatch.setattr(row_cost, "measure", lambda *a: pytest.fail("measured again"))
    assert row_cost.row_cost(tmp_path, network, optimisation, config, split, reading) == first
    other = replace(config, model=replace(config.model, evidence_head="biaffine"))
    network = build_network(other, 0)  # other heads: another figure
    monkeypatch.undo()
    row_cost.row_cost(tmp_path, network, optimisation, other, split, reading)
    assert len(json.loads((tmp_path / row_cost.COST_FILE).read_text())) == 2


def test_the_study_reports_trial_table_shows_peak_memory_and_the_failure_reason():
    from leanhpo.report_items import trials_table
    from leanhpo.report_page import _trials_section

    reports = [
        {"slot": 0, "status": "completed", "memory": {"peak_rss_bytes": 1536 * MIB}},
        {"slot": 1, "status": "failed", "failure": {"reason": "out_of_memory"}, "memory": None},
    ]
    header, rows = trials_table(reports)
    table = [dict(zip(header, row, strict=True)) for row in rows]
    assert [(r["peak_memory_mb"], r["failure"]) for r in table] == [
        (1536.0, None),
        (None, "out_of_memory"),
    ]
    html = _trials_section(reports)
    assert "<th>peak memory</th>" in html and "<td>1.6 GB</td>" in html
    assert "failed (out_of_memory)" in html


def test_the_guard_names_a_pass_by_its_optimizer_step_as_the_plan_does(sample_posts, tmp_path):
    """Each training pass is recorded at the step the batch plan gives it (1, 2, 3, ...): the
    guard counted each step twice (the pass, then the optimizer's hook), so a kill at the
    fifth batch was reported at step 9, where the plan and the user look for step 5."""
    from leanhpo.memory.guard import MemoryGuard
    from leanhpo.memory.limits import MemoryWatch

    config = Config.from_dict(
        {
            "model": {"id": "tiny", "max_length": 64, "window_stride": 16},
            "train": {"device": "cpu", "max_batch_rows": None, "loss": "bce"},
        }
    )
    network = build_network(config, 5)
    split = encode_posts(
        sample_posts["train"][:12], network.tokenizer, "multi_label", windowing(config)
    )
    optimisation = build_optimisation(network, config, split)
    record = AttemptLog(tmp_path)
    positions = []
    record.at = lambda epoch, step, rows, write=False: positions.append((epoch, step))
    guard = MemoryGuard(_budget(64 * GIB, 0, MIB), MemoryWatch.discover(), record, None, [])
    guard.attach(network.model, network.model.encoder, optimisation.optimizer)
    guard.start_epoch(1)
    loader = make_loader(split, 4, network.pad_token_id, 1)
    with guard:
        train_one_epoch(
            network.model,
            loader,
            optimisation.optimizer,
            optimisation.scheduler,
            replace(config.train, max_batch_rows=None),
            network.device,
        )
    steps = [step for epoch, step in positions if step]
    assert steps == list(range(1, len(loader) + 1)), steps
