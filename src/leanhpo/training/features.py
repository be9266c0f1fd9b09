"""Turn prepared posts into model inputs with evidence span targets, and batches back.

Evidence targets come from the status-1 sentence offsets of each post. A gold span that the
tokenised window cannot hold (truncation) or that could not be located in the text is NOT
turned into a null target: its pair is excluded from the span loss and the metrics, and
counted, so that a user sees how much evidence the window loses.

A unit is a post (multi_label) or a (post, symptom) pair (binary_pairs): one criteria
prediction. With `model.long_posts: truncate` a unit is one window, its first `max_length`
tokens, and evidence past it is excluded and counted, as above. With `windows` a unit is up to
`max_windows` overlapping windows of `max_length` tokens (`window_stride` shared; HF's
`doc_stride`), each an Example with the unit's index: the model pools the criteria over a unit's
windows, the evidence head searches each window, and a unit's evidence is decided by its most
confident window. A window that does not hold a reached gold span is trained on the null span
(HF question answering does the same); evidence that no kept window reaches is excluded.

Sentence candidates (for the sentence_reranker head) come from the text alone: the post split
at line breaks, then by NLTK's Punkt splitter (`sentence_char_spans`). The annotations never
shape them, so a test post is split as an unannotated one would be; a gold span is mapped to the
candidate it overlaps most (`_sentence_target`), which may be longer or shorter than the
annotated sentence. Only sentences wholly inside the window are candidates.
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
    unit: int  # index of the post or pair this window belongs to (one criteria prediction)
    # candidate sentences in the window as inclusive token spans; per output, the index into
    # [null, *sentences] of the gold sentence (0 = null, IGNORE_INDEX = excluded)
    sentence_spans: list[tuple[int, int]] = field(default_factory=list)
    sentence_targets: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Windowing:
    """How a unit's text becomes windows (model.long_posts, window_stride, max_windows)."""

    max_length: int
    long_posts: str = "truncate"
    stride: int = 64
    max_windows: int = 1

    @property
    def windows(self) -> bool:
        return self.long_posts == "windows"


@dataclass
class EncodedSplit:
    posts: list[dict[str, Any]]
    input_format: str
    examples: list[Example]  # windows, in unit order
    stats: Counter[str] = field(default_factory=Counter)

    def units(self) -> list[list[int]]:
        """Example indices of each unit, in order (a unit's windows are consecutive)."""
        groups: list[list[int]] = []
        for index, example in enumerate(self.examples):
            if not groups or self.examples[groups[-1][0]].unit != example.unit:
                groups.append([])
            groups[-1].append(index)
        return groups


def encode_posts(
    posts: list[dict[str, Any]],
    tokenizer: Any,
    input_format: str,
    max_length: int | Windowing,
) -> EncodedSplit:
    """Tokenise every post (and symptom description, for pairs) with character offsets, into
    one window per unit (truncate) or overlapping windows over the whole text."""
    windowing = max_length if isinstance(max_length, Windowing) else Windowing(max_length)
    encoded = EncodedSplit(posts=posts, input_format=input_format, examples=[])
    for post_index, post in enumerate(posts):
        sentences = sentence_char_spans(post["text"])
        # (texts, outputs, segment of the post, truncation) of each unit of this post
        units: list[tuple[tuple[str, ...], list[int], int, bool | str]]
        if input_format == "multi_label":
            units = [((post["text"],), list(range(len(SYMPTOMS))), 0, True)]
        else:
            units = [
                ((SYMPTOM_DESCRIPTIONS[symptom], post["text"]), [index], 1, "only_second")
                for index, symptom in enumerate(SYMPTOMS)
            ]
        for texts, symptom_indices, segment, truncation in units:
            enc = tokenizer(
                *texts,
                truncation=truncation,
                max_length=windowing.max_length,
                stride=windowing.stride if windowing.windows else 0,
                return_overflowing_tokens=windowing.windows,
                return_offsets_mapping=True,
            )
            encoded.examples += _unit_examples(
                enc, windowing, post, post_index, symptom_indices, segment, sentences,
                encoded.stats["units"], encoded.stats,
            )  # fmt: skip
            encoded.stats["units"] += 1
        encoded.stats["posts"] += 1
    return encoded


def _unit_examples(
    enc: Any,
    windowing: Windowing,
    post: dict[str, Any],
    post_index: int,
    symptom_indices: list[int],
    segment: int,
    sentences: list[tuple[int, int]],
    unit: int,
    stats: Counter[str],
) -> list[Example]:
    """A unit's windows as Examples, with span targets decided over all of them."""
    n_windows = len(enc["input_ids"]) if windowing.windows else 1
    kept = min(n_windows, windowing.max_windows) if windowing.windows else 1
    windows = []
    for index in range(kept):
        if windowing.windows:
            fields = {k: enc[k][index] for k in enc if k != "overflow_to_sample_mapping"}
            sequence_ids = enc.sequence_ids(index)
        else:
            fields, sequence_ids = dict(enc), enc.sequence_ids()
        windows.append(_window(fields, sequence_ids, segment))
    stats["windows"] += kept
    if n_windows > kept:
        stats["units_over_max_windows"] += 1
    text_end = len(post["text"].rstrip())
    if max(window.end for window in windows) < text_end:
        stats["truncated_examples"] += 1  # units whose kept windows miss the end of the post
    targets = [
        _unit_span_targets(post, symptom, windows, windowing.windows, stats)
        for symptom in symptom_indices
    ]
    examples = []
    for index, window in enumerate(windows):
        starts = [target[index][0] for target in targets]
        ends = [target[index][1] for target in targets]
        sentence_spans = _sentence_tokens(sentences, window)
        examples.append(
            Example(
                input_ids=list(window.fields["input_ids"]),
                attention_mask=list(window.fields["attention_mask"]),
                token_type_ids=(
                    list(window.fields["token_type_ids"])
                    if "token_type_ids" in window.fields
                    else None
                ),
                span_mask=[keep or i == NULL_INDEX for i, keep in enumerate(window.in_post)],
                offsets=window.offsets,
                labels=[float(post["labels"][s]) for s in symptom_indices],
                start_positions=starts,
                end_positions=ends,
                post_index=post_index,
                symptom_indices=symptom_indices,
                unit=unit,
                sentence_spans=sentence_spans,
                sentence_targets=[
                    _sentence_target(start, end, sentence_spans)
                    for start, end in zip(starts, ends, strict=True)
                ],
            )
        )
    return examples


@dataclass
class _Window:
    fields: dict[str, Any]
    in_post: list[bool]
    offsets: list[tuple[int, int]]
    post_tokens: list[int]
    start: int  # first character of the post inside the window
    end: int  # end character of the last post token inside the window


def _window(fields: dict[str, Any], sequence_ids: list[int | None], segment: int) -> _Window:
    in_post = [sid == segment for sid in sequence_ids]
    offsets = [
        (int(o[0]), int(o[1])) if keep else (0, 0)
        for o, keep in zip(fields["offset_mapping"], in_post, strict=True)
    ]
    post_tokens = [i for i, keep in enumerate(in_post) if keep]
    start = offsets[post_tokens[0]][0] if post_tokens else 0
    end = offsets[post_tokens[-1]][1] if post_tokens else 0
    return _Window(fields, in_post, offsets, post_tokens, start, end)


def _unit_span_targets(
    post: dict[str, Any],
    symptom: int,
    windows: list[_Window],
    fill_null: bool,
    stats: Counter[str],
) -> list[tuple[int, int]]:
    """Each window's (start, end) target for one output. A positive pair's gold span is the
    target of every window that holds it whole; with several windows, the others learn the null
    span, but only if some window holds it (else every window ignores the pair: excluded)."""
    if not post["labels"][symptom]:
        return [(NULL_INDEX, NULL_INDEX)] * len(windows)
    spans = post["evidence"][symptom]
    if not spans:
        stats["evidence_unlocated_pairs"] += 1
        return [(IGNORE_INDEX, IGNORE_INDEX)] * len(windows)
    targets = [_span_in_window(spans, window) for window in windows]
    if all(target[0] == IGNORE_INDEX for target in targets):
        stats["evidence_pairs_outside_window"] += 1
        return targets
    stats["evidence_pairs_in_window"] += 1
    if fill_null:
        return [
            (NULL_INDEX, NULL_INDEX) if target[0] == IGNORE_INDEX else target for target in targets
        ]
    return targets


def _span_in_window(spans: list[list[int]], window: _Window) -> tuple[int, int]:
    for start_char, end_char in spans:
        if end_char > window.end or start_char < window.start:
            continue
        tokens = [
            i
            for i in window.post_tokens
            if window.offsets[i][1] > start_char and window.offsets[i][0] < end_char
        ]
        if tokens:
            return tokens[0], tokens[-1]
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


def _sentence_tokens(sentences: list[tuple[int, int]], window: _Window) -> list[tuple[int, int]]:
    """Token spans of the sentences wholly inside the window (the same rule as span targets).

    One pass over sentences and tokens together: both are in text order.
    """
    offsets, post_tokens = window.offsets, window.post_tokens
    spans = []
    first = 0
    for start_char, end_char in sentences:
        if end_char > window.end:
            break
        if start_char < window.start:
            continue
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
    """Pad a list of windows to the longest one and stack them into tensors.

    Per window: the encoder inputs and evidence targets. Per unit (a unit's windows come
    together): `labels` and `symptoms`, and `window_owner` maps each window to its unit's row.
    """
    width = max(len(ex.input_ids) for ex in examples)
    owner: list[int] = []
    firsts: list[Example] = []
    for ex in examples:
        if not firsts or ex.unit != firsts[-1].unit:
            firsts.append(ex)
        owner.append(len(firsts) - 1)

    def pad(rows: list[list[Any]], value: Any, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=dtype)

    batch = {
        "input_ids": pad([ex.input_ids for ex in examples], pad_token_id, torch.long),
        "attention_mask": pad([ex.attention_mask for ex in examples], 0, torch.long),
        "span_mask": pad([ex.span_mask for ex in examples], False, torch.bool),
        "labels": torch.tensor([ex.labels for ex in firsts], dtype=torch.float),
        "window_owner": torch.tensor(owner, dtype=torch.long),
        "start_positions": torch.tensor([ex.start_positions for ex in examples], dtype=torch.long),
        "end_positions": torch.tensor([ex.end_positions for ex in examples], dtype=torch.long),
        "symptoms": torch.tensor([ex.symptom_indices for ex in firsts], dtype=torch.long),
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
