"""Split ratios and seed: checked once, turned into per-split counts, or a message that names
the key to change. Shared by the post split and the group split."""

from typing import Any

from leanhpo.data.errors import DataError

SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")
RATIO_TOLERANCE = 1e-6
# The sample generator also shuffles post indices with Random(seed); with the same seed and the
# same number of posts an unsalted split reproduced that permutation and put every symptom-free
# post in train. A string seed is hashed with SHA-512 by `random`, so it is stable everywhere.
SPLIT_SALT = "leanhpo-split"


class EmptySplitError(DataError):
    """Too few posts (or too small a ratio) for three non-empty splits."""

    def __init__(self, message: str, n_posts: int) -> None:
        super().__init__(message)
        self.n_posts = n_posts


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        # random.Random(None) seeds from the clock: the split would differ on every run.
        raise DataError(
            f"Tried to split with seed {seed!r}; it must be an integer. "
            "Fix: set data.split.seed to e.g. 42."
        )
    return seed


def check_ratios(ratios: dict[str, Any]) -> dict[str, float]:
    """Three non-negative numbers that sum to one, or an error saying which key to change."""
    missing = [name for name in SPLIT_NAMES if name not in ratios]
    if missing:
        raise DataError(
            f"Tried to read the split ratios {dict(ratios)} and found no {missing}. "
            "Fix: set data.split to e.g. {train: 0.8, validation: 0.1, test: 0.1, seed: 42}."
        )
    fractions: dict[str, float] = {}
    for name in SPLIT_NAMES:
        value = ratios[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise DataError(
                f"Tried to read data.split.{name} and found {value!r}; it must be a number "
                "between 0 and 1. Fix: set it to e.g. 0.1."
            )
        fractions[name] = float(value)
    total = sum(fractions.values())
    if abs(total - 1.0) > RATIO_TOLERANCE:
        raise DataError(
            f"Tried to split with ratios {fractions}, which sum to {total:.6g}, not 1. "
            "Fix: change data.split.train, data.split.validation and data.split.test so that "
            "they sum to 1 (e.g. 0.8, 0.1, 0.1)."
        )
    return fractions


def split_counts(n_posts: int, fractions: dict[str, float]) -> dict[str, int]:
    """round(n * ratio) posts for train and validation, the rest for test; none may be empty."""
    counts = {
        "train": round(n_posts * fractions["train"]),
        "validation": round(n_posts * fractions["validation"]),
    }
    counts["test"] = n_posts - counts["train"] - counts["validation"]
    for name in SPLIT_NAMES:
        if counts[name] <= 0:
            raise EmptySplitError(_empty_split_message(name, n_posts, fractions, counts), n_posts)
    return counts


def _empty_split_message(
    name: str, n_posts: int, fractions: dict[str, float], counts: dict[str, int]
) -> str:
    needed = 1.0 / n_posts if n_posts else 1.0
    shown = ", ".join(f"{key}={fractions[key]:g}" for key in SPLIT_NAMES)
    planned = ", ".join(f"{key}={max(counts[key], 0)}" for key in SPLIT_NAMES)
    return (
        f"Tried to split {n_posts} posts with ratios {shown} and got an empty '{name}' split "
        f"(posts per split: {planned}). Fix: raise data.split.{name} to at least "
        f"{needed:.3g} (and lower another ratio so they sum to 1), or use more posts "
        "(data.sample_posts for the sample source)."
    )
