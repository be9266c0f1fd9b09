"""Long posts, quality: the same model trained and evaluated with truncation and with windows.

    .venv/bin/python bench/windows_quality.py [--posts 300] [--data-seeds 42 7] [--epochs 3]

For each data seed (a different generated sample and split: data the other runs never saw) and
each mode, one MiniLM model with the default structure is trained from the same initialisation
and data order; the epoch with the best validation criteria macro-F1 is evaluated on the test
split, as a study does. Evidence metrics are over the pairs the mode reaches, so the pairs
truncation excludes are also counted (`evidence_n_excluded`). Prints JSON and writes
bench/results/windows_quality.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import benchenv
import torch

from leanhpo.config import Config
from leanhpo.data import load_split, prepare_dataset
from leanhpo.training.answer_length import resolve_answer_tokens
from leanhpo.training.evaluation import evaluate, resolve_null_threshold
from leanhpo.training.loop import epoch_shuffle_seed, make_loader, train_one_epoch
from leanhpo.training.setup import build_network, build_optimisation, encode
from leanhpo.trial.memory import replay_config

REPO = Path(__file__).resolve().parents[1]
REPORTED = (
    "criteria_f1_macro",
    "criteria_pr_auc_macro",
    "criteria_f1_micro",
    "evidence_f1",
    "evidence_exact_match",
    "evidence_null_span_accuracy",
    "evidence_n_positive_pairs",
    "evidence_n_excluded",
)


def reported(flat: dict) -> dict:
    """The REPORTED metrics, plus evidence F1 over every gold pair: a pair the mode cannot
    reach (excluded for length) scores 0, as it would for a reader of the whole post."""
    values = {k: flat.get(k) for k in REPORTED}
    positive, excluded = values["evidence_n_positive_pairs"], values["evidence_n_excluded"]
    if values["evidence_f1"] is not None and positive + excluded:
        values["evidence_f1_all_gold_pairs"] = (
            values["evidence_f1"] * positive / (positive + excluded)
        )
    return values


def run(mode: str, posts: dict[str, list], options: argparse.Namespace) -> dict:
    config = Config.from_dict(
        {
            "model": {"id": options.model, "max_length": options.max_length, "long_posts": mode},
            "train": {"device": "cpu", "epochs": options.epochs, "batch_size": 8},
        }
    )
    network = build_network(config, seed=0)
    config = resolve_answer_tokens(config, network.tokenizer, posts["train"])  # as a trial does
    splits = {name: encode(network, config, items) for name, items in posts.items()}
    optimisation = build_optimisation(network, config, splits["train"])
    config = replay_config(network, optimisation, config, splits["train"], None)  # auto rows
    best: dict = {"score": -1.0}
    started = time.perf_counter()
    for epoch in range(1, options.epochs + 1):
        loader = make_loader(splits["train"], 8, network.pad_token_id, epoch_shuffle_seed(0, epoch))
        train_one_epoch(
            network.model, loader, optimisation.optimizer, optimisation.scheduler,
            config.train, network.device, optimisation.class_weights, f"{mode} {epoch}",
        )  # fmt: skip
        results = {}
        for name in ("validation", "test"):
            results[name] = evaluate(
                network.model, splits[name], config.model, config.train, network.device,
                network.pad_token_id, optimisation.class_weights, name,
            )  # fmt: skip
        threshold = resolve_null_threshold(config.model, results["validation"])
        validation = results["validation"].metrics("", threshold)
        score = validation["criteria_f1_macro"] or 0.0
        if score > best["score"]:
            test = results["test"].metrics("", threshold)
            best = {
                "score": score,
                "epoch": epoch,
                "validation": reported(validation),
                "test": reported(test),
            }
    best["seconds"] = round(time.perf_counter() - started, 1)
    best["rows"] = {name: len(split.examples) for name, split in splits.items()}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=300)
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[42, 7])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--max-length", type=int, default=256)
    options = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    env = benchenv.environment()
    results = {}
    for data_seed in options.data_seeds:
        with tempfile.TemporaryDirectory() as folder:
            data = {"source": "sample", "sample_posts": options.posts, "split": {"seed": data_seed}}
            prepare_dataset(Config.from_dict({"data": data}).to_dict()["data"], Path(folder))
            posts = {n: load_split(Path(folder), n) for n in ("train", "validation", "test")}
        results[str(data_seed)] = {
            mode: run(mode, posts, options) for mode in ("truncate", "windows")
        }
        print(json.dumps({data_seed: results[str(data_seed)]}, indent=1), file=sys.stderr)
    output = {
        "command": "python bench/windows_quality.py " + " ".join(sys.argv[1:]),
        "environment": env,
        "model": options.model,
        "max_length": options.max_length,
        "posts": options.posts,
        "epochs": options.epochs,
        "results": results,
    }
    text = json.dumps(output, indent=2)
    print(text)
    (REPO / "bench" / "results" / "windows_quality.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
