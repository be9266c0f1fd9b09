"""Peak and final checkpoint bytes on disk over a long study: full checkpoints against
weights-only retention, and both against keeping every checkpoint.

    .venv/bin/python bench/study_storage.py [--trials 40] [--epochs 3] [--out bench/results]

Runs the same real study in-process twice (tiny model, sample data, default retention:
keep_last_n 1, keep_best_k 1, keep_best_trials 3; same seeds), first with
`retention.weights_only: false`, then true, each in a temporary folder. It samples the bytes of
every checkpoint folder of the study every 50 ms and prints, after 5, 10, 20 and 40 trials, the
peak and the final bytes of each run and what keep-all would hold (every checkpoint ever
written); writes a JSON file. The tiny model's weights are 31% of its full checkpoint, MiniLM's
33% (AdamW keeps two moments per weight), so the ratios carry over.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import benchenv

from leanhpo.config import validate_config
from leanhpo.data import prepare_dataset
from leanhpo.study.create import create_study
from leanhpo.study.pressure import checkpoint_folder_bytes
from leanhpo.trial.job import run_trial_job

SAMPLE_S = 0.05


def config_for(root: Path, epochs: int, retention: dict) -> dict:
    return validate_config(
        {
            "study": {"name": "bench", "storage": f"sqlite:///{root}/optuna.db", "seed": 1},
            "tracking": {"uri": f"sqlite:///{root}/mlflow.db"},
            "data": {
                "sample_posts": 60,
                "split": {"train": 0.6, "validation": 0.2, "test": 0.2, "seed": 1},
            },
            "model": {"id": "tiny", "max_length": 128},
            "train": {"epochs": epochs, "batch_size": 8, "device": "cpu"},
            "retention": retention,
            "search_space": {
                "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
                "head_learning_rate": None,
            },
        }
    )


class Sampler(threading.Thread):
    def __init__(self, study_dir: Path) -> None:
        super().__init__(daemon=True)
        self.study_dir, self.peak, self.stop = study_dir, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            try:
                self.peak = max(self.peak, checkpoint_folder_bytes(self.study_dir))
            except FileNotFoundError:  # a folder vanished while we summed it
                continue


def run_study(args: argparse.Namespace, weights_only: bool) -> dict:
    retention = {
        "keep_best_trials": args.keep_best_trials,
        "keep_last_n": args.keep_last_n,
        "weights_only": weights_only,
    }
    with tempfile.TemporaryDirectory(dir="/work") as tmp:
        root = Path(tmp)
        config = config_for(root, args.epochs, retention)
        study_dir = root / "experiments" / "bench"
        prepare_dataset(config["data"], study_dir / "data")
        create_study({k: config[k] for k in ("study", "tracking")}, study_dir / "study.json")
        sampler = Sampler(study_dir)
        sampler.start()
        written, rows = 0, []
        started = time.monotonic()
        for slot in range(args.trials):
            report = run_trial_job(
                slot,
                config,
                study_dir / "study.json",
                study_dir / "data",
                study_dir / f"trial_{slot:04d}" / "report.json",
            )
            written += report["storage"]["bytes_written"]
            if slot + 1 in (5, 10, 20, 40, args.trials):
                rows.append(
                    {
                        "trials": slot + 1,
                        "peak_bytes": sampler.peak,
                        "keep_all_bytes": written,
                        "on_disk_bytes": checkpoint_folder_bytes(study_dir),
                        "reduction": 1 - sampler.peak / written,
                    }
                )
        sampler.stop.set()
        one = report["storage"]["bytes_written"] // len(report["history"])
    return {"seconds": time.monotonic() - started, "checkpoint_bytes": one, "curve": rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--keep-best-trials", type=int, default=3)
    parser.add_argument("--keep-last-n", type=int, default=1)
    args = parser.parse_args()
    env = benchenv.environment()
    # The same study (same seeds) with full checkpoints kept, then with weights-only retention.
    before, after = run_study(args, weights_only=False), run_study(args, weights_only=True)
    result = {
        "environment": env,
        "trials": args.trials,
        "epochs": args.epochs,
        "full": before,
        "weights_only": after,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study_storage.json").write_text(json.dumps(result, indent=2))
    print(f"one full checkpoint: {before['checkpoint_bytes'] / 1e6:.1f} MB")
    print(
        f"{'trials':>6} {'keep-all MB':>12} {'peak full':>10} {'peak w-only':>12} {'peak -%':>8}"
        f" {'final full':>11} {'final w-only':>13} {'final -%':>9}"
    )
    for full, lean in zip(before["curve"], after["curve"], strict=True):
        print(
            f"{full['trials']:>6} {full['keep_all_bytes'] / 1e6:>12.1f}"
            f" {full['peak_bytes'] / 1e6:>10.1f} {lean['peak_bytes'] / 1e6:>12.1f}"
            f" {100 * (1 - lean['peak_bytes'] / full['peak_bytes']):>7.1f}%"
            f" {full['on_disk_bytes'] / 1e6:>11.1f} {lean['on_disk_bytes'] / 1e6:>13.1f}"
            f" {100 * (1 - lean['on_disk_bytes'] / full['on_disk_bytes']):>8.1f}%"
        )


if __name__ == "__main__":
    main()
