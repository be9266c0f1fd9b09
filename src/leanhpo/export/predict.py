"""Predict with an export: the study's own encode + evaluate path, on posts without labels.

Unlabelled texts become post dicts with nine zero labels and no evidence, and go through
`training.setup.encode` and `training.evaluation.evaluate` exactly as the test split did in the
study's evaluation (truncation or windows, batching, precision, evidence decoding); the labels
only feed the losses, which are thrown away. So the export's predictions on the test split are
the ones the study report scored, bit for bit, at the default batch size, on the device type and
in the precision that scored them (export/precision.py).

Posts are run in chunks of whole batches (CHUNK_BATCHES), which keeps memory flat on big inputs
and leaves every batch as a single pass would have made it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
from tqdm import tqdm

from leanhpo.export.bundle import ExportedModel
from leanhpo.export.errors import ExportError
from leanhpo.metric_names import SYMPTOMS
from leanhpo.training.compute import amp_for
from leanhpo.training.evaluation import evaluate
from leanhpo.training.metrics import EvidenceExample
from leanhpo.training.setup import encode

CHUNK_BATCHES = 32  # batches per evaluate() call


def predict_texts(
    model: ExportedModel,
    texts: Sequence[str],
    post_ids: Sequence[str] | None = None,
    *,
    batch_size: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One prediction per text, in order (see `prediction` for the layout). `post_ids`
    default to the 1-based positions; `batch_size` to the study's evaluation batch size."""
    return [
        row
        for chunk in iter_predictions(
            model, texts, post_ids, batch_size=batch_size, progress=progress
        )
        for row in chunk
    ]


def iter_predictions(
    model: ExportedModel,
    texts: Sequence[str],
    post_ids: Sequence[str] | None = None,
    *,
    batch_size: int | None = None,
    progress: bool = True,
) -> Iterator[list[dict[str, Any]]]:
    """The predictions chunk by chunk, with a progress bar over posts on stderr."""
    posts = unlabelled_posts(texts, post_ids)
    # The precision the export's scores were computed in (or the one the caller chose), on
    # any device: evaluate's autocast follows train.amp.
    train = replace(model.config.train, amp=amp_for(model.precision))
    if batch_size is not None:
        if batch_size < 1:
            raise ExportError(f"batch size must be at least 1, got {batch_size}")
        train = replace(train, eval_batch_size=batch_size)
    # A multiple of the batch size in units, so chunking never changes a batch. A unit is a
    # post (multi_label) or a (post, symptom) pair (binary_pairs): 9 units per post.
    chunk = train.eval_batch_size * CHUNK_BATCHES
    with tqdm(total=len(posts), desc="predict", unit="post", disable=not progress) as bar:
        for start in range(0, len(posts), chunk):
            rows = _predict_chunk(model, posts[start : start + chunk], train, progress)
            bar.update(len(rows))
            yield rows


def unlabelled_posts(
    texts: Sequence[str], post_ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Post dicts as the prepared splits hold them, with zero labels and no evidence."""
    if post_ids is not None and len(post_ids) != len(texts):
        raise ExportError(f"{len(texts)} texts but {len(post_ids)} post ids")
    posts = []
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ExportError(f"text {index + 1} is empty or not a string: {text!r:.40}")
        post_id = str(post_ids[index]) if post_ids is not None else str(index + 1)
        posts.append(
            {
                "post_id": post_id,
                "text": text,
                "labels": [0] * len(SYMPTOMS),
                "evidence": [[] for _ in SYMPTOMS],
            }
        )
    return posts


def _predict_chunk(
    model: ExportedModel, posts: list[dict[str, Any]], train: Any, progress: bool
) -> list[dict[str, Any]]:
    network, config = model.network, model.config
    split = encode(network, config, posts)
    # Only the losses read labels and class weights; ones keep the weighted losses defined.
    weights = torch.ones(len(SYMPTOMS), device=network.device)
    evaluation = evaluate(
        network.model,
        split,
        config.model,
        train,
        network.device,
        network.pad_token_id,
        weights,
        "batches" if progress else None,  # the bar of evaluate's own batches
    )
    pairs = evaluation.evidence(model.null_threshold)  # post-major, symptom-minor
    n = len(SYMPTOMS)
    return [
        prediction(
            post,
            [float(p) for p in evaluation.probabilities[index]],
            pairs[index * n : (index + 1) * n],
            model.decision_thresholds,
        )
        for index, post in enumerate(posts)
    ]


def prediction(
    post: dict[str, Any],
    probabilities: list[float],
    pairs: list[EvidenceExample],
    decision_thresholds: Sequence[float],
) -> dict[str, Any]:
    """{post_id, symptoms: {NAME: {probability, present}}, evidence: {NAME: null | {text,
    start, end}}} for all nine symptoms; `present` is probability >= the symptom's decision
    threshold (as the study's metrics decide), evidence the evidence head's own decision."""
    for value in probabilities:
        if not math.isfinite(value):
            raise ValueError(f"post {post['post_id']}: the model gave a non-finite probability")
    return {
        "post_id": post["post_id"],
        "symptoms": {
            name: {"probability": value, "present": value >= threshold}
            for name, value, threshold in zip(
                SYMPTOMS, probabilities, decision_thresholds, strict=True
            )
        },
        "evidence": {
            name: _evidence(post["text"], pair) for name, pair in zip(SYMPTOMS, pairs, strict=True)
        },
    }


def _evidence(text: str, pair: EvidenceExample) -> dict[str, Any] | None:
    if pair.pred_span is None:
        return None
    start, end = pair.pred_span
    return {"text": text[start:end], "start": start, "end": end}
