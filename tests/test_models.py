"""The multi-task model, its losses, span targets and decoding, on the tiny encoder."""

from __future__ import annotations

import pytest
import torch

from leanhpo.config import Config
from leanhpo.metric_names import SYMPTOMS
from leanhpo.models import (
    IGNORE_INDEX,
    NULL_INDEX,
    architecture_signature,
    criteria_loss,
    span_loss,
)
from leanhpo.models.losses import positive_class_weights
from leanhpo.training.decode import decode_spans
from leanhpo.training.features import collate, encode_posts
from leanhpo.training.setup import build_network


def _config(**model):
    return Config.from_dict(
        {"model": {"id": "tiny", "max_length": 128, **model}, "train": {"device": "cpu"}}
    )


@pytest.mark.parametrize("input_format", ["multi_label", "binary_pairs"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_forward_backward_shapes_and_gradients(sample_posts, input_format, pooling):
    config = _config(input_format=input_format, pooling=pooling)
    network = build_network(config, seed=0)
    split = encode_posts(sample_posts["train"][:4], network.tokenizer, input_format, 128)
    batch = collate(split.examples[:8], network.pad_token_id)
    out = network.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        span_mask=batch["span_mask"],
        token_type_ids=batch.get("token_type_ids"),
    )
    n_out = 9 if input_format == "multi_label" else 1
    n_rows, width = batch["input_ids"].shape
    assert out["criteria_logits"].shape == (n_rows, n_out)
    assert out["start_logits"].shape == (n_rows, n_out, width)
    loss = criteria_loss(out["criteria_logits"], batch["labels"]) + span_loss(
        out["start_logits"], out["end_logits"], batch["start_positions"], batch["end_positions"]
    )
    assert torch.isfinite(loss)
    loss.backward()
    grads = [
        p.grad for n, p in network.model.named_parameters() if n.startswith("encoder.embeddings")
    ]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), (
        "no gradient reached the encoder"
    )


def test_masked_positions_never_win(sample_posts):
    config = _config(input_format="binary_pairs")
    network = build_network(config, seed=0)
    split = encode_posts(sample_posts["train"][:1], network.tokenizer, "binary_pairs", 128)
    batch = collate(split.examples[:1], network.pad_token_id)
    out = network.model(
        batch["input_ids"], batch["attention_mask"], batch["span_mask"], batch.get("token_type_ids")
    )
    spans = decode_spans(out["start_logits"], out["end_logits"], batch["span_mask"], 30, 1e9)
    start, end = spans[0][0]
    # the symptom description (first segment) is never part of an evidence span
    assert batch["span_mask"][0, start] and batch["span_mask"][0, end] and start > 0


def test_span_targets_point_at_the_evidence(sample_posts, tmp_path):
    network = build_network(_config(), seed=0)
    posts = [p for p in sample_posts["train"] if any(p["labels"]) and any(p["evidence"])]
    split = encode_posts(posts, network.tokenizer, "multi_label", 128)
    checked = 0
    for example in split.examples:
        post = split.posts[example.post_index]
        for out, symptom in enumerate(example.symptom_indices):
            start, end = example.start_positions[out], example.end_positions[out]
            if not post["labels"][symptom]:
                assert (start, end) == (NULL_INDEX, NULL_INDEX)
            elif start != IGNORE_INDEX:
                char_start, char_end = example.offsets[start][0], example.offsets[end][1]
                assert [char_start, char_end] in [
                    list(s) for s in post["evidence"][symptom]
                ] or any(s <= char_start and char_end <= e for s, e in post["evidence"][symptom])
                checked += 1
    assert checked > 10


def test_truncated_evidence_is_excluded_and_counted_not_nulled():
    network = build_network(_config(), seed=0)
    filler = "I went to the shops today and bought some bread. " * 30
    evidence = "I can't sleep at night anymore."
    text = filler + evidence
    start = text.index(evidence)
    labels = [0] * len(SYMPTOMS)
    labels[SYMPTOMS.index("SLEEP_ISSUES")] = 1
    spans = [[] for _ in SYMPTOMS]
    spans[SYMPTOMS.index("SLEEP_ISSUES")] = [[start, start + len(evidence)]]
    post = {"post_id": "x", "text": text, "labels": labels, "evidence": spans}
    split = encode_posts([post], network.tokenizer, "multi_label", 64)
    example = split.examples[0]
    sleep = SYMPTOMS.index("SLEEP_ISSUES")
    assert example.start_positions[sleep] == IGNORE_INDEX
    assert example.start_positions[0] == NULL_INDEX
    assert split.stats["evidence_pairs_outside_window"] == 1
    assert split.stats["truncated_examples"] == 1


def test_span_loss_ignores_excluded_targets_and_handles_all_ignored():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    ignored = torch.full((2, 3), IGNORE_INDEX)
    zero = span_loss(logits, logits, ignored, ignored)
    assert zero.item() == 0.0
    zero.backward()  # still part of the graph
    targets = torch.tensor([[0, 2, IGNORE_INDEX], [IGNORE_INDEX, 1, 4]])
    value = span_loss(logits, logits, targets, targets)
    expected = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 5), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )
    assert torch.allclose(value, expected)


def test_weighted_bce_upweights_positives():
    prevalence = torch.tensor([0.5, 0.1, 0.0001, 1.0])
    weights = positive_class_weights(prevalence)
    assert weights.tolist() == pytest.approx([1.0, 9.0, 50.0, 1.0])
    logits = torch.zeros(1, 4)
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    plain = criteria_loss(logits, labels, "bce")
    weighted = criteria_loss(logits, labels, "weighted_bce", weights.unsqueeze(0))
    assert weighted > plain
    with pytest.raises(ValueError):
        criteria_loss(logits, labels, "weighted_bce")
    with pytest.raises(ValueError):
        criteria_loss(logits, labels, "hinge")


def test_decode_null_threshold():
    start = torch.full((1, 1, 6), -5.0)
    end = torch.full((1, 1, 6), -5.0)
    start[0, 0, 2], end[0, 0, 3] = 2.0, 2.0  # best span (2, 3), score 4
    start[0, 0, 0], end[0, 0, 0] = 3.0, 3.0  # null score 6
    mask = torch.ones(1, 6, dtype=torch.bool)
    assert decode_spans(start, end, mask, 10, 0.0) == [[None]]
    assert decode_spans(start, end, mask, 10, 5.0) == [[(2, 3)]]
    # a span longer than max_answer_tokens is not allowed
    assert decode_spans(start, end, mask, 1, 5.0)[0][0] != (2, 3)


def test_architecture_signature_changes_with_heads():
    a = build_network(_config(input_format="multi_label"), 0).model
    b = build_network(_config(input_format="binary_pairs"), 0).model
    c = build_network(_config(input_format="multi_label"), 1).model
    assert architecture_signature(a) != architecture_signature(b)
    assert architecture_signature(a) == architecture_signature(c)


def test_tiny_encoder_is_deterministic_per_seed():
    a = build_network(_config(), 3).model.state_dict()
    b = build_network(_config(), 3).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_both_heads_really_train_on_a_fixed_batch(sample_posts):
    """30 steps on one batch: both losses fall clearly and the decoded spans reach the targets."""
    config = Config.from_dict(
        {
            "model": {"id": "tiny", "max_length": 128, "dropout": 0.0},
            "train": {"device": "cpu", "learning_rate": 1e-3, "head_learning_rate": 1e-2},
        }
    )
    network = build_network(config, seed=0)
    posts = [p for p in sample_posts["train"] if any(p["evidence"])][:4]
    batch = collate(
        encode_posts(posts, network.tokenizer, "multi_label", 128).examples, network.pad_token_id
    )
    optimizer = torch.optim.AdamW(network.model.parameters(), lr=3e-3)

    def losses():
        out = network.model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["span_mask"],
            batch.get("token_type_ids"),
        )
        crit = criteria_loss(out["criteria_logits"], batch["labels"])
        evid = span_loss(
            out["start_logits"], out["end_logits"], batch["start_positions"], batch["end_positions"]
        )
        return out, crit, evid

    network.model.train()
    _, crit0, evid0 = losses()
    for _ in range(30):
        _, crit, evid = losses()
        optimizer.zero_grad()
        (crit + evid).backward()
        optimizer.step()
    network.model.eval()
    out, crit, evid = losses()
    assert crit.item() < 0.5 * crit0.item()
    assert evid.item() < 0.5 * evid0.item()
    spans = decode_spans(out["start_logits"], out["end_logits"], batch["span_mask"], 96, 0.0)
    hits = total = 0
    for row in range(len(posts)):
        for symptom in range(len(SYMPTOMS)):
            start = batch["start_positions"][row, symptom].item()
            if start > 0:
                total += 1
                hits += spans[row][symptom] == (start, batch["end_positions"][row, symptom].item())
    assert total and hits / total > 0.5
