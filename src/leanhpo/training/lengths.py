"""How long the prepared posts are for the configured tokenizer, and what each mode can read.

The `length_report` step writes `data/length_report.json` beside the data report. The data
report does not depend on the model; this one does (tokenizer, `model.max_length`, windows), so
it is a separate step: changing the model rewrites it without touching the prepared splits.
Per split it counts the posts longer than `max_length`, the evidence sentences that start past
it, and how many gold (post, symptom) evidence pairs a truncated input and the configured input
reach: the figures behind `evidence_n_excluded` in the trial and study reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from leanhpo.config import Config
from leanhpo.data import load_split
from leanhpo.data.splits import SPLIT_NAMES
from leanhpo.fsutil import atomic_write_json
from leanhpo.models import load_encoder
from leanhpo.training.features import EncodedSplit, Windowing, encode_posts

PERCENTILES = (50, 90, 99)
REPORT_FILE = "length_report.json"


def write_length_report(config: Config, data_dir: Path) -> dict[str, Any]:
    """Compute the report and write it atomically to `data_dir`/length_report.json."""
    report = length_report(config, data_dir)
    atomic_write_json(Path(data_dir) / REPORT_FILE, report)
    return report


def length_report(config: Config, data_dir: Path) -> dict[str, Any]:
    """The report for every prepared split in `data_dir`, for `config`'s model settings."""
    model = config.model
    _, tokenizer, info = load_encoder(model.id, model.revision)
    truncate = Windowing(model.max_length)
    configured = Windowing(
        model.max_length, model.long_posts, model.window_stride, model.max_windows
    )
    modes = {"truncate": truncate, model.long_posts: configured}  # one entry when truncating
    splits = {}
    for name in SPLIT_NAMES:
        posts = load_split(data_dir, name)
        splits[name] = {
            **_token_stats(posts, tokenizer, model.max_length),
            "reach": {
                mode: _reach(encode_posts(posts, tokenizer, model.input_format, windowing))
                for mode, windowing in modes.items()
            },
        }
    return {
        "model": {"id": model.id, "resolved": info.resolved, "revision": info.revision},
        "input_format": model.input_format,
        "max_length": model.max_length,
        "long_posts": model.long_posts,
        "window_stride": model.window_stride if model.long_posts == "windows" else None,
        "max_windows": model.max_windows if model.long_posts == "windows" else None,
        "splits": splits,
    }


def _token_stats(posts: list[dict[str, Any]], tokenizer: Any, max_length: int) -> dict[str, Any]:
    """Post lengths in tokens ([CLS] and [SEP] included) and evidence sentence start positions
    (the token index of a sentence's first token, [CLS] being 0)."""
    lengths, starts = [], []
    for post in posts:
        encoded = tokenizer(
            post["text"], return_offsets_mapping=True, truncation=False, verbose=False
        )
        lengths.append(len(encoded["input_ids"]))
        ends = [end if end > begin else -1 for begin, end in encoded["offset_mapping"]]
        for spans in post["evidence"]:
            for start_char, _ in spans:
                starts.append(next(i for i, end in enumerate(ends) if end > start_char))
    tokens = np.asarray(lengths or [0])
    positions = np.asarray(starts or [0])
    return {
        "posts": len(posts),
        "tokens": _distribution(tokens) if lengths else None,
        "posts_over_max_length": int((tokens > max_length).sum()) if lengths else 0,
        "evidence_sentences": len(starts),
        "evidence_start_token": _distribution(positions) if starts else None,
        "evidence_starting_past_max_length": int((positions >= max_length).sum()) if starts else 0,
    }


def _distribution(values: np.ndarray) -> dict[str, int]:
    summary = {f"p{p}": int(np.percentile(values, p)) for p in PERCENTILES}
    return {**summary, "max": int(values.max())}


def _reach(split: EncodedSplit) -> dict[str, int]:
    """Gold evidence pairs (a positive label with a located sentence) a window holds whole, and
    those none does: the pairs each evaluation excludes for length."""
    stats = split.stats
    return {
        "evidence_pairs": stats["evidence_pairs_in_window"]
        + stats["evidence_pairs_outside_window"],
        "evidence_pairs_reached": stats["evidence_pairs_in_window"],
        "evidence_pairs_unreached": stats["evidence_pairs_outside_window"],
        "rows": len(split.examples),
        "units_over_max_windows": stats["units_over_max_windows"],
    }
