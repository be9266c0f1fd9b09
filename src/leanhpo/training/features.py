"""Turn prepared posts into model inputs with evidence span targets, and batches back.

Evidence targets come from the status-1 sentence offsets of each post. A gold span that the
tokenised window cannot hold (truncation) or that could not be located in the text is NOT
turned into a null target: its pair is excluded from the span loss and the metrics, and
counted, so that a user sees how much evidence the window loses.

Long posts are truncated to `model.max_length` tokens (no sliding window): every head then sees
one window per example, so criteria logits need no cross-window aggregation and the two input
formats keep one row per post or pair. The lost evidence is counted, as above.

Sentence candidates (for the sentence_reranker head) are the post's annotated evidence
sentences (of any symptom) plus the sentences that NLTK's Punkt splitter finds in the text
between them; only sentences wholly inside the window are candidates.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from nltk.tokenize.punkt import PunktSentenceTokenizer

from leanhpo.data.symptoms import SYMPTOM_DESCRIPTIONS
from leanhpo.metric_names import SYMPTOMS
from leanhpo.models.losses import IGNORE_INDEX
from leanhpo.models.multitask import NULL_INDEX

POST_SEGMENT = {"multi_label": 0, "binary_pairs": 1}
# Untrained Punkt: its default parameters need no downloaded model, so it works offline.
SENTENCE_SPLITTER = PunktSentenceTokenizer()
LINE_BREAKS = re.compile(r"\n\s*")


@dataclass
class Example:
    """One model input row: a post (multi_label) or a (post, symptom) pair (binary_pairs)."""

    input_ids: list[int]
    attention_mask: list[int]
    token_type_ids: list[int] | None
    span_mask: list[bool]
    offsets: list[tuple[int, int]]
    labels: list[float]
    start_positions: list[int]
    end_positions: list[int]
    post_index: int
    symptom_indices: list[int]
    # candidate sentences in the window as inclusive token spans; per output, the index into
    # [null, *sentences] of the gold sentence (0 = null, IGNORE_INDEX = excluded)
    sentence_spans: list[tuple[int, int]] = field(default_factory=list)
    sentence_targets: list[int] = field(default_factory=list)


@dataclass
class EncodedSplit:
    posts: list[dict[str, Any]]
    input_format: str
    examples: list[Example]
    stats: Counter[str] = field(default_factory=Counter)


def encode_posts(
    posts: list[dict[str, Any]], tokenizer: Any, input_format: str, max_length: int
) -> EncodedSplit:
    """Tokenise every post (and symptom description, for pairs) with character offsets."""
    encoded = EncodedSplit(posts=posts, input_format=input_format, examples=[])
    for post_index, post in enumerate(posts):
        sentences = sentence_char_spans(post["text"])
        if input_format == "multi_label":
            enc = tokenizer(
                post["text"], truncation=True, max_length=max_length, return_offsets_mapping=True
            )
            encoded.examples.append(
                _example(
                    enc, post, post_index, list(range(len(SYMPTOMS))), 0, sentences, encoded.stats
                )
            )
        else:
            for symptom_index, symptom in enumerate(SYMPTOMS):
                enc = tokenizer(
                    SYMPTOM_DESCRIPTIONS[symptom],
                    post["text"],
                    truncation="only_second",
                    max_length=max_length,
                    return_offsets_mapping=True,
                )
                encoded.examples.append(
                    _example(enc, post, post_index, [symptom_index], 1, sentences, encoded.stats)
                )
        encoded.stats["posts"] += 1
    return encoded


def _example(
    enc: Any,
    post: dict[str, Any],
    post_index: int,
    symptom_indices: list[int],
    segment: int,
    sentences: list[tuple[int, int]],
    stats: Counter[str],
) -> Example:
    sequence_ids = enc.sequence_ids()
    in_post = [sid == segment for sid in sequence_ids]
    offsets = [
        tuple(o) if keep else (0, 0) for o, keep in zip(enc["offset_mapping"], in_post, strict=True)
    ]
    post_tokens = [i for i, keep in enumerate(in_post) if keep]
    window_end = offsets[post_tokens[-1]][1] if post_tokens else 0
    if window_end < len(post["text"].rstrip()):
        stats["truncated_examples"] += 1
    span_mask = [keep or i == NULL_INDEX for i, keep in enumerate(in_post)]
    starts, ends = [], []
    for symptom in symptom_indices:
        start, end = _span_target(post, symptom, offsets, post_tokens, window_end, stats)
        starts.append(start)
        ends.append(end)
    sentence_spans = _sentence_tokens(sentences, offsets, post_tokens, window_end)
    return Example(
        input_ids=list(enc["input_ids"]),
        attention_mask=list(enc["attention_mask"]),
        token_type_ids=list(enc["token_type_ids"]) if "token_type_ids" in enc else None,
        span_mask=span_mask,
        offsets=offsets,
        labels=[float(post["labels"][s]) for s in symptom_indices],
        start_positions=starts,
        end_positions=ends,
        post_index=post_index,
        symptom_indices=symptom_indices,
        sentence_spans=sentence_spans,
        sentence_targets=[
            _sentence_target(start, end, sentence_spans)
            for start, end in zip(starts, ends, strict=True)
        ],
    )


def _span_target(
    post: dict[str, Any],
    symptom: int,
    offsets: list[tuple[int, int]],
    post_tokens: list[int],
    window_end: int,
    stats: Counter[str],
) -> tuple[int, int]:
    if not post["labels"][symptom]:
        return NULL_INDEX, NULL_INDEX
    spans = post["evidence"][symptom]
    if not spans:
        stats["evidence_unlocated_pairs"] += 1
        return IGNORE_INDEX, IGNORE_INDEX
    for start_char, end_char in spans:
        if end_char > window_end:
            continue
        tokens = [i for i in post_tokens if offsets[i][1] > start_char and offsets[i][0] < end_char]
        if tokens:
            stats["evidence_pairs_in_window"] += 1
            return tokens[0], tokens[-1]
    stats["evidence_pairs_outside_window"] += 1
    return IGNORE_INDEX, IGNORE_INDEX


def sentence_char_spans(text: str) -> list[tuple[int, int]]:
    """Sorted, non-overlapping character spans of the post's sentences: the text split at line
    breaks, then by Punkt.

    From the text alone: the candidates never depend on the annotations, so a test post is
    split exactly as an unannotated one would be (a gold span maps to the candidate it
    overlaps most, which may be longer or shorter than the annotated sentence).
    """
    spans = []
    line_start = 0
    for line_break in [*LINE_BREAKS.finditer(text), None]:
        line_end = line_break.start() if line_break else len(text)
        line = text[line_start:line_end]
        for start, end in SENTENCE_SPLITTER.span_tokenize(line):
            piece = line[start:end]
            stripped = piece.strip()
            if stripped:
                offset = line_start + start + piece.index(stripped)
                spans.append((offset, offset + len(stripped)))
        if line_break:
            line_start = line_break.end()
    return spans


def _sentence_tokens(
    sentences: list[tuple[int, int]],
    offsets: list[tuple[int, int]],
    post_tokens: list[int],
    window_end: int,
) -> list[tuple[int, int]]:
    """Token spans of the sentences wholly inside the window (the same rule as span targets).

    One pass over sentences and tokens together: both are in text order.
    """
    spans = []
    first = 0
    for start_char, end_char in sentences:
        if end_char > window_end:
            break
        while first < len(post_tokens) and offsets[post_tokens[first]][1] <= start_char:
            first += 1
        last = first
        while last < len(post_tokens) and offsets[post_tokens[last]][0] < end_char:
            last += 1
        if last > first:
            spans.append((post_tokens[first], post_tokens[last - 1]))
    return spans


def _sentence_target(start: int, end: int, sentence_spans: list[tuple[int, int]]) -> int:
    """Index into [null, *sentences]: the sentence that overlaps the gold span most."""
    if start in (IGNORE_INDEX, NULL_INDEX):
        return start
    overlaps = [min(end, e) - max(start, s) + 1 for s, e in sentence_spans]
    best = max(range(len(overlaps)), key=overlaps.__getitem__, default=-1)
    return best + 1 if best >= 0 and overlaps[best] > 0 else IGNORE_INDEX


def collate(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad a list of examples to the longest one and stack them into tensors."""
    width = max(len(ex.input_ids) for ex in examples)

    def pad(rows: list[list[Any]], value: Any, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=dtype)

    batch = {
        "input_ids": pad([ex.input_ids for ex in examples], pad_token_id, torch.long),
        "attention_mask": pad([ex.attention_mask for ex in examples], 0, torch.long),
        "span_mask": pad([ex.span_mask for ex in examples], False, torch.bool),
        "labels": torch.tensor([ex.labels for ex in examples], dtype=torch.float),
        "start_positions": torch.tensor([ex.start_positions for ex in examples], dtype=torch.long),
        "end_positions": torch.tensor([ex.end_positions for ex in examples], dtype=torch.long),
        "symptoms": torch.tensor([ex.symptom_indices for ex in examples], dtype=torch.long),
        "sentence_spans": _pad_sentences([ex.sentence_spans for ex in examples]),
        "sentence_targets": torch.tensor(
            [ex.sentence_targets for ex in examples], dtype=torch.long
        ),
    }
    if examples[0].token_type_ids is not None:
        batch["token_type_ids"] = pad([ex.token_type_ids or [] for ex in examples], 0, torch.long)
    return batch


def _pad_sentences(rows: list[list[tuple[int, int]]]) -> torch.Tensor:
    """[B, S, 2] with S >= 1; padding rows are (0, -1), i.e. empty."""
    width = max(1, *(len(row) for row in rows))
    return torch.tensor([row + [(0, -1)] * (width - len(row)) for row in rows], dtype=torch.long)


def train_prevalence(posts: list[dict[str, Any]]) -> list[float]:
    """Share of posts showing each symptom: the trivial baseline's scores."""
    n = max(len(posts), 1)
    return [sum(p["labels"][s] for p in posts) / n for s in range(len(SYMPTOMS))]
