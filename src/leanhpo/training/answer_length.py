"""`model.max_answer_tokens: auto`: the longest evidence span the decoder may predict, resolved
from the gold evidence of the training split (issue 25, item 6).

A fixed cap cuts off every gold span longer than it: with the old default of 96 tokens, 8 of the
1,453 real gold spans could never be matched exactly, whatever the model learned. `auto` takes
the longest gold evidence of the training split, in the configured tokenizer's tokens, counted
as a span target is (training/features.py: every token that overlaps the sentence's characters).
It is resolved once per trial, after the tokenizer is loaded and before anything is decoded; the
resolved number is what the checkpoints, the trial report, the test evaluation and the export
store, so every later use decodes as the trial did. Only the training split is read: a longer
validation or test span is not looked at (it would tune the decoder on held-out gold).
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Any

from leanhpo.config import Config, ModelConfig

AUTO = "auto"


def longest_gold_tokens(tokenizer: Any, posts: list[dict[str, Any]]) -> int:
    """The most tokens any gold evidence span of `posts` covers (0 when there is none)."""
    longest = 0
    for post in posts:
        spans = [span for spans in post["evidence"] for span in spans]
        if not spans:
            continue
        encoded = tokenizer(
            post["text"], add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        ends = [end for _, end in encoded["offset_mapping"]]
        starts = [start for start, _ in encoded["offset_mapping"]]
        for start_char, end_char in spans:
            first = bisect.bisect_right(ends, start_char)  # first token ending past the start
            last = bisect.bisect_left(starts, end_char) - 1  # last token starting before the end
            longest = max(longest, last - first + 1)
    return longest


def resolve_answer_tokens(config: Config, tokenizer: Any, train_posts: list[dict]) -> Config:
    """`config` with model.max_answer_tokens resolved: unchanged when it is a number; with
    `auto`, the longest gold evidence of `train_posts` (at least 1)."""
    if config.model.max_answer_tokens != AUTO:
        return config
    longest = max(1, longest_gold_tokens(tokenizer, train_posts))
    model = dataclasses.replace(config.model, max_answer_tokens=longest)
    return dataclasses.replace(config, model=model)


def answer_tokens(model: ModelConfig) -> int:
    """model.max_answer_tokens as a number; an unresolved `auto` is a programming error."""
    value = model.max_answer_tokens
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"model.max_answer_tokens is {value!r}: `auto` must be resolved against the training "
            "split (training.answer_length.resolve_answer_tokens) before decoding"
        )
    return value
