"""How often a split leaves a symptom without validation or test positives: post split against
the author split, over many split seeds.

    .venv/bin/python bench/splits.py [--seeds 200] [--out bench/results/splits.json]

Data (fixed; only the split seed varies, 0 .. seeds-1):
- ``sample-400``: the demo's data (config.yaml: 400 short sample posts, seed 42);
- ``sample-1484``: the sample at ReDSM5's size (1,484 posts: 501 authors, the largest with 68);
- ``redsm5-shaped``: the same posts with PSYCHOMOTOR thinned to ReDSM5's 35 positive posts
  (the sample has 5 % of posts per rare symptom, the real data 2.4 % for PSYCHOMOTOR), the
  positives kept chosen at random (seeded): the label skew that makes the real split fragile.

Splits (80/10/10, leanhpo.data.splits.split_dataset):
- ``post``: ``group_by: none``, the post-level split of leanhpo before issue 25;
- ``author-random``: whole author groups (with near-duplicates) in random order, filled by size,
  no stratification (the stratification with no labels): what grouping alone does;
- ``author``: ``group_by: author``, the default: groups, stratified, min_positives 3.

Per split, the share of seeds where some symptom has no positive post in validation (test), and
fewer than 3; the mean number of (symptom, split) cells below 3; how far the held-out sizes
stray from their ratio; and what leaks (near-duplicate pairs split, test posts whose author has
a post in train). Prints JSON and writes ``bench/results/splits.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import benchenv

from leanhpo.data import generate_sample, load_redsm5
from leanhpo.data.splits import SPLIT_NAMES, find_near_duplicates, split_dataset
from leanhpo.data.splits.groups import group_posts
from leanhpo.data.splits.stratify import Group, stratify
from leanhpo.data.symptoms import SYMPTOMS

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "splits.json"
DATA_SEED = 42
RATIOS = {"train": 0.8, "validation": 0.1, "test": 0.1}
MIN_POSITIVES = 3
REDSM5_PSYCHOMOTOR = 35
HELD_OUT = ("validation", "test")


def sample_posts(n_posts: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as folder:
        paths = generate_sample(Path(folder), n_posts, seed=DATA_SEED, profile="short")
        posts, _ = load_redsm5(paths["posts_csv"], paths["annotations_csv"])
    return posts


def thin(posts: list[dict], symptom: str, keep: int) -> list[dict]:
    """A copy of the posts with only `keep` positives of `symptom` left (chosen seeded)."""
    index = SYMPTOMS.index(symptom)
    positive = [i for i, post in enumerate(posts) if post["labels"][index]]
    kept = set(random.Random(f"thin:{DATA_SEED}").sample(positive, keep))
    out = []
    for i, post in enumerate(posts):
        labels = list(post["labels"])
        if i in positive and i not in kept:
            labels[index] = 0
        out.append({**post, "labels": labels})
    return out


def split_once(posts: list[dict], method: str, seed: int, duplicates: list) -> dict[str, list]:
    config = {**RATIOS, "seed": seed, "min_positives": MIN_POSITIVES}
    if method == "post":
        return split_dataset(posts, {**config, "group_by": "none"}, duplicates).splits
    if method == "author":
        return split_dataset(posts, {**config, "group_by": "author"}, duplicates).splits
    # author-random: the same groups, placed with every label hidden from the stratification.
    by_id = {post["post_id"]: post for post in posts}
    groups = group_posts(sorted(by_id), duplicates)
    blank = [Group(members[0], len(members), (0,) * len(SYMPTOMS)) for members in groups]
    assignment = stratify(blank, RATIOS, 0, random.Random(f"author-random:{seed}"))
    splits: dict[str, list] = {name: [] for name in SPLIT_NAMES}
    for members in groups:
        splits[assignment[members[0]]] += [by_id[post_id] for post_id in members]
    return splits


def measure(posts: list[dict], method: str, seeds: int, duplicates: list) -> dict[str, Any]:
    stats: dict[str, list[float]] = {
        key: []
        for key in (
            "no_validation_positive",
            "no_test_positive",
            "below_3_validation",
            "below_3_test",
            "cells_below_3",
            "size_error_validation",
            "size_error_test",
            "duplicate_pairs_split",
            "test_posts_with_author_in_train",
        )
    }
    started = time.perf_counter()
    for seed in range(seeds):
        splits = split_once(posts, method, seed, duplicates)
        counts = {
            name: [sum(p["labels"][i] for p in splits[name]) for i in range(len(SYMPTOMS))]
            for name in SPLIT_NAMES
        }
        for name in HELD_OUT:
            stats[f"no_{name}_positive"].append(min(counts[name]) == 0)
            stats[f"below_3_{name}"].append(min(counts[name]) < MIN_POSITIVES)
            target = RATIOS[name] * len(posts)
            stats[f"size_error_{name}"].append(abs(len(splits[name]) - target) / target)
        stats["cells_below_3"].append(
            sum(c < MIN_POSITIVES for name in HELD_OUT for c in counts[name])
        )
        split_of = {p["post_id"]: name for name in SPLIT_NAMES for p in splits[name]}
        stats["duplicate_pairs_split"].append(
            sum(split_of[d.first] != split_of[d.second] for d in duplicates)
        )
        train_authors = {p["post_id"].split("_")[1] for p in splits["train"]}
        stats["test_posts_with_author_in_train"].append(
            sum(p["post_id"].split("_")[1] in train_authors for p in splits["test"])
        )
    result: dict[str, Any] = {
        key: round(statistics.fmean(values), 4) for key, values in stats.items()
    }
    result["max_size_error_held_out"] = round(
        max(stats["size_error_validation"] + stats["size_error_test"]), 4
    )
    result["seconds_per_split"] = round((time.perf_counter() - started) / seeds, 4)
    return result


def describe(posts: list[dict], duplicates: list) -> dict[str, Any]:
    authors: dict[str, int] = {}
    for post in posts:
        author = post["post_id"].split("_")[1]
        authors[author] = authors.get(author, 0) + 1
    return {
        "posts": len(posts),
        "authors": len(authors),
        "single_post_authors": sum(1 for n in authors.values() if n == 1),
        "largest_author_posts": max(authors.values()),
        "near_duplicate_pairs": len(duplicates),
        "positive_posts": {s: sum(p["labels"][i] for p in posts) for i, s in enumerate(SYMPTOMS)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    env = benchenv.environment()
    large = sample_posts(1484)
    datasets = {
        "sample-400": sample_posts(400),
        "sample-1484": large,
        "redsm5-shaped": thin(large, "PSYCHOMOTOR", REDSM5_PSYCHOMOTOR),
    }
    results: dict[str, Any] = {}
    for name, posts in datasets.items():
        duplicates = find_near_duplicates({p["post_id"]: p["text"] for p in posts})
        results[name] = {
            "data": describe(posts, duplicates),
            "splits": {
                method: measure(posts, method, args.seeds, duplicates)
                for method in ("post", "author-random", "author")
            },
        }
        print(json.dumps({name: results[name]}, indent=1), flush=True)
    payload = {
        "benchmark": "splits",
        "command": f"python bench/splits.py --seeds {args.seeds}",
        "seeds": args.seeds,
        "ratios": RATIOS,
        "min_positives": MIN_POSITIVES,
        "data_seed": DATA_SEED,
        "python": platform.python_version(),
        "environment": env,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
