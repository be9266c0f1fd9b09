"""The configured split (`data.split`): by author, near-duplicates together, stratified.

`group_by: author` (the default) puts every author's posts, and every near-duplicate pair, in
one split, chosen by iterative stratification so that each symptom's positive posts spread
over train, validation and test as the ratios say (stratify.py). `group_by: none` is the
post-level split of leanhpo before it (posts.py), byte for byte, for comparison. Either way the
report says where near-duplicates and authors landed and names every symptom with fewer than
`min_positives` positive posts in validation or test.
"""

import random
from dataclasses import dataclass
from typing import Any

from leanhpo.data.errors import DataError
from leanhpo.data.splits.groups import UnionFind, author_of, author_summary, group_posts
from leanhpo.data.splits.near_duplicates import (
    DEFAULT_JACCARD,
    SHINGLE_WORDS,
    NearDuplicate,
    find_near_duplicates,
)
from leanhpo.data.splits.posts import split_posts
from leanhpo.data.splits.ratios import (
    SPLIT_NAMES,
    SPLIT_SALT,
    EmptySplitError,
    check_ratios,
    check_seed,
    split_counts,
)
from leanhpo.data.splits.stratify import Group, label_floor, stratify
from leanhpo.data.symptoms import SYMPTOMS

GROUP_BY = ("author", "none")
DEFAULT_GROUP_BY = "author"
DEFAULT_MIN_POSITIVES = 3
JACCARD_DIGITS = 4


@dataclass(frozen=True)
class SplitOutcome:
    """The three splits (posts sorted by post_id) and the report's `split` section."""

    splits: dict[str, list[dict]]
    report: dict[str, Any]

    @property
    def warnings(self) -> list[str]:
        return [item["message"] for item in self.report["below_min_positives"]]


def split_dataset(
    posts: list[dict], split_cfg: dict[str, Any], duplicates: list[NearDuplicate] | None = None
) -> SplitOutcome:
    """Split as `data.split` says; keys other than the ratios and seed have defaults.

    `duplicates` (find_near_duplicates at the configured threshold) saves their search when
    the same posts are split many times (bench/splits.py)."""
    fractions = check_ratios(split_cfg)
    seed = check_seed(split_cfg.get("seed"))
    group_by = split_cfg.get("group_by", DEFAULT_GROUP_BY)
    min_positives = split_cfg.get("min_positives", DEFAULT_MIN_POSITIVES)
    threshold = split_cfg.get("near_duplicate_jaccard", DEFAULT_JACCARD)
    _check_options(group_by, min_positives, threshold)
    by_id: dict[str, list[dict]] = {}
    for post in posts:
        by_id.setdefault(str(post["post_id"]), []).append(post)
    if duplicates is None:
        texts = {post_id: by_id[post_id][0]["text"] for post_id in by_id}
        duplicates = find_near_duplicates(texts, threshold)
    if group_by == "none":
        splits = split_posts(posts, split_cfg, seed)
        groups: list[list[str]] | None = None
    else:
        groups = group_posts(sorted(by_id), duplicates)
        splits = _split_groups(by_id, groups, fractions, seed, min_positives)
    split_of = {str(post["post_id"]): name for name in SPLIT_NAMES for post in splits[name]}
    report = {
        "group_by": group_by,
        "min_positives": min_positives,
        "authors": author_summary(sorted(by_id), split_of),
        "groups": _group_summary(groups),
        "near_duplicates": _duplicate_summary(duplicates, split_of, threshold),
        "below_min_positives": _below_min(splits, min_positives, group_by),
    }
    return SplitOutcome(splits, report)


def _check_options(group_by: Any, min_positives: Any, threshold: Any) -> None:
    if group_by not in GROUP_BY:
        raise DataError(
            f"Tried to read data.split.group_by and found {group_by!r}; it must be one of "
            f"{list(GROUP_BY)}. Fix: set it to author (all posts of an author in one split) or "
            "none (the post-level split)."
        )
    if isinstance(min_positives, bool) or not isinstance(min_positives, int) or min_positives < 0:
        raise DataError(
            f"Tried to read data.split.min_positives and found {min_positives!r}; it must be a "
            "whole number of at least 0. Fix: set it to e.g. 3."
        )
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        threshold = None
    if threshold is None or not 0 < threshold <= 1:
        raise DataError(
            "Tried to read data.split.near_duplicate_jaccard; it must be a number in (0, 1]. "
            "Fix: set it to e.g. 0.8 (1 keeps only exact copies of the word sequence together)."
        )


def _split_groups(
    by_id: dict[str, list[dict]],
    groups: list[list[str]],
    fractions: dict[str, float],
    seed: int,
    min_positives: int,
) -> dict[str, list[dict]]:
    split_counts(len(by_id), fractions)  # too few posts for the ratios: the post-level message
    if len(groups) < len(SPLIT_NAMES):
        raise EmptySplitError(
            f"Tried to split {len(by_id)} posts by author, and they form only {len(groups)} "
            f"group(s) (all posts of an author, and near-duplicate posts, stay together), too "
            f"few for {len(SPLIT_NAMES)} non-empty splits. Fix: use posts from more authors, or "
            "set data.split.group_by: none to split by post.",
            len(by_id),
        )
    units = [Group(members[0], len(members), _positives(by_id, members)) for members in groups]
    rng = random.Random(f"{SPLIT_SALT}:groups:{seed}")
    assignment = stratify(units, fractions, min_positives, rng)
    _fill_empty_splits(assignment, {unit.key: unit.size for unit in units})
    chosen: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for members in groups:
        chosen[assignment[members[0]]].extend(members)
    return {
        name: [post for post_id in sorted(chosen[name]) for post in by_id[post_id]]
        for name in SPLIT_NAMES
    }


def _positives(by_id: dict[str, list[dict]], members: list[str]) -> tuple[int, ...]:
    columns = zip(*(_labels(by_id[post_id][0]) for post_id in members), strict=True)
    return tuple(sum(column) for column in columns)


def _labels(post: dict) -> list[int]:
    """0/1 per symptom (a post without labels, as in some tests, has none)."""
    return [int(bool(value)) for value in post.get("labels") or [0] * len(SYMPTOMS)]


def _fill_empty_splits(assignment: dict[str, str], sizes: dict[str, int]) -> None:
    """A tiny dataset can leave a split without a group: give it the smallest group of the split
    with the most groups (deterministic: ties by key)."""
    for name in SPLIT_NAMES:
        if name in assignment.values():
            continue
        held = {n: sorted(k for k, v in assignment.items() if v == n) for n in SPLIT_NAMES}
        donor = max(SPLIT_NAMES, key=lambda n: len(held[n]))
        assignment[min(held[donor], key=lambda key: (sizes[key], key))] = name


def _group_summary(groups: list[list[str]] | None) -> dict[str, Any] | None:
    if groups is None:
        return None
    return {
        "groups": len(groups),
        "largest_group_posts": max((len(members) for members in groups), default=0),
        "single_post_groups": sum(1 for members in groups if len(members) == 1),
    }


def _duplicate_summary(
    duplicates: list[NearDuplicate], split_of: dict[str, str], threshold: float
) -> dict[str, Any]:
    in_pairs = sorted({post_id for pair in duplicates for post_id in (pair.first, pair.second)})
    clusters = _clusters(in_pairs, duplicates)
    return {
        "shingle_words": SHINGLE_WORDS,
        "jaccard_threshold": threshold,
        "pairs": [
            {
                "posts": [pair.first, pair.second],
                "jaccard": round(pair.jaccard, JACCARD_DIGITS),
                "same_author": _same_author(pair.first, pair.second),
                "splits": [split_of[pair.first], split_of[pair.second]],
            }
            for pair in duplicates
        ],
        "cluster_sizes": sorted((len(c) for c in clusters), reverse=True),
        "posts_in_clusters": sum(len(c) for c in clusters),
        "pairs_across_splits": sum(
            1 for pair in duplicates if split_of[pair.first] != split_of[pair.second]
        ),
    }


def _clusters(post_ids: list[str], duplicates: list[NearDuplicate]) -> list[list[str]]:
    """Posts linked by near-duplicate pairs (authors ignored)."""
    sets = UnionFind(post_ids)
    for pair in duplicates:
        sets.union(pair.first, pair.second)
    return sets.groups()


def _same_author(first: str, second: str) -> bool:
    author = author_of(first)
    return author is not None and author == author_of(second)


def _below_min(
    splits: dict[str, list[dict]], min_positives: int, group_by: str
) -> list[dict[str, Any]]:
    """Each symptom with fewer than min_positives positive posts in validation or test."""
    counts = {
        name: [sum(column) for column in zip(*map(_labels, splits[name]), strict=True)]
        if splits[name]
        else [0] * len(SYMPTOMS)
        for name in SPLIT_NAMES
    }
    below = []
    for index, symptom in enumerate(SYMPTOMS):
        per_split = {name: counts[name][index] for name in SPLIT_NAMES}
        short = [n for n in SPLIT_NAMES if n != "train" and per_split[n] < min_positives]
        if not short:
            continue
        total = sum(per_split.values())
        below.append(
            {
                "symptom": symptom,
                "total": total,
                **per_split,
                "message": _below_message(
                    symptom, per_split, total, short, min_positives, group_by
                ),
            }
        )
    return below


def _below_message(
    symptom: str,
    per_split: dict[str, int],
    total: int,
    short: list[str],
    min_positives: int,
    group_by: str,
) -> str:
    where = " and ".join(f"{per_split[name]} in {name}" for name in short)
    if label_floor(total, min_positives) < min_positives:
        why = (
            f"the data has {total} positive post(s) in all, too few for {min_positives} in "
            "validation and in test with one left for train"
        )
    elif group_by == "none":
        why = "the post-level split is not stratified (data.split.group_by: author is)"
    else:
        why = (
            "the author groups that hold its positive posts could not be spread further (they "
            "are large, or carry symptoms the other splits need)"
        )
    return (
        f"data.split: {symptom} has {where} ({total} positive posts in all), fewer than "
        f"data.split.min_positives={min_positives}: {why}. Its F1 there rests on very few "
        "posts (with none it is undefined). More posts, another data.split.seed or a lower "
        "data.split.min_positives changes this."
    )
