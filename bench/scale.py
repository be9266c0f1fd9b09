"""Wall time of one tiny study run each way (issue 9, docs/scale.md): one trial at a time on
all cores (the baseline), two parallel trial jobs on the same cores, and through a one-node
SLURM cluster (started here with the test fixture's code; skipped if it cannot run).

    .venv/bin/python bench/scale.py [--trials 4] [--epochs 2] [--no-slurm]

Prints JSON with seconds and the ratio to the baseline measured in the same run, and writes it
to bench/results/scale.json. Each mode starts from an empty working folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchenv
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tests' Snakefile command and SLURM fixture code
from workflowhelper import job_env, snakemake_command  # noqa: E402


def run_study(workdir: Path, overlay: dict, *args: str, env: dict | None = None) -> float:
    (workdir / "bench.yaml").write_text(yaml.safe_dump(overlay))
    command = [*snakemake_command(workdir, workdir / "bench.yaml"), *args]
    environment = job_env({**os.environ, **(env or {})})
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-slurm", action="store_true")
    options = parser.parse_args()
    env = benchenv.environment()
    cores = str(os.cpu_count() or 1)
    base = {"study": {"n_trials": options.trials}, "train": {"epochs": options.epochs}}
    parallel = {**base, "study": {**base["study"], "parallel": True}}
    modes = {
        f"sequential, --cores {cores}": (base, ("--cores", cores)),
        f"parallel, --cores {cores} --jobs 2": (parallel, ("--cores", cores, "--jobs", "2")),
    }
    results: dict[str, float] = {}
    for name, (overlay, args) in modes.items():
        with tempfile.TemporaryDirectory() as folder:
            results[name] = run_study(Path(folder), overlay, *args)
            print(f"{name}: {results[name]:.1f} s", file=sys.stderr)
    if not options.no_slurm:
        from services.slurm import one_node_cluster

        started = time.monotonic()
        with one_node_cluster() as cluster, tempfile.TemporaryDirectory() as folder:
            results["SLURM cluster start"] = time.monotonic() - started
            name = "SLURM profile, one trial at a time, --cores 1"
            results[name] = run_study(
                Path(folder),
                base,
                "--workflow-profile", str(REPO / "profiles/slurm"),
                "--cores", "1", "--slurm-init-seconds-before-status-checks", "2",
                "--latency-wait", "5",
                env=cluster.env,
            )  # fmt: skip
            print(f"{name}: {results[name]:.1f} s", file=sys.stderr)
    baseline = next(iter(results.values()))
    report = {
        "command": "python bench/scale.py " + " ".join(sys.argv[1:]),
        "environment": env,
        "trials": options.trials,
        "epochs": options.epochs,
        "cores": int(cores),
        "seconds": {k: round(v, 1) for k, v in results.items()},
        "ratio_to_sequential": {
            k: round(v / baseline, 2) for k, v in results.items() if "cluster start" not in k
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    (REPO / "bench" / "results" / "scale.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
