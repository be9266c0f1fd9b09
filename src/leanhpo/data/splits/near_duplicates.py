"""Near-duplicate posts: Jaccard similarity of their word 5-shingles, found exactly.

A repost (the same text with "Edit: thanks" added, or copied whole) on both sides of a split lets
a model be tested on a post it trained on. Posts are normalised (Unicode NFKC, case folded, words
only), cut into overlapping 5-word shingles, and a pair whose shingle sets have a Jaccard
similarity of at least the threshold is a near-duplicate: 5-word shingles and 0.8 are the choice
of Lee et al. (2022, "Deduplicating training data makes language models better").

Written here rather than taken from datasketch (MinHash LSH), the well-kept library for this:
MinHash estimates the similarity, so a pair just above the threshold can be missed, and the
split promises that no near-duplicate pair is split. The exact join below (prefix filtering,
Bayardo et al. 2007, "Scaling up all pairs similarity search") checks every candidate pair with
the true Jaccard and still compares few pairs: a pair above the threshold must share one of the
rarest shingles of each post, and most of those occur in one post only.
"""

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

SHINGLE_WORDS = 5
DEFAULT_JACCARD = 0.8
WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class NearDuplicate:
    """Two posts (first < second by post_id) and the Jaccard similarity of their shingles."""

    first: str
    second: str
    jaccard: float


def shingles(text: str, words: int = SHINGLE_WORDS) -> frozenset[tuple[str, ...]]:
    """The set of `words`-word shingles of the normalised text; a shorter text is one shingle."""
    tokens = WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    if not tokens:
        return frozenset()
    if len(tokens) <= words:
        return frozenset({tuple(tokens)})
    return frozenset(tuple(tokens[i : i + words]) for i in range(len(tokens) - words + 1))


def jaccard(first: frozenset, second: frozenset) -> float:
    union = len(first | second)
    return len(first & second) / union if union else 0.0


def find_near_duplicates(
    texts: dict[str, str], threshold: float = DEFAULT_JACCARD
) -> list[NearDuplicate]:
    """Every pair of posts whose shingle Jaccard is >= threshold, sorted by post ids.

    Posts without a word have no shingles and match nothing.
    """
    cutoff = Fraction(str(threshold))  # exact: 0.8 is 4/5, not 0.8000000000000000444
    sets = {post_id: shingles(text) for post_id, text in texts.items()}
    frequency: Counter[tuple[str, ...]] = Counter()
    for shingle_set in sets.values():
        frequency.update(shingle_set)
    # Rarest first (ties by the shingle itself, so the order is the same on every machine).
    rank = {s: i for i, s in enumerate(sorted(frequency, key=lambda s: (frequency[s], s)))}
    records = sorted(
        ((sorted(rank[s] for s in shingle_set), post_id) for post_id, shingle_set in sets.items()),
        key=lambda record: (len(record[0]), record[1]),
    )
    index: dict[int, list[int]] = {}
    found: list[NearDuplicate] = []
    for position, (tokens, post_id) in enumerate(records):
        if not tokens:
            continue
        candidates: set[int] = set()
        for token in tokens[: _prefix_length(len(tokens), cutoff)]:
            candidates.update(index.setdefault(token, []))
            index[token].append(position)
        for other in sorted(candidates):
            other_tokens, other_id = records[other]
            # Records come smallest first, so `other` is no larger than this one.
            if len(other_tokens) < cutoff * len(tokens):
                continue
            shared = len(sets[post_id] & sets[other_id])
            union = len(tokens) + len(other_tokens) - shared
            if shared >= cutoff * union:
                first, second = sorted((post_id, other_id))
                found.append(NearDuplicate(first, second, shared / union))
    return sorted(found, key=lambda pair: (pair.first, pair.second))


def _prefix_length(size: int, cutoff: Fraction) -> int:
    """A pair with Jaccard >= t shares at least ceil(t * size) shingles with each post, so it
    shares one among the first size - ceil(t * size) + 1 of each (in the common order)."""
    return size - math.ceil(cutoff * size) + 1
