"""train.max_batch_rows: a batch run as micro-batches of whole units, one optimiser step."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

from leanhpo.config import Config, ConfigError, validate_config
from leanhpo.metric_names import SYMPTOMS
from leanhpo.models import IGNORE_INDEX
from leanhpo.training.features import EncodedSplit, Windowing, encode_posts
from leanhpo.training.loop import (
    batch_losses,
    make_loader,
    make_optimizer,
    make_scheduler,
    train_one_epoch,
    training_progress,
)
from leanhpo.training.microbatch import split_batch, unit_runs
from leanhpo.training.setup import Network, build_network

MAX_LENGTH = 64
MAX_WINDOWS = 4
CAP = 3  # rows per pass: below the batch, and below the longest posts' windows
FILLER = "We went to the market on Sunday and bought bread, apples and some cheese. "
EVIDENCE = "I have felt empty and hopeless every single day for months."
DEPRESSED = 0
HEADS = ["start_end_linear", "start_end_mlp", "biaffine", "bio_crf", "sentence_reranker"]
FORMATS = ["multi_label", "binary_pairs"]
CLASS_WEIGHTS = torch.linspace(1.0, 3.0, len(SYMPTOMS))  # not all 1: pos_weight counts


def _post(fillers: int, post_id: str, positive: bool = True) -> dict[str, Any]:
    text = (FILLER * fillers + EVIDENCE + " " + FILLER * 2).strip()
    labels = [0] * len(SYMPTOMS)
    evidence: list[list[list[int]]] = [[] for _ in SYMPTOMS]
    if positive:
        labels[DEPRESSED], labels[3] = 1, 1  # symptom 3 has no located span: excluded
        start = text.index(EVIDENCE)
        evidence[DEPRESSED] = [[start, start + len(EVIDENCE)]]
    return {"post_id": post_id, "text": text, "labels": labels, "evidence": evidence}


# Posts of 1 to MAX_WINDOWS windows; "long" keeps its evidence past the last window (excluded).
POSTS = [_post(6, "a"), _post(0, "short"), _post(3, "c", positive=False), _post(16, "long")]


def _config(input_format: str, evidence_head: str, **train: Any) -> Config:
    return Config.from_dict(
        {
            "model": {
                "id": "tiny",
                "max_length": MAX_LENGTH,
                "long_posts": "windows",
                "window_stride": 16,
                "max_windows": MAX_WINDOWS,
                "input_format": input_format,
                "evidence_head": evidence_head,
                "dropout": 0.0,
            },
            # the loop itself: no cap unless a test sets one (auto is a trial's, trial/memory.py)
            "train": {"device": "cpu", "amp": False, "max_batch_rows": None, **train},
        }
    )


def _network(config: Config, dropout: bool = False) -> tuple[Network, EncodedSplit]:
    network = build_network(config, seed=0)
    if not dropout:  # the tiny BERT's own dropout too, so that gradients are deterministic
        for module in network.model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
            if hasattr(module, "dropout_prob"):  # BERT's sdpa attention dropout
                setattr(module, "dropout_prob", 0.0)  # noqa: B010
    windowing = Windowing(MAX_LENGTH, "windows", 16, MAX_WINDOWS)
    split = encode_posts(POSTS, network.tokenizer, config.model.input_format, windowing)
    return network, split


class GradientRecorder(torch.optim.SGD):
    """An optimiser that changes nothing and keeps the gradients of each step."""

    def __init__(self, params: Any) -> None:
        super().__init__(params, lr=0.0)
        self.steps: list[list[torch.Tensor | None]] = []

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        grads = [p.grad for group in self.param_groups for p in group["params"]]
        self.steps.append([None if grad is None else grad.clone() for grad in grads])


def _forward_rows(network: Network) -> list[tuple[int, int, list[int]]]:
    """Per forward call: (rows, padding beyond its longest row, window_owner)."""
    calls: list[tuple[int, int, list[int]]] = []

    def hook(_module: nn.Module, _args: Any, kwargs: dict[str, Any]) -> None:
        ids, longest = kwargs["input_ids"], int(kwargs["attention_mask"].sum(-1).max())
        calls.append((ids.shape[0], ids.shape[1] - longest, kwargs["window_owner"].tolist()))

    network.model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def _one_batch_gradients(config: Config) -> tuple[list[torch.Tensor | None], dict[str, float]]:
    """The gradients of one batch holding every unit, and the epoch's logged losses."""
    network, split = _network(config)
    optimizer = GradientRecorder(network.model.parameters())
    scheduler = make_scheduler(optimizer, 1, 0.0)
    loader = make_loader(split, len(split.units()), network.pad_token_id, shuffle_seed=0)
    result = train_one_epoch(
        network.model, loader, optimizer, scheduler, config.train, network.device, CLASS_WEIGHTS
    )
    assert result.steps == 1 and len(optimizer.steps) == 1
    return optimizer.steps[0], result.metrics


def test_unit_runs_keep_units_whole_and_a_large_unit_alone():
    owner = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 2, 3, 4])
    runs = unit_runs(owner, 4)
    assert runs == [
        (slice(0, 4), slice(0, 2)),
        (slice(4, 9), slice(2, 3)),  # 5 windows > 4: alone
        (slice(9, 11), slice(3, 5)),
    ]
    with pytest.raises(ValueError, match="together"):
        unit_runs(torch.tensor([0, 1, 0]), 4)


@pytest.mark.parametrize("input_format", FORMATS)
def test_every_forward_holds_at_most_the_cap_except_a_larger_unit(input_format):
    config = _config(input_format, "sentence_reranker", max_batch_rows=CAP)
    network, split = _network(config)
    calls = _forward_rows(network)
    units = split.units()
    batch_size = len(units) // 2 + 1
    loader = make_loader(split, batch_size, network.pad_token_id, shuffle_seed=0)
    optimizer = GradientRecorder(network.model.parameters())
    steps: list[int] = []
    scheduler = make_scheduler(optimizer, 2, 0.0)
    result = train_one_epoch(
        network.model,
        loader,
        optimizer,
        scheduler,
        config.train,
        network.device,
        CLASS_WEIGHTS,
        on_step=steps.append,
    )
    assert result.steps == len(loader) == len(optimizer.steps) == 2 and steps == [1, 2]
    assert len(calls) > len(loader)  # the batches were split
    assert sum(rows for rows, _, _ in calls) == len(split.examples)
    assert sum(max(owner) + 1 for _, _, owner in calls) == len(units)  # every unit, once
    longest = {len(unit) for unit in units}
    for rows, padding, owner in calls:
        assert owner == sorted(owner) and owner[0] == 0  # renumbered within the micro-batch
        assert rows <= CAP or set(owner) == {0}, "only a single unit may exceed the cap"
        assert padding == 0  # padded to its own longest row, not the batch's
    assert any(rows > CAP for rows, _, _ in calls) and max(longest) > CAP


def _assert_same_gradients(input_format: str, evidence_head: str, **train: Any) -> None:
    """One batch of every unit, whole and with the cap: equal gradients and logged losses."""
    train["max_grad_norm"] = 1e9  # no clipping: the raw gradients are compared
    whole, whole_losses = _one_batch_gradients(_config(input_format, evidence_head, **train))
    config = _config(input_format, evidence_head, max_batch_rows=CAP, **train)
    parts, part_losses = _one_batch_gradients(config)
    compared = 0
    for full, micro in zip(whole, parts, strict=True):
        assert (full is None) == (micro is None)
        if full is not None:
            torch.testing.assert_close(micro, full, atol=1e-5, rtol=1e-5)
            compared += int(full.abs().sum() > 0)
    assert compared > 0
    for key, value in whole_losses.items():
        assert part_losses[key] == pytest.approx(value, abs=1e-6, rel=1e-6)


@pytest.mark.parametrize("input_format", FORMATS)
@pytest.mark.parametrize("evidence_head", HEADS)
def test_micro_batch_evidence_gradients_equal_the_whole_batchs(evidence_head, input_format):
    _assert_same_gradients(input_format, evidence_head, lambda_criteria=0.0, lambda_evidence=1.0)


@pytest.mark.parametrize("input_format", FORMATS)
def test_micro_batch_criteria_gradients_equal_the_whole_batchs(input_format):
    """Alone (a wrong share would show), with class weights, focal and label smoothing; the
    sum of both terms then follows by linearity."""
    criteria_only = {"lambda_criteria": 1.0, "lambda_evidence": 0.0}
    _assert_same_gradients(
        input_format, "start_end_linear", loss="hybrid", label_smoothing=0.1, **criteria_only
    )


@pytest.mark.parametrize("input_format", FORMATS)
@pytest.mark.parametrize("evidence_head", HEADS)
def test_evidence_shares_follow_each_heads_denominator(evidence_head, input_format):
    """The shares are not the units' shares (which would make the test above pass by luck)."""
    config = _config(input_format, evidence_head)
    network, split = _network(config)
    batch = next(iter(make_loader(split, len(split.units()), network.pad_token_id, 0)))
    assert int((batch["start_positions"] == IGNORE_INDEX).sum()) > 0  # excluded pairs too
    parts = split_batch(batch, CAP, network.model.evidence_loss_denominator)
    shares = [part.shares for part in parts if part.shares is not None]
    assert len(shares) == len(parts) > 2
    assert sum(criteria for criteria, _ in shares) == pytest.approx(1.0)
    assert sum(evidence for _, evidence in shares) == pytest.approx(1.0)
    assert any(abs(criteria - evidence) > 1e-3 for criteria, evidence in shares)
    with torch.no_grad():
        _, _, whole_criteria, whole_evidence = batch_losses(
            network.model, batch, config.train, CLASS_WEIGHTS
        )
        criteria = evidence = 0.0
        for part, (criteria_share, evidence_share) in zip(parts, shares, strict=True):
            _, _, part_criteria, part_evidence = batch_losses(
                network.model, part.batch, config.train, CLASS_WEIGHTS
            )
            criteria += criteria_share * float(part_criteria)
            evidence += evidence_share * float(part_evidence)
    assert criteria == pytest.approx(float(whole_criteria), rel=1e-5)
    assert evidence == pytest.approx(float(whole_evidence), rel=1e-5)


def _train_epoch_as_before(
    network: Network, loader: Any, config: Config, optimizer: Any, scheduler: Any
) -> None:
    """train_one_epoch as it was before micro-batches, as the reference for bitwise identity."""
    network.model.train()
    for batch in loader:
        done = training_progress(scheduler, len(loader), config.train.epochs)
        _, total, _, _ = batch_losses(network.model, batch, config.train, CLASS_WEIGHTS, done)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(network.model.parameters(), config.train.max_grad_norm)
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("input_format", FORMATS)
def test_no_cap_or_a_cap_above_every_batch_trains_exactly_as_before(input_format):
    """With dropout on (same seed, same draws) and AdamW: bitwise equal parameters, one
    forward per batch."""
    config = _config(input_format, "biaffine", loss="adaptive_focal", epochs=2)
    results = []
    for run in ("reference", None, 10**6, "largest batch"):
        network, split = _network(config, dropout=True)
        loader = make_loader(split, 2, network.pad_token_id, shuffle_seed=0)
        optimizer = make_optimizer(network.model, config.train)
        scheduler = make_scheduler(optimizer, 2 * len(loader), config.train.warmup_ratio)
        calls = _forward_rows(network)
        if run == "reference":
            _train_epoch_as_before(network, loader, config, optimizer, scheduler)
        else:
            cap = run
            if run == "largest batch":  # from a twin loader: iterating moves its generator
                twin = make_loader(split, 2, network.pad_token_id, shuffle_seed=0)
                cap = max(len(batch["input_ids"]) for batch in twin)
            train = replace(config.train, max_batch_rows=cap)
            train_one_epoch(
                network.model, loader, optimizer, scheduler, train, network.device, CLASS_WEIGHTS
            )
        assert len(calls) == len(loader)
        results.append([p.detach().clone() for p in network.model.parameters()])
    for index, other in enumerate(results[1:]):
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True)), index


@pytest.mark.parametrize("value", [None, 1, 256, "auto"])
def test_max_batch_rows_accepts_auto_null_and_positive_integers(value):
    assert Config.from_dict({"train": {"max_batch_rows": value}}).train.max_batch_rows == value
    assert validate_config({})["train"]["max_batch_rows"] == "auto"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (0, "is not 'auto' or a whole number >= 1 or null"),
        (-3, "-3 is not"),
        (2.5, "2.5 is not"),
        ("many", "'many' is not"),
    ],
)
def test_max_batch_rows_refuses_zero_and_non_integers(value, reason):
    with pytest.raises(ConfigError) as info:
        validate_config({"train": {"max_batch_rows": value}})
    assert "config key 'train.max_batch_rows'" in str(info.value) and reason in str(info.value)
