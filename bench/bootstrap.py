"""Time of the study report's bootstrap (every test figure's interval and the baseline test).

    .venv/bin/python bench/bootstrap.py [--posts 150,1500] [--samples 1000] [--repeats 5]
        [--out bench/results/bootstrap.json]

Per size, synthetic test posts are drawn once (seeded): nine labels per post at per-symptom
prevalences from 5 % to 40 % (ReDSM5's range), criteria scores that separate the classes
imperfectly and are rounded to two decimals (ties, as in real outputs), and one evidence pair
per (post, symptom) on a five-sentence post, predicted exactly, partly, wrongly or null, 3 %
of them excluded. Then ``leanhpo.training.bootstrap.bootstrap_test_metrics``, the very call
``evaluate_study`` makes, runs ``--repeats`` times on them with ``time.perf_counter``; the
parts (resample counts, criteria with PR-AUC, evidence, baseline comparison) are timed apart
once more. The median is the figure; min and max show the noise of a shared machine. Goal:
under 2 s for 150 posts and 1,000 resamples. Prints JSON and writes
``bench/results/bootstrap.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchenv
import numpy as np

from leanhpo.metric_names import SYMPTOMS
from leanhpo.training.bootstrap import (
    bootstrap_test_metrics,
    compare_with_baselines,
    criteria_resamples,
    evidence_resamples,
    resample_counts,
)
from leanhpo.training.metrics import EvidenceExample

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "bootstrap.json"
SEED = 42
LEVEL = 0.95
SENTENCES = (
    "I have felt empty and sad for weeks now.",
    "Things I used to love feel pointless.",
    "Most nights I lie awake until four.",
    "Even a shower leaves me exhausted.",
    "Sometimes I wonder if anyone would notice if I was gone.",
)
TEXT = " ".join(SENTENCES)
SPANS = [(TEXT.index(s), TEXT.index(s) + len(s)) for s in SENTENCES]


def synthetic_test_split(n_posts: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.05, 0.4, len(SYMPTOMS))
    labels = (rng.random((n_posts, len(SYMPTOMS))) < prevalence).astype(int)
    scores = np.round(np.clip(0.3 * labels + 0.7 * rng.random(labels.shape), 0, 1), 2)
    examples = []
    for post in range(n_posts):
        for symptom in range(len(SYMPTOMS)):
            gold = SPANS[(post + symptom) % len(SPANS)]
            draw = rng.random()
            if draw < 0.3:
                pred: tuple[int, int] | None = gold
            elif draw < 0.45:
                pred = (gold[0], gold[1] - 8)
            elif draw < 0.6:
                pred = SPANS[(post + symptom + 1) % len(SPANS)]
            else:
                pred = None
            positive = bool(labels[post, symptom])
            examples.append(
                EvidenceExample(TEXT, (gold,) if positive else (), pred, rng.random() < 0.03)
            )
    return {
        "labels": labels,
        "scores": scores,
        "examples": examples,
        "pair_posts": np.repeat(np.arange(n_posts), len(SYMPTOMS)),
        "train_prevalence": prevalence,
    }


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def run_size(n_posts: int, samples: int, repeats: int) -> dict[str, Any]:
    data = synthetic_test_split(n_posts, SEED)
    args = (
        data["labels"],
        data["scores"],
        data["examples"],
        data["pair_posts"],
        data["train_prevalence"],
    )
    times = [
        timed(lambda: bootstrap_test_metrics(*args, samples, LEVEL, SEED))[0]
        for _ in range(repeats)
    ]
    counts_s, counts = timed(lambda: resample_counts(n_posts, samples, SEED))
    criteria_s, criteria = timed(lambda: criteria_resamples(data["labels"], data["scores"], counts))
    evidence_s, _ = timed(lambda: evidence_resamples(data["examples"], data["pair_posts"], counts))
    baseline_s, comparison = timed(
        lambda: compare_with_baselines(
            criteria["f1_macro"], 0.0, data["labels"], data["train_prevalence"], counts, LEVEL
        )
    )
    return {
        "posts": n_posts,
        "pairs": len(data["examples"]),
        "samples": samples,
        "seconds_median": statistics.median(times),
        "seconds_min": min(times),
        "seconds_max": max(times),
        "parts_seconds": {
            "resample_counts": counts_s,
            "criteria_with_pr_auc": criteria_s,
            "evidence": evidence_s,
            "baseline_comparison": baseline_s,
        },
        "strongest_baseline": comparison["baseline"],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--posts", default="150,1500", help="comma-separated test split sizes")
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per size")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.samples < 1 or args.repeats < 1:
        parser.error("--samples and --repeats must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    sizes = [int(size) for size in args.posts.split(",") if size]
    environment = benchenv.environment({"level": LEVEL, "seed": SEED, "repeats": args.repeats})
    rows = [run_size(n, args.samples, args.repeats) for n in sizes]
    environment["load_average_end"] = os.getloadavg()
    report = {"environment": environment, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
