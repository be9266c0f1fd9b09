"""Long posts read as overlapping windows (issue 14, part 1): targets, pooling, every head."""

from __future__ import annotations

import pytest
import torch

from leanhpo.config import Config
from leanhpo.data import load_split
from leanhpo.metric_names import SYMPTOMS
from leanhpo.models import load_encoder
from leanhpo.models.multitask import NULL_INDEX
from leanhpo.models.pooling import WindowPool
from leanhpo.training.evaluation import evaluate
from leanhpo.training.features import Windowing, collate, encode_posts
from leanhpo.training.loop import make_loader
from leanhpo.training.setup import build_network

MAX_LENGTH = 64
WINDOWS = Windowing(MAX_LENGTH, "windows", stride=16, max_windows=64)
FILLER = "We went to the market on Sunday and bought bread, apples and some cheese. "
EVIDENCE = "I have felt empty and hopeless every single day for months."
SLEEP = 4  # SYMPTOMS index of the symptom the evidence is for


@pytest.fixture(scope="module")
def tokenizer():
    return load_encoder("tiny", seed=0)[1]


def long_post(fillers: int, post_id: str = "long") -> dict:
    """A post whose only evidence sentence comes after `fillers` filler sentences."""
    text = FILLER * fillers + EVIDENCE + " " + FILLER * 2
    start = text.index(EVIDENCE)
    labels = [0] * len(SYMPTOMS)
    labels[SLEEP] = 1
    evidence: list[list[list[int]]] = [[] for _ in SYMPTOMS]
    evidence[SLEEP] = [[start, start + len(EVIDENCE)]]
    return {"post_id": post_id, "text": text.strip(), "labels": labels, "evidence": evidence}


def test_windows_cover_the_post_and_reach_evidence_that_truncation_loses(tokenizer):
    post = long_post(30)
    truncated = encode_posts([post], tokenizer, "multi_label", MAX_LENGTH)
    assert truncated.stats["evidence_pairs_outside_window"] == 1
    assert truncated.examples[0].start_positions[SLEEP] < 0  # excluded, as before

    split = encode_posts([post], tokenizer, "multi_label", WINDOWS)
    windows = split.examples
    assert len(windows) > 5 and {w.unit for w in windows} == {0}
    assert split.stats["evidence_pairs_outside_window"] == 0
    assert split.stats["evidence_pairs_in_window"] == 1
    assert all(len(w.input_ids) <= MAX_LENGTH for w in windows)
    ends = [max(end for _, end in w.offsets) for w in windows]
    assert ends[-1] == len(post["text"])  # the whole post is read
    starts = [min(s for (s, e) in w.offsets if e > s) for w in windows]
    assert all(b < a for a, b in zip(ends, starts[1:], strict=False))  # neighbours overlap
    holding = [w for w in windows if w.start_positions[SLEEP] > 0]
    assert holding, "no window holds the evidence"
    for window in holding:
        first, last = window.start_positions[SLEEP], window.end_positions[SLEEP]
        chars = (window.offsets[first][0], window.offsets[last][1])
        assert post["text"][chars[0] : chars[1]] == EVIDENCE
    # the other windows learn the null span for this positive pair
    assert all(w.start_positions[SLEEP] == NULL_INDEX for w in windows if w not in holding)
    # every sentence candidate lies wholly in its window
    for window in windows:
        for first, last in window.sentence_spans:
            assert window.span_mask[first] and window.span_mask[last]


def test_max_windows_caps_a_post_and_counts_what_it_loses(tokenizer):
    capped = Windowing(MAX_LENGTH, "windows", stride=16, max_windows=2)
    split = encode_posts([long_post(30)], tokenizer, "multi_label", capped)
    assert len(split.examples) == 2
    assert split.stats["units_over_max_windows"] == 1
    assert split.stats["truncated_examples"] == 1
    assert split.stats["evidence_pairs_outside_window"] == 1
    assert all(w.start_positions[SLEEP] < 0 for w in split.examples)  # excluded, not null


def test_binary_pairs_get_windows_per_pair(tokenizer):
    split = encode_posts([long_post(12)], tokenizer, "binary_pairs", WINDOWS)
    units = split.units()
    assert len(units) == len(SYMPTOMS) and all(len(unit) > 1 for unit in units)
    assert split.stats["evidence_pairs_in_window"] == 1
    batch = collate(split.examples, 0)
    assert batch["labels"].shape == (len(SYMPTOMS), 1)
    assert batch["window_owner"].tolist() == [
        index for index, unit in enumerate(units) for _ in unit
    ]


@pytest.mark.parametrize("kind", ["max", "mean", "attention"])
def test_window_pool_pools_each_units_windows(kind):
    torch.manual_seed(0)
    pool = WindowPool(kind, 4)
    values = torch.randn(5, 4, requires_grad=True)
    owner = torch.tensor([0, 0, 0, 1, 2])
    pooled = pool(values, owner)
    assert pooled.shape == (3, 4)
    assert torch.allclose(pooled[1], values[3]) and torch.allclose(pooled[2], values[4])
    if kind == "max":
        assert torch.allclose(pooled[0], values[:3].max(0).values)
    elif kind == "mean":
        assert torch.allclose(pooled[0], values[:3].mean(0))
    else:
        weights = torch.softmax(pool.score(values[:3]).squeeze(-1), 0)
        assert torch.allclose(pooled[0], (weights[:, None] * values[:3]).sum(0), atol=1e-6)
    pooled.sum().backward()
    assert values.grad is not None and values.grad.abs().sum() > 0
    one_each = torch.arange(5)
    assert torch.equal(pool(values, one_each), values)  # truncate: nothing changes


def _config(**model) -> Config:
    return Config.from_dict(
        {
            "model": {
                "id": "tiny",
                "max_length": MAX_LENGTH,
                "long_posts": "windows",
                "window_stride": 16,
                "max_windows": 64,
                "max_answer_tokens": 96,  # a trial resolves `auto` from its data
                **model,
            },
            "train": {"device": "cpu", "eval_batch_size": 4},
        }
    )


def _forward(network, batch) -> dict[str, torch.Tensor]:
    return network.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        span_mask=batch["span_mask"],
        token_type_ids=batch.get("token_type_ids"),
        sentence_spans=batch["sentence_spans"],
        window_owner=batch["window_owner"],
    )


def _evaluate(network, split, config: Config):
    return evaluate(
        network.model,
        split,
        config.model,
        config.train,
        network.device,
        network.pad_token_id,
        class_weights=torch.ones(len(SYMPTOMS)),
    )


HEADS = ["start_end_linear", "start_end_mlp", "biaffine", "bio_crf", "sentence_reranker"]


@pytest.mark.parametrize("input_format", ["multi_label", "binary_pairs"])
@pytest.mark.parametrize("evidence_head", HEADS)
def test_every_evidence_head_trains_and_decodes_over_windows(evidence_head, input_format):
    config = _config(evidence_head=evidence_head, input_format=input_format)
    network = build_network(config, seed=0)
    posts = [long_post(20, "a"), long_post(3, "b")]
    split = encode_posts(posts, network.tokenizer, input_format, WINDOWS)
    units = 2 if input_format == "multi_label" else 2 * len(SYMPTOMS)
    assert len(split.units()) == units
    batch = next(iter(make_loader(split, units, network.pad_token_id, shuffle_seed=None)))
    out = _forward(network, batch)
    assert out["criteria_logits"].shape[0] == units < batch["input_ids"].shape[0]
    loss = network.model.evidence_loss(out, batch) + out["criteria_logits"].sum()
    assert torch.isfinite(loss)
    loss.backward()
    result = _evaluate(network, split, config)
    assert result.probabilities.shape == (2, len(SYMPTOMS))
    pair = result.candidates[SLEEP]  # post "a", the positive symptom
    assert not pair.excluded  # its evidence is 20 fillers in, far past one window
    if pair.pred_span is not None:
        assert 0 <= pair.pred_span[0] < pair.pred_span[1] <= len(posts[0]["text"])


@pytest.mark.parametrize(
    ("window_pooling", "coupling"),
    [
        ("max", "independent"),
        ("mean", "coupled"),
        ("attention", "coupled"),
        ("attention", "independent"),
    ],
)
def test_window_pooling_and_coupling_give_one_prediction_per_post(window_pooling, coupling):
    config = _config(window_pooling=window_pooling, coupling=coupling)
    network = build_network(config, seed=0)
    split = encode_posts(
        [long_post(20), long_post(1, "short")], network.tokenizer, "multi_label", WINDOWS
    )
    batch = next(iter(make_loader(split, 2, network.pad_token_id, shuffle_seed=None)))
    out = _forward(network, batch)
    assert out["criteria_logits"].shape == (2, len(SYMPTOMS))
    out["criteria_logits"].sum().backward()
    if window_pooling == "attention":
        assert network.model.window_pool.score.weight.grad.abs().sum() > 0


def test_a_9000_token_post_trains_and_evaluates_within_max_windows():
    config = _config(max_windows=16)
    network = build_network(config, seed=0)
    post = long_post(700)  # about 9,000 word pieces; its evidence is past the 16th window
    windowing = Windowing(MAX_LENGTH, "windows", 16, config.model.max_windows)
    split = encode_posts([post], network.tokenizer, "multi_label", windowing)
    assert len(network.tokenizer(post["text"])["input_ids"]) > 9_000
    assert len(split.examples) == 16 and split.stats["units_over_max_windows"] == 1
    loader = make_loader(split, 1, network.pad_token_id, shuffle_seed=0)
    batch = next(iter(loader))
    out = _forward(network, batch)
    loss = network.model.evidence_loss(out, batch) + out["criteria_logits"].sum()
    loss.backward()
    result = _evaluate(network, split, config)
    assert result.candidates[SLEEP].excluded  # counted, never silently wrong


@pytest.mark.slow
def test_a_trial_with_windows_reaches_every_evidence_pair_of_the_long_tailed_sample(tmp_path):
    """The sample now has posts of thousands of tokens (issue 14): truncation at the tiny
    config's 128 tokens excludes evidence; windows reach all of it and the trial runs."""
    from studyhelper import Study

    study = Study(
        tmp_path,
        model={"long_posts": "windows", "window_stride": 32, "max_windows": 128},
        train={"epochs": 1},
    )
    report = study.run(0)
    window = report["evidence_window"]
    assert window.get("train_evidence_pairs_outside_window", 0) == 0
    assert window.get("validation_evidence_pairs_outside_window", 0) == 0
    assert window["train_windows"] > window["train_posts"]  # long posts took several windows
    assert report["status"] == "completed"
    tokenizer = load_encoder("tiny", seed=0)[1]
    truncated = encode_posts(load_split(study.data, "train"), tokenizer, "multi_label", 128)
    assert truncated.stats["evidence_pairs_outside_window"] > 0  # what windows recovered


def test_window_pooling_changes_the_prediction_of_a_long_post():
    """Every option has an effect: the same weights pool a multi-window post differently."""
    logits = {}
    for kind in ("max", "mean"):
        network = build_network(_config(window_pooling=kind), seed=0)
        network.model.eval()
        split = encode_posts([long_post(20)], network.tokenizer, "multi_label", WINDOWS)
        batch = collate(split.examples, network.pad_token_id)
        with torch.no_grad():
            logits[kind] = _forward(network, batch)["criteria_logits"]
    assert not torch.allclose(logits["max"], logits["mean"])
