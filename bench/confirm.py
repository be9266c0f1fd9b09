"""study.confirm on the demo: how far one configuration's seeds spread against how far the
configurations of a study spread, and what confirming costs against the search.

    .venv/bin/python bench/confirm.py [--trials 12] [--top-k 3] [--seeds 3] [--cores 2]

Runs the real workflow (Snakefile, config.yaml: the demo's MiniLM on 400 sample posts split by
author, 4 epochs, trial 1 enqueued) in a temporary folder with an overlay: `--trials` trial
slots, then study.confirm {top_k, seeds}. Every run of a configuration differs only by its
training seed (initialisation, data order, dropout): the trial has study.seed, seed k
study.seed + k. Reported:

- ``between_configurations``: the validation score (study.metric) of the search's trials: std
  and range;
- ``within_configuration``: for each confirmed configuration, its runs' (trial + seeds) mean,
  std and range, and the mean of those stds: the seed spread;
- ``cost``: wall seconds of the search's trial jobs against the confirm runs' (all, and those of
  seeds 1..2 only: the cost of top_k 3 x seeds 2, the real-data overlay's setting);
- the winner, whether it is the single best trial, and its test macro-F1 per run.

Prints JSON and writes ``bench/results/confirm.json`` (paths relative to the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import benchenv
import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "confirm.json"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"  # the venv's, beside this python


def spread(values: list[float]) -> dict[str, float | None]:
    return {
        "n": len(values),
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
    }


def run_study(workdir: Path, trials: int, top_k: int, seeds: int, cores: int) -> float:
    overlay = workdir / "bench.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "study": {
                    "name": "confirm_bench",
                    "n_trials": trials,
                    "confirm": {"top_k": top_k, "seeds": seeds},
                },
                "retention": {"keep_best_trials": max(3, top_k)},
            }
        )
    )
    command = [
        str(SNAKEMAKE),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(REPO / "config.yaml"),
        str(overlay),
        "--cores",
        str(cores),
    ]
    env = {**os.environ, "PATH": f"{SNAKEMAKE.parent}:{os.environ['PATH']}"}
    started = time.monotonic()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def wall(report: dict[str, Any]) -> float:
    return float(report["timings"]["wall_seconds_last_run"])


def summarise(study_dir: Path, seeds_for_cost: int) -> dict[str, Any]:
    def read(path: Path) -> dict[str, Any]:
        return json.loads(path.read_text())

    trials = [read(p) for p in sorted(study_dir.glob("trial_[0-9][0-9][0-9][0-9]/report.json"))]
    runs = [read(p) for p in sorted(study_dir.glob("confirm_trial_*/report.json"))]
    study = read(study_dir / "study_report.json")
    block = study["confirm"]
    scores = [t["best_validation_score"] for t in trials if t["best_validation_score"] is not None]
    within = {
        c["trial"]: {
            **spread(
                [r["validation_score"] for r in c["runs"] if r["validation_score"] is not None]
            ),
            "search_score": c["runs"][0]["validation_score"],
            "extra_seeds_mean": c["extra_seeds_mean"],
        }
        for c in block["configurations"]
    }
    stds = [w["std"] for w in within.values() if w["std"] is not None]
    search_s = sum(wall(t) for t in trials)
    confirm_s = sum(wall(r) for r in runs)
    partial_s = sum(wall(r) for r in runs if r["confirm"]["seed_index"] <= seeds_for_cost)
    return {
        "between_configurations": spread(scores),
        "within_configuration": within,
        "mean_seed_std": statistics.fmean(stds) if stds else None,
        "seed_std_over_config_std": (
            statistics.fmean(stds) / statistics.stdev(scores) if stds and len(scores) > 1 else None
        ),
        "cost": {
            "search_trial_seconds": round(search_s, 1),
            "confirm_run_seconds": round(confirm_s, 1),
            "confirm_over_search": round(confirm_s / search_s, 3),
            f"confirm_seeds_1_to_{seeds_for_cost}_seconds": round(partial_s, 1),
            f"confirm_seeds_1_to_{seeds_for_cost}_over_search": round(partial_s / search_s, 3),
        },
        "winner": study["best_trial"],
        "winner_slot": block["winner_slot"],
        "single_best_slot": block["single_best_slot"],
        "winner_differs_from_single_best": block["winner_differs_from_single_best"],
        "winner_test_per_seed": block["winner_test_per_seed"],
        "exported_test_f1_macro": study["test_metrics"]["criteria_matching"]["f1_macro"],
        "exported_test_f1_macro_ci": (study.get("test_metrics_ci") or {})
        .get("criteria_matching", {})
        .get("f1_macro"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--cost-seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--summarise",
        type=Path,
        help="only summarise a finished bench study folder (experiments/confirm_bench)",
    )
    args = parser.parse_args()
    if args.summarise:
        print(json.dumps(summarise(args.summarise, args.cost_seeds), indent=2))
        return
    with tempfile.TemporaryDirectory(prefix="leanhpo-confirm-") as folder:
        workdir = Path(folder)
        seconds = run_study(workdir, args.trials, args.top_k, args.seeds, args.cores)
        result = {
            "command": "bench/confirm.py "
            + f"--trials {args.trials} --top-k {args.top_k} --seeds {args.seeds}",
            "settings": {"trials": args.trials, "top_k": args.top_k, "seeds": args.seeds},
            "workflow_seconds": round(seconds, 1),
            **summarise(workdir / "experiments" / "confirm_bench", args.cost_seeds),
            "environment": benchenv.environment({"when": datetime.now(UTC).isoformat()}),
        }
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
