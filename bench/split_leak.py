"""What the author leak is worth: test macro-F1 of the same model trained on a post split and on
an author split of the same sample, same seeds and budget.

    .venv/bin/python bench/split_leak.py [--sample-posts 400] [--epochs 4] [--max-length 128]
        [--seeds 0 1 2] [--threads 2] [--out bench/results/split_leak.json]

The data is config.yaml's demo sample (400 short posts with authors). For each seed s, the
sample is generated with seed s (``data.split.seed`` seeds both the sample and the split), split
80/10/10 both ways with seed s, and the network is trained with seed s:

- ``post``: ``data.split.group_by: none``, the post-level split of leanhpo before issue 25;
- ``author``: ``group_by: author``, the default (authors and near-duplicates together,
  stratified).

The model is config.yaml's with the demo's warm-start parameters (study.enqueue[0]: a linear
criteria head on attention pooling, coupled, weighted BCE, learning rates 1e-4 / 1e-2, batch 8),
MiniLM, ``long_posts: truncate`` at ``--max-length``, fp32 on the CPU. After every epoch validation
and test are scored; the epoch with the best validation macro-F1 is selected, with per-symptom
decision thresholds tuned on that validation pass (``decision_threshold: auto``, as a study does),
and its test macro-F1 is the figure. The post split's test posts are also scored apart by whether
their author has a post in train ("seen" authors: the leak) or not.

The same comparison runs first with a learner that trains in a second, over ``--bow-seeds``
seeds (50): word uni- and bigram counts and one logistic regression per symptom (scikit-learn),
decided at 0.5; ``--bow-only`` skips the MiniLM runs. Prints a table and writes
``bench/results/split_leak.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import benchenv
import numpy as np
import torch
import yaml

from leanhpo.config import Config, apply_params, deep_merge, validate_config
from leanhpo.data import generate_sample, load_redsm5, load_split, prepare_dataset
from leanhpo.data.splits import find_near_duplicates, split_dataset
from leanhpo.training.evaluation import evaluate, resolve_decision_thresholds
from leanhpo.training.metrics import criteria_metrics
from leanhpo.training.setup import build_network, build_optimisation, encode
from leanhpo.trial.epoch import train_epoch

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path("bench") / "results" / "split_leak.json"
SPLITS = {"post": "none", "author": "author"}


def make_config(args: argparse.Namespace, group_by: str, seed: int) -> Config:
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    warm_start = base["study"]["enqueue"][0]
    overrides = {
        "data": {
            "source": "sample",
            "sample_posts": args.sample_posts,
            "sample_profile": "short",
            "split": {"seed": seed, "group_by": group_by},
        },
        "model": {"id": "minilm", "max_length": args.max_length, "long_posts": "truncate"},
        "train": {"epochs": args.epochs, "device": "cpu", "amp": False},
    }
    config = validate_config(deep_merge(base, overrides))
    return Config.from_dict(apply_params(config, warm_start))


def scores(labels: np.ndarray, probabilities: np.ndarray, cuts: np.ndarray) -> dict[str, float]:
    metrics = criteria_metrics(labels, probabilities, cuts)
    return {key: float(metrics[key]) for key in ("f1_macro", "f1_micro")}


def one_run(args: argparse.Namespace, split: str, seed: int) -> dict[str, Any]:
    config = make_config(args, SPLITS[split], seed)
    with tempfile.TemporaryDirectory(prefix="leanhpo-bench-leak-") as name:
        report = prepare_dataset(config.to_dict()["data"], Path(name))
        posts = {part: load_split(Path(name), part) for part in ("train", "validation", "test")}
    train_authors = {post["post_id"].split("_")[1] for post in posts["train"]}
    seen = np.array([post["post_id"].split("_")[1] in train_authors for post in posts["test"]])
    started = time.perf_counter()
    network = build_network(config, seed)
    encoded = {part: encode(network, config, p) for part, p in posts.items()}
    optimisation = build_optimisation(network, config, encoded["train"])
    epochs = []
    for epoch in range(1, config.train.epochs + 1):
        train_epoch(network, optimisation, config, seed, epoch, encoded["train"], "train")
        passes = {
            part: evaluate(
                network.model,
                encoded[part],
                config.model,
                config.train,
                network.device,
                network.pad_token_id,
                optimisation.class_weights,
            )
            for part in ("validation", "test")
        }
        cuts = resolve_decision_thresholds(config.model, passes["validation"])
        test = passes["test"]
        expected = np.array([post["labels"] for post in posts["test"]])
        assert np.array_equal(test.labels, expected), "evaluation rows out of post order"
        row = {
            "epoch": epoch,
            "validation": scores(
                passes["validation"].labels, passes["validation"].probabilities, cuts
            ),
            "test": scores(test.labels, test.probabilities, cuts),
        }
        for name, mask in (("test_seen_authors", seen), ("test_new_authors", ~seen)):
            if mask.any():
                row[name] = scores(test.labels[mask], test.probabilities[mask], cuts)
        epochs.append(row)
        print(
            f"{split} seed {seed} epoch {epoch}: val {row['validation']['f1_macro']:.3f} "
            f"test {row['test']['f1_macro']:.3f}",
            flush=True,
        )
    best = max(epochs, key=lambda r: (r["validation"]["f1_macro"], -r["epoch"]))
    return {
        "split": split,
        "seed": seed,
        "posts": {part: len(p) for part, p in posts.items()},
        "test_posts_with_author_in_train": int(seen.sum()),
        "near_duplicate_pairs_across_splits": report["split"]["near_duplicates"][
            "pairs_across_splits"
        ],
        "seconds": round(time.perf_counter() - started, 1),
        "selected": best,
        "epochs": epochs,
    }


def bag_of_words(args: argparse.Namespace) -> dict[str, Any]:
    """The same comparison with a learner that trains in a second, over many more seeds: word
    counts (uni- and bigrams) and one logistic regression per symptom, decided at 0.5."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    scores: dict[str, list[float]] = {split: [] for split in SPLITS}
    seen_new: dict[str, list[float]] = {"seen": [], "new": []}
    for seed in range(args.bow_seeds):
        data = make_config(args, "author", seed).to_dict()["data"]
        with tempfile.TemporaryDirectory(prefix="leanhpo-bench-leak-") as name:
            paths = generate_sample(Path(name), args.sample_posts, seed, data["sample_profile"])
            every, _ = load_redsm5(paths["posts_csv"], paths["annotations_csv"])
        duplicates = find_near_duplicates({post["post_id"]: post["text"] for post in every})
        for split in SPLITS:
            split_cfg = {**data["split"], "seed": seed, "group_by": SPLITS[split]}
            posts = split_dataset(every, split_cfg, duplicates).splits
            vectorizer = CountVectorizer(ngram_range=(1, 2), min_df=2)
            x_train = vectorizer.fit_transform([post["text"] for post in posts["train"]])
            x_test = vectorizer.transform([post["text"] for post in posts["test"]])
            y_train = np.array([post["labels"] for post in posts["train"]])
            y_test = np.array([post["labels"] for post in posts["test"]])
            predicted = np.stack(
                [
                    LogisticRegression(max_iter=2000).fit(x_train, y_train[:, j]).predict(x_test)
                    if y_train[:, j].any()
                    else np.zeros(len(y_test), dtype=int)
                    for j in range(y_train.shape[1])
                ],
                axis=1,
            )
            scores[split].append(
                float(f1_score(y_test, predicted, average="macro", zero_division=0))
            )
            if split == "post":
                authors = {post["post_id"].split("_")[1] for post in posts["train"]}
                seen = np.array([p["post_id"].split("_")[1] in authors for p in posts["test"]])
                for key, mask in (("seen", seen), ("new", ~seen)):
                    seen_new[key].append(
                        float(
                            f1_score(
                                y_test[mask], predicted[mask], average="micro", zero_division=0
                            )
                        )
                    )
    summary = {
        split: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1))}
        for split, v in scores.items()
    }
    gaps = np.array(scores["post"]) - np.array(scores["author"])
    print(
        f"bag of words, {args.bow_seeds} seeds: test macro-F1 post {summary['post']['mean']:.3f} "
        f"author {summary['author']['mean']:.3f}, gap {gaps.mean():.3f} "
        f"(post > author in {int((gaps > 0).sum())} seeds); post split micro-F1 seen authors "
        f"{np.mean(seen_new['seen']):.3f}, new authors {np.mean(seen_new['new']):.3f}",
        flush=True,
    )
    return {
        "seeds": args.bow_seeds,
        "test_f1_macro": summary,
        "gap_post_minus_author": {"mean": float(gaps.mean()), "sd": float(gaps.std(ddof=1))},
        "seeds_post_better": int((gaps > 0).sum()),
        "post_split_test_f1_micro_by_author": {k: float(np.mean(v)) for k, v in seen_new.items()},
        "per_seed": scores,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample-posts", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bow-seeds", type=int, default=50)
    parser.add_argument("--bow-only", action="store_true", help="skip the MiniLM runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    env = benchenv.environment()
    bow = bag_of_words(args) if args.bow_seeds else None
    seeds = [] if args.bow_only else args.seeds
    runs = [one_run(args, split, seed) for seed in seeds for split in SPLITS]
    env["load_average_end"] = os.getloadavg()
    mean = (
        {
            split: {
                key: float(
                    np.mean([r["selected"][key]["f1_macro"] for r in runs if r["split"] == split])
                )
                for key in ("validation", "test")
            }
            for split in SPLITS
        }
        if runs
        else None
    )
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    command = (
        f"python bench/split_leak.py --sample-posts {args.sample_posts} --epochs {args.epochs} "
        f"--max-length {args.max_length} --seeds {' '.join(map(str, args.seeds))} "
        f"--bow-seeds {args.bow_seeds}" + (" --bow-only" if args.bow_only else "")
    )
    result = {
        "benchmark": "split_leak",
        "command": command,
        "environment": env,
        "settings": settings,
        "mean_selected_f1_macro": mean,
        "bag_of_words": bow,
        "runs": runs,
    }
    out = args.out if args.out.is_absolute() else REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| split | seed | epoch | val macro-F1 | test macro-F1 | seen / new authors |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        s = run["selected"]
        parts = [s.get(k, {}).get("f1_macro") for k in ("test_seen_authors", "test_new_authors")]
        shown = " / ".join("-" if v is None else f"{v:.3f}" for v in parts)
        print(
            f"| {run['split']} | {run['seed']} | {s['epoch']} | {s['validation']['f1_macro']:.3f} "
            f"| {s['test']['f1_macro']:.3f} | {shown} |"
        )
    print(f"mean over seeds: {json.dumps(mean)}")


if __name__ == "__main__":
    main()
