"""Authors for the sample generator: who wrote which post, their style, and their reposts.

The real ReDSM5 has 552 authors for 1,484 posts: 303 wrote one post, one wrote 68. An author's
posts share a style and a label history, and some are near-copies of each other. The sample
copies that shape so that a split by post leaks on it as on the real data:

- sizes: one author holds TOP_AUTHOR_SHARE of the posts; every other author wrote one post with
  probability SINGLE_POST_SHARE, else 2 to MAX_AUTHOR_SHARE x n posts drawn from a power law
  (exponent AUTHOR_SIZE_EXPONENT). Measured over 100 seeds at 1,484 posts: 565 authors, 55 %
  with one post, the second largest with 28;
- label history: an author's first post is drawn at random, and one of its symptoms becomes the
  author's theme: each further post of the author shows it with probability LABEL_CONSISTENCY
  (or more, by chance);
- style: an author of STYLED_MIN_POSTS or more signs every post the same way and mentions the
  same detail about their life in most of them (AUTHOR_DETAIL_RATE);
- reposts: an author of REPOST_MIN_POSTS or more has REPOST_SHARE of their posts (at least one,
  at most MAX_REPOSTS) replaced by a copy of another of their posts, with a short note first or
  last, or none.

Everything here draws from its own seeded Random, so the posts themselves are those of v3.
"""

import random
from dataclasses import dataclass

from leanhpo.data import sample_templates as tpl

TOP_AUTHOR_SHARE = 0.046  # 68 of 1,484
MAX_AUTHOR_SHARE = 0.02
SINGLE_POST_SHARE = 0.55  # 303 of 552 authors
AUTHOR_SIZE_EXPONENT = 2.2
LABEL_CONSISTENCY = 0.7
STYLED_MIN_POSTS = 3
AUTHOR_DETAIL_RATE = 0.6
REPOST_MIN_POSTS = 4
REPOST_SHARE = 0.1
MAX_REPOSTS = 3
REPOST_NOTE_WEIGHTS = (0.25, 0.35, 0.4)  # no note, a note first, a note last
FIRST_AUTHOR_NUMBER = 1


@dataclass(frozen=True)
class Repost:
    """Post `target` becomes a copy of post `source` (same author), with an optional note."""

    target: int
    source: int
    note: str | None
    note_first: bool


def author_sizes(rng: random.Random, n_posts: int) -> list[int]:
    """Posts per author, largest author first; they sum to n_posts."""
    top = max(1, round(TOP_AUTHOR_SHARE * n_posts))
    cap = max(2, round(MAX_AUTHOR_SHARE * n_posts))
    choices = list(range(2, cap + 1))
    weights = [size**-AUTHOR_SIZE_EXPONENT for size in choices]
    sizes, total = [min(top, n_posts)], min(top, n_posts)
    while total < n_posts:
        size = 1 if rng.random() < SINGLE_POST_SHARE else rng.choices(choices, weights)[0]
        size = min(size, n_posts - total)
        sizes.append(size)
        total += size
    return sizes


def assign_authors(
    rng: random.Random, symptom_sets: list[list[str]], sizes: list[int]
) -> list[int]:
    """The author index of every post: each author's posts tend to share symptoms."""
    free = list(range(len(symptom_sets)))
    position = {post: index for index, post in enumerate(free)}
    by_symptom: dict[str, list[int]] = {}
    for post, symptoms in enumerate(symptom_sets):
        for symptom in symptoms:
            by_symptom.setdefault(symptom, []).append(post)
    author_of = [-1] * len(symptom_sets)

    def take(post: int) -> int:
        last = free.pop()  # swap-remove keeps every draw O(1)
        if last != post:
            free[position[post]] = last
            position[last] = position[post]
        del position[post]
        return post

    for author, size in enumerate(sizes):
        first = take(free[rng.randrange(len(free))])
        author_of[first] = author
        theme = rng.choice(symptom_sets[first]) if symptom_sets[first] else None
        for _ in range(size - 1):
            alike: int | None = None
            if theme is not None and rng.random() < LABEL_CONSISTENCY:
                alike = _draw_free(rng, by_symptom[theme], position)
            post = free[rng.randrange(len(free))] if alike is None else alike
            author_of[take(post)] = author
    return author_of


def _draw_free(rng: random.Random, pool: list[int], free: dict[int, int]) -> int | None:
    """A random post of `pool` not yet taken; taken ones found on the way are dropped."""
    while pool:
        index = rng.randrange(len(pool))
        if pool[index] in free:
            return pool[index]
        pool[index] = pool[-1]
        pool.pop()
    return None


def styled_authors(sizes: list[int]) -> list[int]:
    return [author for author, size in enumerate(sizes) if size >= STYLED_MIN_POSTS]


def plan_reposts(
    rng: random.Random, author_of: list[int], sizes: list[int], forum: list[bool]
) -> list[Repost]:
    """Which forum posts of prolific authors become copies of another of their forum posts."""
    posts_by_author: dict[int, list[int]] = {}
    for post, author in enumerate(author_of):
        if forum[post]:
            posts_by_author.setdefault(author, []).append(post)
    reposts = []
    for author, size in enumerate(sizes):
        own = posts_by_author.get(author, [])
        if size < REPOST_MIN_POSTS or len(own) < 2:
            continue
        count = min(len(own) - 1, MAX_REPOSTS, max(1, round(REPOST_SHARE * size)))
        targets = sorted(rng.sample(own, count))
        sources = [post for post in own if post not in targets]
        for target in targets:
            source = rng.choice(sources)
            kind = rng.choices(range(len(REPOST_NOTE_WEIGHTS)), REPOST_NOTE_WEIGHTS)[0]
            notes = tpl.REPOST_NOTES_FIRST if kind == 1 else tpl.REPOST_NOTES_LAST
            note = None if kind == 0 else rng.choice(notes)
            reposts.append(Repost(target, source, note, note_first=kind == 1))
    return reposts


def author_numbers(rng: random.Random, n_authors: int) -> list[int]:
    """Ids in the post ids, shuffled so that an id does not give away an author's size."""
    numbers = list(range(FIRST_AUTHOR_NUMBER, FIRST_AUTHOR_NUMBER + n_authors))
    rng.shuffle(numbers)
    return numbers
