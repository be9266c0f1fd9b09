"""Window pooling (issue 25): does a post's pooled vector drift with its number of windows,
and which pooling trains best.

    .venv/bin/python bench/window_pooling.py [--posts 300] [--train-posts 200] [--epochs 2]
        [--max-length 128] [--data-seeds 42] [--skip-training]

Data: the bundled sample, `data.sample_profile: long_tailed` (post lengths like the real
ReDSM5's), read with `model.long_posts: windows` (window_stride 64, max_windows 64). At
max_length 128 a post has 1 to dozens of windows, so every bucket below is populated.

Part A, drift (no training). The pretrained MiniLM (model id `minilm`, offline) reads every
window of every post (train, validation and test splits); the vector of window i is what the
model hands the window pool: the masked mean of the encoder's last hidden states over the
window's tokens (model.pooling mean, coupling independent). For a post p with windows
v_1..v_n (vectors in R^H) and a pooling k, P_k(p) is the pooled vector, and

    drift_k(p) = (1/H) * sum_d ( P_k(p)[d] - m(p)[d] ),   m(p) = (1/n) * sum_i v_i

the mean over features of how far the pooled vector lies above the post's own mean window
vector. Reported: the mean of drift_k(p) over the posts of each bucket of windows per post
(1, 2-3, 4-7, 8+). A pooling that reads a post's content without regard to its length has
drift 0 at every n; max over windows can only grow with n (the elementwise max of n draws
rises with n), which is the length bias the issue measured. Also reported per bucket:
`level_k`, the mean over features of P_k(p) itself, minus that of the 1-window posts (the
issue's other view; for mean it shows how far longer posts differ in content, with no
pooling effect). Attention is freshly initialised (WindowPool's scorer under torch seed 0):
its scores are small, so its softmax over a post's windows is near uniform, and
`attention_max_weight_x_n` (mean over multi-window posts of n times the largest weight; 1 =
uniform) says how near. `feature_std_across_posts` (the mean over features of the spread of
m(p) across posts) is the scale to read the drifts against.

Part B, quality. For each data seed and each pooling, one MiniLM model with the default
structure (windows at --max-length) is trained from the same initialisation and in the same
data order, as bench/windows_quality.py does; the epoch with the best validation criteria
macro-F1 is evaluated on the test split. Also reported: criteria macro-F1 per bucket of
windows per post (validation and test; few posts per bucket, so noisy), and the trained
model's drift_k on the validation and test posts (its own pooling over its own window
vectors). Prints JSON and writes bench/results/window_pooling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import benchenv
import numpy as np
import torch

from leanhpo.config import Config
from leanhpo.data import load_split, prepare_dataset
from leanhpo.models.pooling import WINDOW_POOLINGS, WindowPool
from leanhpo.training.answer_length import resolve_answer_tokens
from leanhpo.training.evaluation import evaluate, resolve_null_threshold
from leanhpo.training.features import EncodedSplit
from leanhpo.training.loop import epoch_shuffle_seed, make_loader, to_device, train_one_epoch
from leanhpo.training.metrics import criteria_metrics
from leanhpo.training.setup import build_network, build_optimisation, encode
from leanhpo.trial.memory import replay_config

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "validation", "test")
BUCKETS = ("1", "2-3", "4-7", "8+")
EVAL_BATCH = 16


def bucket(n_windows: int) -> str:
    if n_windows == 1:
        return "1"
    return "2-3" if n_windows <= 3 else "4-7" if n_windows <= 7 else "8+"


def load_posts(posts: int, data_seed: int) -> dict[str, list]:
    with tempfile.TemporaryDirectory() as folder:
        data = {
            "source": "sample",
            "sample_posts": posts,
            "sample_profile": "long_tailed",
            "split": {"seed": data_seed},
        }
        prepare_dataset(Config.from_dict({"data": data}).to_dict()["data"], Path(folder))
        return {name: load_split(Path(folder), name) for name in SPLITS}


def make_config(options: argparse.Namespace, window_pooling: str) -> Config:
    return Config.from_dict(
        {
            "model": {
                "id": options.model,
                "max_length": options.max_length,
                "long_posts": "windows",
                "window_pooling": window_pooling,
            },
            "train": {"device": "cpu", "epochs": options.epochs, "batch_size": 8},
        }
    )


@torch.no_grad()
def window_vectors(network: Any, split: EncodedSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """Every window's vector as the window pool receives it [W, H], and each window's post
    ordinal [W] (posts numbered 0.. in split order). Captured by a hook on the window pool, so
    the vectors are exactly the model's, whatever its pooling and coupling."""
    captured: list[torch.Tensor] = []
    hook = network.model.window_pool.register_forward_pre_hook(
        lambda _module, args: captured.append(args[0].float().cpu())
    )
    network.model.eval()
    try:
        loader = make_loader(split, EVAL_BATCH, network.pad_token_id, shuffle_seed=None)
        for batch in loader:
            batch = to_device(batch, network.device)
            network.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                span_mask=batch["span_mask"],
                token_type_ids=batch.get("token_type_ids"),
                window_owner=batch["window_owner"],
            )
    finally:
        hook.remove()
    posts = [example.post_index for example in split.examples]
    ordinal = {post: i for i, post in enumerate(dict.fromkeys(posts))}
    return torch.cat(captured), torch.tensor([ordinal[p] for p in posts])


def drift_by_bucket(
    vectors: torch.Tensor, owner: torch.Tensor, pools: dict[str, WindowPool]
) -> dict[str, Any]:
    """drift_k and level_k (see the module docstring) per bucket, for each pool in `pools`."""
    n_windows = torch.bincount(owner)
    mean_window = WindowPool("mean", vectors.shape[-1])(vectors, owner)
    buckets = np.array([bucket(int(n)) for n in n_windows])
    result: dict[str, Any] = {
        "posts": {b: int((buckets == b).sum()) for b in BUCKETS},
        # the scale to read the drifts against: a feature's spread across posts
        "feature_std_across_posts": round(float(mean_window.std(0).mean()), 4),
    }
    for kind, pool in pools.items():
        with torch.no_grad():
            pooled = pool(vectors, owner)
        drift = (pooled - mean_window).mean(-1).numpy()
        level = pooled.mean(-1).numpy()
        base = level[buckets == "1"].mean()
        result[kind] = {
            "drift": {b: round(float(drift[buckets == b].mean()), 5) for b in BUCKETS},
            "level": {b: round(float(level[buckets == b].mean() - base), 5) for b in BUCKETS},
        }
    return result


def attention_uniformity(pool: WindowPool, vectors: torch.Tensor, owner: torch.Tensor) -> float:
    """Mean over multi-window posts of n x the largest softmax weight (1 = uniform)."""
    assert pool.score is not None
    with torch.no_grad():
        scores = pool.score(vectors).squeeze(-1)
    ratios = []
    for post in range(int(owner.max()) + 1):
        own = scores[owner == post]
        if len(own) > 1:
            ratios.append(float(torch.softmax(own, 0).max()) * len(own))
    return round(float(np.mean(ratios)), 4)


def part_a(posts: dict[str, list], options: argparse.Namespace) -> dict[str, Any]:
    network = build_network(make_config(options, "max"), seed=0)
    config = make_config(options, "max")
    split = encode(network, config, [p for name in SPLITS for p in posts[name]])
    started = time.perf_counter()
    vectors, owner = window_vectors(network, split)
    torch.manual_seed(0)
    pools = {kind: WindowPool(kind, vectors.shape[-1]) for kind in WINDOW_POOLINGS}
    result = drift_by_bucket(vectors, owner, pools)
    result["attention_max_weight_x_n"] = attention_uniformity(pools["attention"], vectors, owner)
    result["windows"] = len(split.examples)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def f1_by_bucket(evaluation: Any, split: EncodedSplit) -> dict[str, Any]:
    counts = Counter(example.post_index for example in split.examples)
    buckets = np.array([bucket(counts[i]) for i in range(len(split.posts))])
    out: dict[str, Any] = {}
    for b in BUCKETS:
        rows = buckets == b
        if rows.any():
            metrics = criteria_metrics(evaluation.labels[rows], evaluation.probabilities[rows])
            out[b] = {"posts": int(rows.sum()), "criteria_f1_macro": metrics["f1_macro"]}
    return out


def train(kind: str, posts: dict[str, list], options: argparse.Namespace) -> dict[str, Any]:
    config = make_config(options, kind)
    network = build_network(config, seed=0)
    config = resolve_answer_tokens(config, network.tokenizer, posts["train"])  # as a trial does
    splits = {name: encode(network, config, items) for name, items in posts.items()}
    optimisation = build_optimisation(network, config, splits["train"])
    config = replay_config(network, optimisation, config, splits["train"], None)  # auto rows
    best: dict[str, Any] = {"score": -1.0}
    started = time.perf_counter()
    for epoch in range(1, options.epochs + 1):
        loader = make_loader(splits["train"], 8, network.pad_token_id, epoch_shuffle_seed(0, epoch))
        train_one_epoch(
            network.model, loader, optimisation.optimizer, optimisation.scheduler,
            config.train, network.device, optimisation.class_weights, None,
        )  # fmt: skip
        results = {}
        for name in ("validation", "test"):
            results[name] = evaluate(
                network.model, splits[name], config.model, config.train, network.device,
                network.pad_token_id, optimisation.class_weights, None,
            )  # fmt: skip
        threshold = resolve_null_threshold(config.model, results["validation"])
        validation = results["validation"].metrics("", threshold)
        score = validation["criteria_f1_macro"] or 0.0
        print(f"{kind} epoch {epoch}: validation criteria macro-F1 {score:.4f}", file=sys.stderr)
        if score > best["score"]:
            test = results["test"].metrics("", threshold)
            best = {
                "score": score,
                "epoch": epoch,
                "validation_criteria_f1_macro": score,
                "test_criteria_f1_macro": test["criteria_f1_macro"],
                "validation_criteria_pr_auc_macro": validation["criteria_pr_auc_macro"],
                "test_criteria_pr_auc_macro": test["criteria_pr_auc_macro"],
                "by_windows": {
                    name: f1_by_bucket(results[name], splits[name])
                    for name in ("validation", "test")
                },
            }
            held_out = encode(network, config, posts["validation"] + posts["test"])
            vectors, owner = window_vectors(network, held_out)
            best["trained_drift"] = drift_by_bucket(
                vectors, owner, {kind: network.model.window_pool.cpu()}
            )
    best["seconds"] = round(time.perf_counter() - started, 1)
    best["windows"] = {name: len(split.examples) for name, split in splits.items()}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=300, help="posts for part A (drift)")
    parser.add_argument("--train-posts", type=int, default=200, help="posts for part B")
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--skip-training", action="store_true", help="part A only")
    options = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    env = benchenv.environment()
    drift = part_a(load_posts(options.posts, options.data_seeds[0]), options)
    print(json.dumps({"drift": drift}, indent=1), file=sys.stderr)
    quality: dict[str, Any] = {}
    if not options.skip_training:
        for data_seed in options.data_seeds:
            posts = load_posts(options.train_posts, data_seed)
            quality[str(data_seed)] = {
                kind: train(kind, posts, options) for kind in WINDOW_POOLINGS
            }
            print(json.dumps({data_seed: quality[str(data_seed)]}, indent=1), file=sys.stderr)
    output = {
        "command": "python bench/window_pooling.py " + " ".join(sys.argv[1:]),
        "environment": env,
        "model": options.model,
        "max_length": options.max_length,
        "window_stride": 64,
        "posts": options.posts,
        "train_posts": options.train_posts,
        "epochs": options.epochs,
        "threads": torch.get_num_threads(),
        "drift": drift,
        "quality": quality,
    }
    text = json.dumps(output, indent=2)
    print(text)
    (REPO / "bench" / "results" / "window_pooling.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
