"""Which posts must share a split: those of one author, and near-duplicates of each other.

ReDSM5 post ids have the form `s_<author>_<n>` (552 authors for 1,484 posts; one wrote 68). An
author's style, topics and label history carry over between their posts, so a post-level split
tests most posts beside another post by their author in train. Authors and near-duplicate pairs
are merged into groups with a union-find; a group goes to one split whole.
"""

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from leanhpo.data.splits.near_duplicates import NearDuplicate

# `s_<author>_<n>`: the middle part, which may itself hold underscores. An id of another shape
# (no author) makes its post a group of its own.
AUTHOR_ID = re.compile(r"^[^_]+_(?P<author>.+)_[^_]+$")


def author_of(post_id: str) -> str | None:
    """The author part of a ReDSM5 post id, or None when the id has no such part."""
    match = AUTHOR_ID.match(post_id)
    return match.group("author") if match else None


class UnionFind:
    """Disjoint sets of post ids. No library: networkx would do it, but is not a dependency for
    twenty lines."""

    def __init__(self, items: Iterable[str]) -> None:
        self.parent = {item: item for item in items}

    def find(self, item: str) -> str:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, first: str, second: str) -> None:
        a, b = self.find(first), self.find(second)
        if a != b:
            # The smaller id becomes the root, so the sets do not depend on the order of unions.
            self.parent[max(a, b)] = min(a, b)

    def groups(self) -> list[list[str]]:
        """The sets, each sorted, in the order of their smallest id."""
        by_root: dict[str, list[str]] = {}
        for item in sorted(self.parent):
            by_root.setdefault(self.find(item), []).append(item)
        return sorted(by_root.values(), key=lambda members: members[0])


def group_posts(post_ids: list[str], duplicates: list[NearDuplicate]) -> list[list[str]]:
    """Posts of one author and near-duplicate pairs joined; each group a sorted list of ids."""
    sets = UnionFind(post_ids)
    first_by_author: dict[str, str] = {}
    for post_id in sorted(post_ids):
        author = author_of(post_id)
        if author is not None:
            sets.union(first_by_author.setdefault(author, post_id), post_id)
    for pair in duplicates:
        sets.union(pair.first, pair.second)
    return sets.groups()


def author_summary(post_ids: list[str], split_of: dict[str, str]) -> dict[str, Any]:
    """Authors, their sizes, and how the split treats them (zero crossings is the point)."""
    posts_by_author = Counter(a for a in map(author_of, post_ids) if a is not None)
    splits_by_author: dict[str, set[str]] = {}
    for post_id in post_ids:
        author = author_of(post_id)
        if author is not None:
            splits_by_author.setdefault(author, set()).add(split_of[post_id])
    beside: Counter[str] = Counter()
    for post_id in post_ids:
        author = author_of(post_id)
        if author is not None and split_of[post_id] != "train":
            beside[split_of[post_id]] += "train" in splits_by_author[author]
    return {
        "authors": len(posts_by_author),
        "posts_without_author": len(post_ids) - sum(posts_by_author.values()),
        "single_post_authors": sum(1 for n in posts_by_author.values() if n == 1),
        "largest_author_posts": max(posts_by_author.values(), default=0),
        "authors_in_more_than_one_split": sum(1 for s in splits_by_author.values() if len(s) > 1),
        "validation_posts_with_author_in_train": beside["validation"],
        "test_posts_with_author_in_train": beside["test"],
    }
