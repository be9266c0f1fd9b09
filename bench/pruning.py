"""Each study.pruner against none on the same study: epochs trained, wall time, best score.

    .venv/bin/python bench/pruning.py [--model tiny|minilm] [--trials 16] [--epochs 4]
        [--posts 200] [--seed 42] [--only NAME ...]

Runs one real study per pruner, in-process (trial jobs called one after another, as Snakemake
would run them, without each job's ~9 s of imports), in its own temporary folder: the tiny model
(random weights) or MiniLM (`--model minilm`) on 200 short sample posts (`--posts`) (first 128 tokens), the
default search space (heads, losses, optimiser; augmentation left out), the same seed (`--seed`,
42), the pruners' default options (threshold: lower 0.15; patience: 1 epoch). Prints and writes,
per pruner: epochs trained, wall seconds, the best completed trial's validation score, and the
ratios against `none`. The issue's goal: a pruner that trains at least 40% fewer epochs with a
best score within 0.02 of none.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import benchenv
import yaml

from leanhpo.config import deep_merge, validate_config
from leanhpo.data import prepare_dataset
from leanhpo.study.create import create_study
from leanhpo.trial.job import run_trial_job
from leanhpo.workflow import SEARCH_ENV

REPO = Path(__file__).resolve().parents[1]
PRUNERS: dict[str, dict[str, Any]] = {
    "none": {},
    "median": {},
    "percentile": {},
    "successive_halving": {},
    "hyperband": {},
    "threshold": {"lower": 0.15},
    "patience": {"patience": 1},  # pruner none wrapped in patience: plain early stopping
}
GOAL_FEWER_EPOCHS = 0.40
GOAL_SCORE_GAP = 0.02


def config_for(args: argparse.Namespace, root: Path, name: str) -> dict[str, Any]:
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    pruner = "none" if name == "patience" else name
    overlay = {
        "study": {
            "name": "bench",
            "n_trials": args.trials,
            "seed": args.seed,
            "storage": f"sqlite:///{root}/optuna.db",
            "pruner": pruner,
            "pruner_options": PRUNERS[name],
        },
        "tracking": {"uri": f"sqlite:///{root}/mlflow.db"},
        "data": {"sample_posts": args.posts, "sample_profile": "short"},
        "model": {"id": args.model, "max_length": 128, "long_posts": "truncate"},
        "train": {"epochs": args.epochs, "batch_size": 8, "device": "cpu"},
        "search_space": {"augmentation_prob": None, "augmentation_methods": None},
    }
    return validate_config(deep_merge(base, overlay))


def run_study(args: argparse.Namespace, name: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir="/work") as tmp:
        root = Path(tmp)
        config = config_for(args, root, name)
        study_dir = root / "experiments" / "bench"
        prepare_dataset(config["data"], study_dir / "data")
        create_study({k: config[k] for k in ("study", "tracking")}, study_dir / "study.json")
        started = time.monotonic()
        reports = []
        for slot in range(args.trials):
            report_path = study_dir / f"trial_{slot:04d}" / "report.json"
            reports.append(
                run_trial_job(
                    slot, config, study_dir / "study.json", study_dir / "data", report_path
                )
            )
        wall = time.monotonic() - started
    completed = [r for r in reports if r["status"] == "completed"]
    best = max(completed, key=lambda r: r["best_validation_score"] or -1.0, default=None)
    return {
        "pruner": name,
        "options": PRUNERS[name],
        "epochs_trained": sum(len(r["history"]) for r in reports),
        "pruned": sum(r["status"] == "pruned" for r in reports),
        "pruned_at": [
            (r["slot"], r["pruning"]["pruned_at_epoch"]) for r in reports if r["status"] == "pruned"
        ],
        "wall_s": round(wall, 1),
        "best_validation_score": best["best_validation_score"] if best else None,
        "best_slot": best["slot"] if best else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model", default="tiny", help="tiny (random BERT) or minilm")
    parser.add_argument("--posts", type=int, default=200, help="sample posts (short profile)")
    parser.add_argument("--only", nargs="*", default=list(PRUNERS), choices=list(PRUNERS))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    env = benchenv.environment()
    os.environ.pop(SEARCH_ENV, None)  # no Snakemake driver: each job reads its own study keys
    names = ["none", *(name for name in args.only if name != "none")]  # the baseline first
    rows = [run_study(args, name) for name in names]
    baseline = rows[0]
    for row in rows:
        row["epochs_ratio"] = round(row["epochs_trained"] / baseline["epochs_trained"], 3)
        row["wall_ratio"] = round(row["wall_s"] / baseline["wall_s"], 3)
        gap = (
            None
            if row["best_validation_score"] is None
            else round(baseline["best_validation_score"] - row["best_validation_score"], 4)
        )
        row["score_gap"] = gap
        row["meets_goal"] = bool(
            gap is not None
            and row["epochs_ratio"] <= 1 - GOAL_FEWER_EPOCHS
            and gap <= GOAL_SCORE_GAP
        )
    print(
        f"{args.trials} trials x {args.epochs} epochs, model {args.model}, "
        f"{args.posts} posts, seed {args.seed}"
    )
    print(
        f"{'pruner':20} {'epochs':>7} {'ratio':>6} {'wall s':>7} {'ratio':>6} {'best':>7} {'gap':>7}  goal"
    )
    for r in rows:
        best = "n/a" if r["best_validation_score"] is None else f"{r['best_validation_score']:.4f}"
        gap = "n/a" if r["score_gap"] is None else f"{r['score_gap']:+.4f}"
        print(
            f"{r['pruner']:20} {r['epochs_trained']:7d} {r['epochs_ratio']:6.2f} "
            f"{r['wall_s']:7.1f} {r['wall_ratio']:6.2f} {best:>7} {gap:>7}  "
            f"{'met' if r['meets_goal'] else '-'}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    env["load_average_end"] = os.getloadavg()
    result = {
        **vars(args),
        "out": benchenv.relative_path(args.out),
        "environment": env,
        "rows": rows,
    }
    name = "pruning.json" if args.model == "tiny" else f"pruning_{args.model}.json"
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
