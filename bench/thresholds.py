"""What tuned decision thresholds (`model.decision_threshold: auto`) change on the test split,
against one threshold of 0.5 for every symptom, for the same trained network.

    .venv/bin/python bench/thresholds.py [--sample-posts 800] [--epochs 3] [--max-length 128]
        [--seeds 42] [--threads 2] [--out bench/results/thresholds.json]

The decision rule does not change training (the criteria loss reads probabilities, not
decisions), so one training run per seed serves both rules: config.yaml's model and train
values with MiniLM, `long_posts: truncate` at `--max-length` and fp32 on the CPU, on the bundled
sample (`--sample-posts` posts split 80/10/10 by config.yaml's split). After every epoch the
validation and test splits are scored (`leanhpo.training.evaluation.evaluate`) and each rule is
applied as a trial and the study's test evaluation apply it:

- fixed: every symptom decided at 0.5; the epoch is selected on validation macro-F1 at 0.5;
- auto: per symptom the F1-maximising cut on this epoch's validation pass
  (`resolve_decision_thresholds`, the trial's own code); the epoch is selected on validation
  macro-F1 under those cuts, which is optimistic (chosen on the posts it is scored on); the
  test split is decided with the selected epoch's validation cuts, never tuned on test.

Also printed, as a reference only and never a valid estimate: the test macro-F1 under cuts
tuned on test itself (what the best per-symptom cuts could give). Writes
bench/results/thresholds.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import benchenv
import numpy as np
import torch
import yaml

from leanhpo.config import Config, deep_merge
from leanhpo.data import load_split, prepare_dataset
from leanhpo.metric_names import SYMPTOMS
from leanhpo.training.answer_length import resolve_answer_tokens
from leanhpo.training.evaluation import Evaluation, evaluate, resolve_decision_thresholds
from leanhpo.training.metrics import criteria_metrics
from leanhpo.training.setup import build_network, build_optimisation, encode
from leanhpo.trial.epoch import train_epoch
from leanhpo.trial.memory import replay_config

REPO = Path(__file__).resolve().parents[1]
METRIC = "f1_macro"


def make_config(args: argparse.Namespace, decision: str | float) -> Config:
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    overrides = {
        "data": {"source": "sample", "sample_posts": args.sample_posts},
        "model": {
            "id": "minilm",
            "max_length": args.max_length,
            "long_posts": "truncate",
            "decision_threshold": decision,
        },
        "train": {"epochs": args.epochs, "device": "cpu", "amp": False},
    }
    return Config.from_dict(deep_merge(base, overrides))


def scores(evaluation: Evaluation, thresholds: np.ndarray) -> dict[str, Any]:
    metrics = criteria_metrics(evaluation.labels, evaluation.probabilities, thresholds)
    return {
        "f1_macro": metrics["f1_macro"],
        "precision_macro": metrics["precision_macro"],
        "recall_macro": metrics["recall_macro"],
        "f1_micro": metrics["f1_micro"],
    }


def one_seed(
    args: argparse.Namespace, posts: dict[str, list[dict[str, Any]]], seed: int
) -> dict[str, Any]:
    fixed_cfg, auto_cfg = make_config(args, 0.5), make_config(args, "auto")
    network = build_network(fixed_cfg, seed)
    fixed_cfg = resolve_answer_tokens(fixed_cfg, network.tokenizer, posts["train"])  # as a trial
    splits = {name: encode(network, fixed_cfg, p) for name, p in posts.items()}
    optimisation = build_optimisation(network, fixed_cfg, splits["train"])
    # auto rows per pass, resolved as a trial resolves them
    fixed_cfg = replay_config(network, optimisation, fixed_cfg, splits["train"], None)
    epochs = []
    for epoch in range(1, args.epochs + 1):
        train_epoch(network, optimisation, fixed_cfg, seed, epoch, splits["train"], "train")
        passes = {
            name: evaluate(
                network.model,
                splits[name],
                fixed_cfg.model,
                fixed_cfg.train,
                network.device,
                network.pad_token_id,
                optimisation.class_weights,
            )
            for name in ("validation", "test")
        }
        fixed = resolve_decision_thresholds(fixed_cfg.model, passes["validation"])
        tuned = resolve_decision_thresholds(auto_cfg.model, passes["validation"])
        on_test = resolve_decision_thresholds(auto_cfg.model, passes["test"])
        row = {
            "epoch": epoch,
            "thresholds_auto": dict(zip(SYMPTOMS, map(float, tuned), strict=True)),
            "fixed": {
                "validation": scores(passes["validation"], fixed),
                "test": scores(passes["test"], fixed),
            },
            "auto": {
                "validation": scores(passes["validation"], tuned),
                "test": scores(passes["test"], tuned),
            },
            "test_cuts_tuned_on_test_reference_only": scores(passes["test"], on_test),
        }
        epochs.append(row)
        print(
            f"seed {seed} epoch {epoch}: val F1 0.5 {row['fixed']['validation'][METRIC]:.3f} "
            f"auto {row['auto']['validation'][METRIC]:.3f} | test F1 0.5 "
            f"{row['fixed']['test'][METRIC]:.3f} auto {row['auto']['test'][METRIC]:.3f} "
            f"(cuts tuned on test {row['test_cuts_tuned_on_test_reference_only'][METRIC]:.3f})",
            flush=True,
        )
    selected = {}
    for rule in ("fixed", "auto"):
        best = max(epochs, key=lambda r: (r[rule]["validation"][METRIC], -r["epoch"]))
        selected[rule] = {"epoch": best["epoch"], **best[rule]}
    return {"seed": seed, "epochs": epochs, "selected": selected}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample-posts", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "thresholds.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    env = benchenv.environment()
    with tempfile.TemporaryDirectory(prefix="leanhpo-bench-thresholds-") as name:
        data_dir = Path(name) / "data"
        prepare_dataset(make_config(args, 0.5).to_dict()["data"], data_dir)
        posts = {name: load_split(data_dir, name) for name in ("train", "validation", "test")}
    sizes = {split: len(posts[split]) for split in ("validation", "test")}
    runs = [one_seed(args, posts, seed) for seed in args.seeds]
    env["load_average_end"] = os.getloadavg()
    mean = {
        rule: {
            split: float(np.mean([r["selected"][rule][split][METRIC] for r in runs]))
            for split in ("validation", "test")
        }
        for rule in ("fixed", "auto")
    }
    result = {
        "environment": env,
        "settings": vars(args) | {"out": benchenv.relative_path(args.out), "posts": sizes},
        "runs": runs,
        "mean_selected_f1_macro": mean,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nvalidation / test posts: {sizes['validation']} / {sizes['test']}")
    print("| rule | seed | selected epoch | val macro-F1 | test macro-F1 | test P / R (macro) |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        for rule in ("fixed", "auto"):
            s = run["selected"][rule]
            print(
                f"| {rule} | {run['seed']} | {s['epoch']} | {s['validation'][METRIC]:.3f} | "
                f"{s['test'][METRIC]:.3f} | {s['test']['precision_macro']:.3f} / "
                f"{s['test']['recall_macro']:.3f} |"
            )
    print(f"mean over seeds: {json.dumps(mean)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
