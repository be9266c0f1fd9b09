"""Seeded train/validation/test split by post (`data.split.group_by: none`).

ReDSM5 ships without splits. Splitting on sorted, shuffled post ids (not on row order or on
`hash()`) makes the split identical on every run and machine, and keeps each post, with all
its sentences, on one side only. It ignores authors and near-duplicates, so most test posts sit
beside a post by the same author in train (see groups.py); it is kept, byte for byte, to
measure what that is worth.
"""

import random
from typing import Any

from leanhpo.data.splits.ratios import (
    SPLIT_NAMES,
    SPLIT_SALT,
    check_ratios,
    check_seed,
    split_counts,
)


def split_posts(posts: list[dict], ratios: dict[str, Any], seed: int) -> dict[str, list[dict]]:
    """Split posts into train/validation/test by post_id; each split is sorted by post_id.

    `ratios` may carry other keys (the config's split block also holds `seed`); only the three
    split names are read.
    """
    fractions = check_ratios(ratios)
    check_seed(seed)
    by_id: dict[str, list[dict]] = {}
    for post in posts:
        by_id.setdefault(str(post["post_id"]), []).append(post)
    post_ids = sorted(by_id)
    random.Random(f"{SPLIT_SALT}:{seed}").shuffle(post_ids)
    counts = split_counts(len(post_ids), fractions)
    splits: dict[str, list[dict]] = {}
    start = 0
    for name in SPLIT_NAMES:
        chosen = sorted(post_ids[start : start + counts[name]])
        splits[name] = [post for post_id in chosen for post in by_id[post_id]]
        start += counts[name]
    return splits
