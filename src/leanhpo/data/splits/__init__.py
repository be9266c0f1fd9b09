"""Seeded train/validation/test splits: by author, near-duplicates together, stratified over the
nine symptoms (`split_dataset`), or the post-level split (`split_posts`, `group_by: none`)."""

from leanhpo.data.splits.dataset import (
    DEFAULT_GROUP_BY,
    DEFAULT_MIN_POSITIVES,
    GROUP_BY,
    SplitOutcome,
    split_dataset,
)
from leanhpo.data.splits.groups import author_of
from leanhpo.data.splits.near_duplicates import DEFAULT_JACCARD, find_near_duplicates
from leanhpo.data.splits.posts import split_posts
from leanhpo.data.splits.ratios import SPLIT_NAMES, EmptySplitError

__all__ = [
    "DEFAULT_GROUP_BY",
    "DEFAULT_JACCARD",
    "DEFAULT_MIN_POSITIVES",
    "GROUP_BY",
    "SPLIT_NAMES",
    "EmptySplitError",
    "SplitOutcome",
    "author_of",
    "find_near_duplicates",
    "split_dataset",
    "split_posts",
]
