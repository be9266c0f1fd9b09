"""Every criteria head x pooling, evidence head, loss and coupling: forward, backward, decoding.

One tiny encoder is loaded per module and deep-copied into each model, so the many parametrised
cases stay cheap; models are built from a validated Config through `head_settings`, the same
path a trial takes.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from leanhpo.config import Config
from leanhpo.models import EVIDENCE_HEADS, MultiTaskModel, load_encoder
from leanhpo.models.crf_head import TAG_B, TAG_I, TAG_O, bio_tags, segment_scores
from leanhpo.models.losses import (
    CRITERIA_LOSSES,
    criteria_loss,
    focal_loss,
    scheduled_gamma,
)
from leanhpo.training.features import collate, encode_posts
from leanhpo.training.loop import batch_losses
from leanhpo.training.setup import class_weights, head_settings

CRITERIA_HEADS = ["linear", "mlp", "mlp_residual", "gated", "multi_sample_dropout"]
POOLINGS = ["cls", "mean", "attention", "last_2_layer_mix"]
EVIDENCE = list(EVIDENCE_HEADS)
FORMATS = ["multi_label", "binary_pairs"]
MAX_LENGTH = 96


def config(model: dict[str, Any] | None = None, train: dict[str, Any] | None = None) -> Config:
    return Config.from_dict(
        {
            "model": {
                "id": "tiny",
                "max_length": MAX_LENGTH,
                "window_stride": 16,
                "head_hidden_size": 16,
                **(model or {}),
            },
            "train": {"device": "cpu", "loss": "bce", **(train or {})},
        }
    )


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    encoder, tokenizer, _ = load_encoder("tiny", seed=0)
    return encoder, tokenizer


@pytest.fixture(scope="module")
def batches(tiny, sample_posts) -> dict[str, dict[str, torch.Tensor]]:
    """Per input format, one small batch from posts with and without located evidence."""
    with_evidence = [p for p in sample_posts["train"] if any(p["evidence"])][:3]
    without = [p for p in sample_posts["train"] if not any(p["labels"])][:1]
    result = {}
    for input_format in FORMATS:
        split = encode_posts(with_evidence + without, tiny[1], input_format, MAX_LENGTH)
        # binary_pairs: the first post's 9 pairs and 3 of the next, to keep the batch small
        result[input_format] = collate(split.examples[:12], int(tiny[1].pad_token_id))
    return result


def build(tiny, cfg: Config, seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    return MultiTaskModel(copy.deepcopy(tiny[0]), head_settings(cfg))


def n_outputs(input_format: str) -> int:
    return 9 if input_format == "multi_label" else 1


def encoder_got_gradient(model: MultiTaskModel) -> bool:
    grad = model.encoder.embeddings.word_embeddings.weight.grad
    return grad is not None and bool(grad.abs().sum() > 0)


@pytest.mark.parametrize("input_format", FORMATS)
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("head", CRITERIA_HEADS)
def test_criteria_head_and_pooling_forward_backward(tiny, batches, head, pooling, input_format):
    cfg = config({"criteria_head": head, "pooling": pooling, "input_format": input_format})
    model = build(tiny, cfg)
    batch = batches[input_format]
    outputs, total, crit, _ = batch_losses(model, batch, cfg.train, None)
    assert outputs["criteria_logits"].shape == (len(batch["labels"]), n_outputs(input_format))
    assert torch.isfinite(total)
    crit.backward()
    assert encoder_got_gradient(model)
    head_grads = [p.grad for p in model.criteria_head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in head_grads)
    pooler_params = list(model.pooler.parameters())
    assert (pooling in ("attention", "last_2_layer_mix")) == bool(pooler_params)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pooler_params)


def _spans_on_post_tokens(spans, batch) -> None:
    for row, row_spans in enumerate(spans):
        for span in row_spans:
            if span is not None:
                start, end = span
                assert 0 < start <= end
                assert batch["span_mask"][row, start : end + 1].all()


@pytest.mark.parametrize("input_format", FORMATS)
@pytest.mark.parametrize("head", EVIDENCE)
def test_evidence_head_forward_backward_decode(tiny, batches, head, input_format):
    cfg = config({"evidence_head": head, "input_format": input_format})
    model = build(tiny, cfg)
    batch = batches[input_format]
    outputs, _, _, evid = batch_losses(model, batch, cfg.train, None)
    rows, width = batch["input_ids"].shape
    shapes = {
        "start_logits": (rows, n_outputs(input_format), width),
        "span_scores": (rows, n_outputs(input_format), width, width),
        "tag_emissions": (rows, n_outputs(input_format), width, 3),
        "sentence_logits": (rows, n_outputs(input_format), batch["sentence_spans"].shape[1] + 1),
    }
    produced = [key for key in shapes if key in outputs]
    assert len(produced) == 1 and outputs[produced[0]].shape == shapes[produced[0]]
    assert torch.isfinite(evid) and evid > 0
    evid.backward()
    assert encoder_got_gradient(model)
    spans = model.decode_evidence(outputs, batch, 30, 0.0)
    assert [len(r) for r in spans] == [n_outputs(input_format)] * rows
    _spans_on_post_tokens(spans, batch)
    # every head can be pushed to all-null and to all-span by the threshold
    assert all(s is None for r in model.decode_evidence(outputs, batch, 30, -1e6) for s in r)
    assert all(s is not None for r in model.decode_evidence(outputs, batch, 30, 1e6) for s in r)


# Constructed scores per head: the span (2, 3) (sentence 2 for the reranker) against null, where
# `margin` = null score - span score.
def _start_end(margin: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    start, end = torch.full((1, 1, 6), -5.0), torch.full((1, 1, 6), -5.0)
    start[0, 0, 2], end[0, 0, 3] = 2.0, 2.0
    start[0, 0, 0], end[0, 0, 0] = 2.0 + margin / 2, 2.0 + margin / 2
    return {"start_logits": start, "end_logits": end}, {}


def _biaffine(margin: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    scores = torch.full((1, 1, 6, 6), -5.0)
    scores[0, 0, 2, 3], scores[0, 0, 0, 0] = 4.0, 4.0 + margin
    return {"span_scores": scores}, {}


def _bio_crf(margin: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    # O scores 0 everywhere and transitions are 0, so a path's score is its B/I emissions:
    # B at 2 plus I at 3 is `-margin`; B at 2 alone is 1 less, every other B or I far less.
    emissions = torch.zeros(1, 1, 6, 3)
    emissions[..., TAG_B] = emissions[..., TAG_I] = -20.0
    emissions[0, 0, 2, TAG_B], emissions[0, 0, 3, TAG_I] = -margin - 1.0, 1.0
    return {"tag_emissions": emissions}, {"attention_mask": torch.ones(1, 6, dtype=torch.long)}


def _sentence_reranker(margin: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    logits = torch.tensor([[[1.0 + margin, -3.0, 1.0]]])  # [null, sentence 1, sentence 2]
    return {"sentence_logits": logits}, {"sentence_spans": torch.tensor([[[1, 1], [2, 3]]])}


CONSTRUCTED = {
    "start_end_linear": _start_end,
    "start_end_mlp": _start_end,
    "biaffine": _biaffine,
    "bio_crf": _bio_crf,
    "sentence_reranker": _sentence_reranker,
}


@pytest.mark.parametrize("head", EVIDENCE)
def test_null_span_decoding_on_constructed_scores(tiny, head):
    model = build(tiny, config({"evidence_head": head, "input_format": "binary_pairs"}))
    if head == "bio_crf":
        torch.nn.init.zeros_(model.evidence_head.crf.transitions)
    span_mask = torch.tensor([[True, True, True, True, True, False]])

    def decode(margin: float, threshold: float):
        outputs, extra = CONSTRUCTED[head](margin)
        return model.decode_evidence(outputs, {"span_mask": span_mask, **extra}, 10, threshold)

    assert decode(-1.0, 0.0) == [[(2, 3)]]  # the span wins
    assert decode(1.0, 0.0) == [[None]]  # null wins
    assert decode(1.0, 2.0) == [[(2, 3)]]  # ... unless the threshold asks for fewer nulls
    assert decode(-1.0, -2.0) == [[None]]  # ... or span wins unless it asks for more nulls


def test_crf_segment_scores_match_pytorch_crf_path_scores(tiny):
    torch.manual_seed(1)
    model = build(tiny, config({"evidence_head": "bio_crf"}))
    crf = model.evidence_head.crf
    torch.nn.init.normal_(crf.transitions)
    emissions = torch.randn(1, 7, 3)
    mask = torch.ones(1, 7, dtype=torch.bool)
    all_o = crf(emissions, torch.full((1, 7), TAG_O), mask=mask)
    deltas = segment_scores(emissions, crf.transitions)
    for start, end in [(1, 1), (2, 4), (1, 5), (3, 4)]:
        tags = bio_tags(torch.tensor([start]), torch.tensor([end]), 7)
        assert tags[0, start] == TAG_B and (tags[0, start + 1 : end + 1] == TAG_I).all()
        # log-likelihoods share the normaliser, so their difference is the path-score difference
        expected = crf(emissions, tags, mask=mask) - all_o
        assert deltas[0, start, end].item() == pytest.approx(expected.item(), abs=1e-4)
    assert (bio_tags(torch.tensor([0]), torch.tensor([0]), 7) == TAG_O).all()


@pytest.mark.parametrize("input_format", FORMATS)
@pytest.mark.parametrize("loss", CRITERIA_LOSSES)
def test_every_loss_trains_the_encoder(tiny, batches, sample_posts, loss, input_format):
    cfg = config({"input_format": input_format}, {"loss": loss, "label_smoothing": 0.1})
    model = build(tiny, cfg)
    weights = class_weights(cfg, sample_posts["train"], torch.device("cpu"))
    assert (weights is not None) == (loss != "bce")  # the focal family is alpha-balanced
    _, total, crit, _ = batch_losses(model, batches[input_format], cfg.train, weights, progress=0.3)
    assert torch.isfinite(total) and crit > 0
    crit.backward()
    assert encoder_got_gradient(model)


def test_loss_definitions():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 9) * 3, (torch.rand(4, 9) > 0.7).float()
    bce = criteria_loss(logits, labels, "bce")
    assert focal_loss(logits, labels, 0.0).item() == pytest.approx(bce.item(), rel=1e-6)
    focal = criteria_loss(logits, labels, "focal", gamma=2.0)
    assert focal < bce  # easy examples are down-weighted
    assert criteria_loss(logits, labels, "focal", gamma=4.0) < focal
    hybrid = criteria_loss(logits, labels, "hybrid", gamma=2.0, alpha=0.3)
    assert hybrid.item() == pytest.approx((0.3 * bce + 0.7 * focal).item(), rel=1e-6)
    start = criteria_loss(logits, labels, "adaptive_focal", gamma=2.0, progress=0.0)
    assert start.item() == pytest.approx(bce.item(), rel=1e-6)
    end = criteria_loss(logits, labels, "adaptive_focal", gamma=2.0, progress=0.9)
    assert end.item() == pytest.approx(focal.item(), rel=1e-6)
    assert scheduled_gamma(2.0, 0.25) == pytest.approx(1.0)
    # alpha-balancing: positive weights scale the positives' terms of every class-weighted loss
    weights = torch.full((4, 9), 3.0)
    weighted_bce = criteria_loss(logits, labels, "weighted_bce", weights)
    assert focal_loss(logits, labels, 0.0, weights).item() == pytest.approx(weighted_bce.item())
    for kind in ("focal", "adaptive_focal", "hybrid"):
        plain = criteria_loss(logits, labels, kind, gamma=2.0)
        balanced = criteria_loss(logits, labels, kind, weights, gamma=2.0)
        assert balanced > plain, kind
    assert criteria_loss(logits, labels, "focal", torch.ones(4, 9)) == pytest.approx(focal.item())
    # smoothing moves targets towards 0.5, so confident correct logits cost more
    confident = torch.tensor([[8.0, -8.0]])
    target = torch.tensor([[1.0, 0.0]])
    plain = criteria_loss(confident, target, "bce")
    assert criteria_loss(confident, target, "bce", label_smoothing=0.2) > plain + 0.05


COUPLING_CASES = [("independent", "concat", "mean")] + [
    ("coupled", method, pooling)
    for method in ["concat", "add", "mean", "weighted_sum", "weighted_mean"]
    for pooling in ["mean", "max", "attention"]
]


@pytest.mark.parametrize(("coupling", "method", "pooling"), COUPLING_CASES)
def test_coupling_feeds_evidence_features_into_the_criteria_head(
    tiny, batches, coupling, method, pooling
):
    cfg = config(
        {
            "evidence_head": "start_end_mlp",
            "coupling": coupling,
            "coupling_method": method,
            "coupling_pooling": pooling,
        }
    )
    model = build(tiny, cfg)
    outputs, _, crit, _ = batch_losses(model, batches["multi_label"], cfg.train, None)
    assert outputs["criteria_logits"].shape == (len(batches["multi_label"]["labels"]), 9)
    crit.backward()  # the criteria loss alone
    evidence_grads = [p.grad for p in model.evidence_head.parameters()]
    reached = any(g is not None and g.abs().sum() > 0 for g in evidence_grads)
    assert reached == (coupling == "coupled")
    assert encoder_got_gradient(model)
    if method.startswith("weighted"):
        assert model.coupling is not None and model.coupling.weights.grad is not None


@pytest.mark.parametrize("input_format", FORMATS)
@pytest.mark.parametrize("head", EVIDENCE)
def test_coupling_works_with_every_evidence_head(tiny, batches, head, input_format):
    cfg = config({"evidence_head": head, "coupling": "coupled", "input_format": input_format})
    model = build(tiny, cfg)
    _, total, crit, _ = batch_losses(model, batches[input_format], cfg.train, None)
    assert torch.isfinite(total)
    crit.backward()
    grads = [p.grad for p in model.evidence_head.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_adaptive_focal_follows_the_schedulers_step_count(tiny, sample_posts):
    """train_one_epoch hands the run's progress to the loss: adaptive_focal starts as BCE."""
    from leanhpo.training.loop import (
        make_loader,
        make_optimizer,
        make_scheduler,
        train_one_epoch,
        training_progress,
    )

    split = encode_posts(sample_posts["train"][:8], tiny[1], "multi_label", 48)

    def first_epoch(loss: str) -> float:
        cfg = config(
            {"dropout": 0.0}, {"loss": loss, "epochs": 4, "batch_size": 4, "max_batch_rows": None}
        )
        model = build(tiny, cfg)
        loader = make_loader(split, 4, int(tiny[1].pad_token_id), shuffle_seed=0)
        optimizer = make_optimizer(model, cfg.train)
        scheduler = make_scheduler(optimizer, len(loader) * cfg.train.epochs, 0.0)
        result = train_one_epoch(
            model, loader, optimizer, scheduler, cfg.train, torch.device("cpu")
        )
        assert training_progress(scheduler, len(loader), cfg.train.epochs) == pytest.approx(0.25)
        return result.metrics["train_criteria_loss"]

    bce, focal, adaptive = first_epoch("bce"), first_epoch("focal"), first_epoch("adaptive_focal")
    # the first epoch is the first quarter: gamma rises from 0 to 1, between BCE and focal(2)
    assert focal < adaptive < bce
