"""What the per-trial design costs: one MiniLM trial as a Snakemake job of the real workflow
against the same training in a bare loop, plus import time, start-up, bookkeeping and the time
from a kill -9 to the resumed trial's first optimizer step.

    .venv/bin/python bench/overhead.py [--sample-posts 600] [--epochs 3] [--max-length 64]
        [--batch-size 16] [--cores 2] [--kill-after 2] [--out bench/results/overhead.json]

In a temporary folder next to the repository, config.yaml plus an overlay (model minilm, device
cpu, long_posts truncate, SQLite Optuna and MLflow in the folder, an empty search space so every
slot trains config.yaml's train values, i.e. the same network) runs as `snakemake --cores 2` of
the repository's Snakefile, with the environment `make all` gives it (PYTHONDONTWRITEBYTECODE=1,
MLflow telemetry off). The defaults train about 65 s on this 2-core machine (the issue's 60 s
trial); the whole bench takes about 11 min.

1. setup: `snakemake <data_report.json> <study.json>` (prepare_dataset, create_study), untimed.
2. job: `snakemake experiments/bench/trial_0000/report.json`. The trial job's python process is
   found with psutil (polled every 10 ms); its wall time is process creation to exit. The
   trial's logs/trial.jsonl timestamps split it: process start -> first log record (interpreter,
   Snakemake's script preamble, imports), -> first `epoch_start` (config, Optuna, MLflow, data,
   model load, tokenising, baselines), the epochs, and the last `epoch_end` -> exit (Optuna
   tell, MLflow close, retention, report: the bookkeeping).
3. bare: the same resolved config (read back from the trial's state.json) trained in this
   process: build_network, encode, build_optimisation, then per epoch the trial's own
   leanhpo.trial.epoch.train_and_validate (train, validate, thresholds); no Optuna, MLflow,
   checkpoints or reports. Imports are not timed (a resident process pays them once). Its
   per-epoch validation metric is compared with the trial's to show it is the same training.
4. kill: slot 1 (same params) starts; 2 s after its epoch-2 `epoch_start` the whole Snakemake
   process group gets SIGKILL; then `snakemake --rerun-incomplete` of the same target, timed from
   its Popen to the resumed trial's first `epoch_start` (the resumed epoch; the first optimizer
   step follows it), and run to the end.
5. bare again, so each side ran twice in alternation; the ratio uses the mean bare wall.
6. imports: `python -X importtime -c "import leanhpo.trial.job"` once (self time summed per
   top-level package, and the cumulative time of each package's first import), the plain
   wall of that import and of `python -c pass`, best of 3, and the interpreter's exit: the time
   from a script's last line to its process's end, after that import alone and holding MiniLM
   with AdamW state (what the job's bookkeeping ends with), best of 3.

Prints a table and writes bench/results/overhead.json. The machine's load average is recorded
at each phase: other processes on the cores slow both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import benchenv
import psutil
import torch
import yaml

from leanhpo.config import Config
from leanhpo.data import load_split
from leanhpo.training.answer_length import resolve_answer_tokens
from leanhpo.training.setup import build_network, build_optimisation, encode
from leanhpo.trial.epoch import train_and_validate
from leanhpo.trial.memory import trained_config

REPO = Path(__file__).resolve().parents[1]
PYTHON = Path(sys.executable)
SNAKEMAKE = PYTHON.parent / "snakemake"
STUDY = "experiments/bench"
POLL_S = 0.01
SEED = 42


def load() -> float:
    return round(os.getloadavg()[0], 2)


def overlay(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    # An empty search space: every slot trains config.yaml's train values, the same network.
    space: dict[str, Any] = dict.fromkeys(base["search_space"])
    return {
        "study": {
            "name": "bench",
            "n_trials": 4,
            "seed": SEED,
            "storage": f"sqlite:///{root}/optuna.db",
        },
        "tracking": {"uri": f"sqlite:///{root}/mlflow.db"},
        "data": {"source": "sample", "sample_posts": args.sample_posts},
        "model": {"id": "minilm", "max_length": args.max_length, "long_posts": "truncate"},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "device": "cpu"},
        "search_space": space,
    }


def job_env() -> dict[str, str]:
    """The environment `make all` gives Snakemake (see the Makefile's exports)."""
    env = dict(os.environ)
    env["PATH"] = f"{PYTHON.parent}:{env['PATH']}"
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", PYTHONDONTWRITEBYTECODE="1")
    env.setdefault("NLTK_DATA", str(REPO / ".nltk_data"))
    env.pop("TQDM_DISABLE", None)  # the job runs as a user's would
    return env


def fail(root: Path, message: str) -> None:
    logs = sorted(root.glob("snakemake-*.log"))
    tail = logs[-1].read_text()[-3000:] if logs else ""
    raise SystemExit(f"{message}\n{tail}")


def snakemake(
    root: Path, cores: int, *targets: str, rerun: bool = False, preload: bool = True
) -> subprocess.Popen:
    command = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(root)]
    command += ["--configfile", str(REPO / "config.yaml"), str(root / "overlay.yaml")]
    if not preload:
        command.append(str(root / "no_preload.yaml"))
    command += ["--cores", str(cores), *(["--rerun-incomplete"] if rerun else []), *targets]
    log = (root / f"snakemake-{time.time_ns()}.log").open("w")
    return subprocess.Popen(
        command, env=job_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


class JobWatcher(threading.Thread):
    """Finds the trial jobs' python processes under Snakemake (one after another: sequential
    slots) and records each one's start and exit."""

    def __init__(self, snakemake_pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(snakemake_pid)
        self.jobs: list[dict[str, float]] = []  # {"pid", "started", "exited"} in start order

    @property
    def started(self) -> float | None:
        return self.jobs[0]["started"] if self.jobs else None

    @property
    def exited(self) -> float | None:
        return self.jobs[0].get("exited") if self.jobs else None

    def _find(self, seen: set[int]) -> psutil.Process | None:
        try:
            children = self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        for child in children:
            try:
                line = child.cmdline()
            except psutil.Error:
                continue
            if child.pid in seen or not line or "python" not in Path(line[0]).name:
                continue
            if any("run_trial" in a for a in line):
                return child
        return None

    def _alive(self) -> bool:
        try:
            return self.root.is_running() and self.root.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def run(self) -> None:
        seen: set[int] = set()
        while self._alive():
            job = self._find(seen)
            if job is None:
                time.sleep(POLL_S)
                continue
            seen.add(job.pid)
            record = {"pid": job.pid, "started": job.create_time()}
            self.jobs.append(record)
            while True:
                try:
                    if job.status() == psutil.STATUS_ZOMBIE:
                        break
                except psutil.NoSuchProcess:
                    break
                time.sleep(POLL_S)
            record["exited"] = time.time()


def events(path: Path) -> list[dict[str, Any]]:
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        record["t"] = datetime.fromisoformat(record["timestamp"]).timestamp()
        rows.append(record)
    return rows


def kind(record: dict[str, Any]) -> str | None:
    return (record.get("context") or {}).get("kind")


def run_jobs(root: Path, cores: int, slots: list[int], preload: bool) -> list[dict[str, Any]]:
    """Run trial slots (consecutive, in one Snakemake invocation: one preloaded worker serves
    them all) as Snakemake jobs; each job's process wall and its log's phases."""
    target = f"{STUDY}/trial_{slots[-1]:04d}/report.json"
    t0 = time.time()
    process = snakemake(root, cores, target, preload=preload)
    watcher = JobWatcher(process.pid)
    watcher.start()
    rc = process.wait()
    t_end = time.time()
    watcher.join(5)
    if rc != 0 or len(watcher.jobs) != len(slots) or "exited" not in watcher.jobs[-1]:
        fail(root, f"snakemake for slots {slots} failed (rc {rc})")
    results = []
    for slot, job in zip(slots, watcher.jobs, strict=True):
        log = events(root / STUDY / f"trial_{slot:04d}" / "logs" / "trial.jsonl")
        threads = [r for r in log if kind(r) == "threads"]
        results.append(
            {
                "slot": slot,
                "preloaded": bool(threads and threads[-1]["context"].get("preloaded")),
                "snakemake_wall_s": t_end - t0,
                **phases(log, job["started"], job["exited"], t0),
            }
        )
    return results


def phases(log: list[dict[str, Any]], started: float, exited: float, t0: float) -> dict[str, Any]:
    starts = [r for r in log if kind(r) == "epoch_start"]
    ends = [r for r in log if kind(r) == "epoch_end"]
    epochs = [
        {"epoch": s["context"]["epoch"], "seconds": e["t"] - s["t"], "value": e["context"]["value"]}
        for s, e in zip(starts, ends, strict=False)
    ]
    return {
        "snakemake_to_job_start_s": started - t0,
        "job_wall_s": exited - started,
        "start_to_first_log_s": log[0]["t"] - started,
        "first_log_to_first_epoch_start_s": starts[0]["t"] - log[0]["t"],
        "start_to_first_epoch_start_s": starts[0]["t"] - started,
        "epochs": epochs,
        "epochs_s": ends[-1]["t"] - starts[0]["t"],
        "bookkeeping_s": exited - ends[-1]["t"],
        "timeline": [
            {"t_s": round(r["t"] - started, 3), "kind": kind(r), "message": r["message"][:90]}
            for r in log
        ],
    }


def bare(root: Path, config: Config, threads: int) -> dict[str, Any]:
    """The same training, in this process: no Optuna, MLflow, checkpoints or reports."""
    torch.set_num_threads(threads)
    data_dir = root / STUDY / "data"
    train_posts, val_posts = load_split(data_dir, "train"), load_split(data_dir, "validation")
    metric = "val_criteria_f1_macro"
    t0 = time.perf_counter()
    network = build_network(config, SEED)
    config = resolve_answer_tokens(config, network.tokenizer, train_posts)  # as run_training
    t_model = time.perf_counter()
    train_split = encode(network, config, train_posts)
    val_split = encode(network, config, val_posts)
    optimisation = build_optimisation(network, config, train_split)
    t_ready = time.perf_counter()
    epochs = []
    for epoch in range(1, config.train.epochs + 1):
        t_epoch = time.perf_counter()
        # The trial's own epoch (train, validate, thresholds), without what run_training adds.
        metrics = train_and_validate(
            network, optimisation, config, SEED, epoch, train_split, val_split
        )
        epochs.append(
            {
                "epoch": epoch,
                "seconds": time.perf_counter() - t_epoch,
                "steps": optimisation.steps_per_epoch,
                "train_loss": metrics["train_loss"],
                "value": metrics[metric],
            }
        )
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "model_load_s": t_model - t0,
        "encode_and_optimiser_s": t_ready - t_model,
        "epochs": epochs,
        "epochs_s": sum(e["seconds"] for e in epochs),
        "threads": torch.get_num_threads(),
        "load_average": load(),
    }


def wait_for(path: Path, epoch: int | None, after: float, timeout: float) -> float | None:
    """Timestamp of the first epoch_start (of `epoch`, or of any epoch) logged after `after`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for record in events(path):
            wanted = epoch is None or record["context"].get("epoch") == epoch
            if kind(record) == "epoch_start" and record["t"] > after and wanted:
                return float(record["t"])
        time.sleep(0.05)
    return None


def kill_and_resume(root: Path, cores: int, slot: int, kill_after: float) -> dict[str, Any]:
    target = f"{STUDY}/trial_{slot:04d}/report.json"
    log_path = root / STUDY / f"trial_{slot:04d}" / "logs" / "trial.jsonl"
    first = snakemake(root, cores, target)
    t_start = time.time()
    in_epoch_2 = wait_for(log_path, 2, t_start, timeout=900)
    if in_epoch_2 is None:
        os.killpg(first.pid, signal.SIGKILL)
        raise SystemExit("slot 1 never reached epoch 2")
    time.sleep(kill_after)
    os.killpg(first.pid, signal.SIGKILL)
    t_kill = time.time()
    first.wait()
    t0 = time.time()
    rerun = snakemake(root, cores, target, rerun=True)
    watcher = JobWatcher(rerun.pid)
    watcher.start()
    resumed = wait_for(log_path, None, t0, timeout=900)
    rc = rerun.wait()
    watcher.join(5)
    if resumed is None or rc != 0 or watcher.started is None or watcher.exited is None:
        fail(root, f"the resumed run failed (rc {rc})")
    log = [r for r in events(log_path) if r["t"] >= watcher.started]
    resume = [r for r in log if kind(r) == "resume"]
    return {
        "killed_s_into_epoch_2": t_kill - in_epoch_2,
        "rerun_to_first_step_s": resumed - t0,
        "rerun_to_job_start_s": watcher.started - t0,
        "job_start_to_resume_event_s": resume[0]["t"] - watcher.started if resume else None,
        "resumed_from_epoch": resume[0]["context"].get("epoch") if resume else None,
        "job_start_to_first_step_s": resumed - watcher.started,
        "resumed_job": phases(log, watcher.started, watcher.exited, t0),
        "load_average": load(),
    }


IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")
NAMED = ("transformers", "mlflow", "torch", "optuna", "sklearn", "scipy", "sympy", "pandas", "nltk")
NAMED += ("textattack",)
# The model a finished trial holds when it exits: MiniLM with AdamW state after one step.
WITH_MODEL = """
import torch, leanhpo.trial.job
from leanhpo.models.encoder import load_encoder
model = load_encoder("minilm", "main")[0]
optimizer = torch.optim.AdamW(model.parameters())
model(input_ids=torch.ones(2, 16, dtype=torch.long)).last_hidden_state.sum().backward()
optimizer.step()
"""


def parse_importtime(stderr: str) -> dict[str, Any]:
    """Self time summed per top-level package; the cumulative time of each package's first
    (outermost) import; the job module's direct imports by cumulative time."""
    self_by_root: dict[str, float] = defaultdict(float)
    first_cumulative: dict[str, float] = {}
    direct: dict[str, float] = {}
    for match in IMPORT_LINE.finditer(stderr):
        own, cumulative, depth, name = int(match[1]), int(match[2]), len(match[3]), match[4]
        root = name.split(".")[0]
        self_by_root[root] += own / 1e6
        first_cumulative[root] = max(first_cumulative.get(root, 0.0), cumulative / 1e6)
        if depth == 3:  # "import leanhpo.trial.job" lists leanhpo, leanhpo.trial at depth 1-2
            direct[name] = cumulative / 1e6
    top_self = sorted(self_by_root.items(), key=lambda kv: -kv[1])[:15]
    return {
        "importtime_total_s": round(first_cumulative.get("leanhpo", 0.0), 3),
        "self_seconds_by_package": {k: round(v, 3) for k, v in top_self},
        "cumulative_seconds_of_first_import": {
            k: round(first_cumulative.get(k, 0.0), 3) for k in NAMED
        },
        "job_direct_imports_cumulative_s": dict(
            sorted(((k, round(v, 3)) for k, v in direct.items()), key=lambda kv: -kv[1])[:10]
        ),
        "textattack_imported": "textattack" in self_by_root,
    }


def imports(repeats: int = 3) -> dict[str, Any]:
    run = subprocess.run(
        [str(PYTHON), "-X", "importtime", "-c", "import leanhpo.trial.job"],
        capture_output=True,
        text=True,
        check=True,
        env=job_env(),
    )

    def best(code: str) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([str(PYTHON), "-c", code], check=True, env=job_env())
            times.append(time.perf_counter() - t0)
        return min(times)

    def teardown(code: str) -> float:
        """Seconds from the script's last line to the process's exit, best of `repeats`."""
        times = []
        for _ in range(repeats):
            script = f"{code}\nimport time\nprint(time.time(), flush=True)"
            out = subprocess.run(
                [str(PYTHON), "-c", script],
                capture_output=True,
                text=True,
                check=True,
                env=job_env(),
            )
            times.append(time.time() - float(out.stdout.split()[-1]))
        return min(times)

    return {
        "import_wall_s": best("import leanhpo.trial.job"),
        "python_startup_s": best("pass"),
        "teardown_after_import_s": teardown("import leanhpo.trial.job"),
        "teardown_with_minilm_and_adamw_s": teardown(WITH_MODEL),
        **parse_importtime(run.stderr),
        "load_average": load(),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sample-posts", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores; bare threads")
    parser.add_argument("--kill-after", type=float, default=2.0, help="s into epoch 2")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "overhead.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    result: dict[str, Any] = {
        "environment": benchenv.environment(),
        "settings": vars(args) | {"out": benchenv.relative_path(args.out)},
    }
    tmp = tempfile.mkdtemp(prefix="leanhpo-bench-overhead-", dir=REPO.parent)
    root = Path(tmp)
    try:
        (root / "overlay.yaml").write_text(yaml.safe_dump(overlay(args, root)))
        (root / "no_preload.yaml").write_text(yaml.safe_dump({"resources": {"preload": False}}))
        setup = snakemake(root, args.cores, f"{STUDY}/data/data_report.json", f"{STUDY}/study.json")
        if setup.wait() != 0:
            fail(root, "setup failed")
        print(f"[load {load()}] trial job without the preloaded worker (slot 0) ...", flush=True)
        (fresh,) = run_jobs(root, args.cores, [0], preload=False)
        fresh["load_average"] = load()
        state = json.loads((root / STUDY / "trial_0000" / "state.json").read_text())
        config = Config.from_dict(state["config"])
        if config.train.max_batch_rows == "auto":  # the rows per pass the trial resolved
            config = trained_config(config, state["memory"]["rows_per_pass"])
        print(f"[load {load()}] bare loop 1 ...", flush=True)
        bare_runs = [bare(root, config, args.cores)]
        print(f"[load {load()}] slots 1 and 2 in one run, preloaded worker on ...", flush=True)
        cold, warm = run_jobs(root, args.cores, [1, 2], preload=True)
        warm["load_average"] = load()
        print(f"[load {load()}] bare loop 2 ...", flush=True)
        bare_runs.append(bare(root, config, args.cores))
        print(
            f"[load {load()}] kill -9 in epoch 2 of slot 3, then --rerun-incomplete ...", flush=True
        )
        kill = kill_and_resume(root, args.cores, 3, args.kill_after)
        print(f"[load {load()}] imports ...", flush=True)
        result["imports"] = imports()
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", tmp], check=False)
    bare_wall = sum(b["wall_s"] for b in bare_runs) / len(bare_runs)
    bare_epochs = sum(b["epochs_s"] for b in bare_runs) / len(bare_runs)
    result.update(
        {
            "job": warm,
            "job_first_of_run": cold,
            "job_without_preload": fresh,
            "bare": bare_runs,
            "kill": kill,
            "same_training": {
                "trial_values": [e["value"] for e in warm["epochs"]],
                "trial_values_without_preload": [e["value"] for e in fresh["epochs"]],
                "bare_values": [e["value"] for e in bare_runs[0]["epochs"]],
            },
            "ratios": {
                "job_wall_over_bare": warm["job_wall_s"] / bare_wall,
                "job_epochs_over_bare_epochs": warm["epochs_s"] / bare_epochs,
                "first_job_of_run_wall_over_bare": cold["job_wall_s"] / bare_wall,
                "job_without_preload_wall_over_bare": fresh["job_wall_s"] / bare_wall,
            },
        }
    )
    result["environment"]["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # The jobs' messages name the temporary folder ("working folder /...").
    args.out.write_text(benchenv.hide_folder(json.dumps(result, indent=2), root) + "\n")
    print_table(result, bare_wall, bare_epochs)
    print(f"wrote {args.out}")


def print_table(result: dict[str, Any], bare_wall: float, bare_epochs: float) -> None:
    job, kill, imp, ratios = result["job"], result["kill"], result["imports"], result["ratios"]
    fresh, cold = result["job_without_preload"], result["job_first_of_run"]
    rows = [
        ("bare loop wall (mean of 2; model load + encode + epochs)", bare_wall, None),
        (
            "trial job wall, preloaded worker warm (slot 2)",
            job["job_wall_s"],
            ratios["job_wall_over_bare"],
        ),
        (
            "trial job wall, first of its run: waits for the worker's imports (slot 1)",
            cold["job_wall_s"],
            ratios["first_job_of_run_wall_over_bare"],
        ),
        (
            "trial job wall, resources.preload false (slot 0)",
            fresh["job_wall_s"],
            ratios["job_without_preload_wall_over_bare"],
        ),
        (
            "  without preload: job start -> first epoch_start",
            fresh["start_to_first_epoch_start_s"],
            None,
        ),
        ("  without preload: bookkeeping", fresh["bookkeeping_s"], None),
        ("warm job (slot 2):", 0.0, None),
        ("  snakemake start -> job process start", job["snakemake_to_job_start_s"], None),
        ("  job start -> first log record (python, imports)", job["start_to_first_log_s"], None),
        ("  first log -> first epoch_start", job["first_log_to_first_epoch_start_s"], None),
        ("  job start -> first epoch_start", job["start_to_first_epoch_start_s"], None),
        ("  epochs (first epoch_start -> last epoch_end)", job["epochs_s"], None),
        ("  bare epochs (train + evaluate)", bare_epochs, ratios["job_epochs_over_bare_epochs"]),
        ("  bookkeeping (last epoch_end -> job exit)", job["bookkeeping_s"], None),
        ("import leanhpo.trial.job (best of 3)", imp["import_wall_s"], None),
        ("python -c pass (best of 3)", imp["python_startup_s"], None),
        ("interpreter exit after the import (best of 3)", imp["teardown_after_import_s"], None),
        ("  ... holding MiniLM + AdamW state", imp["teardown_with_minilm_and_adamw_s"], None),
        (
            "kill -9 -> rerun: rerun start -> resumed epoch_start",
            kill["rerun_to_first_step_s"],
            None,
        ),
        ("  rerun start -> job process start", kill["rerun_to_job_start_s"], None),
        ("  job start -> resumed epoch_start", kill["job_start_to_first_step_s"], None),
        ("  resumed job bookkeeping", kill["resumed_job"]["bookkeeping_s"], None),
    ]
    print("| measure | seconds | ratio vs bare |\n|---|---|---|")
    for name, seconds, ratio in rows:
        print(f"| {name} | {seconds:.2f} | {'' if ratio is None else f'{ratio:.3f}x'} |")
    print("\nimport self time by package (s):", imp["self_seconds_by_package"])
    print("cumulative s of each package's first import:", imp["cumulative_seconds_of_first_import"])
    print(
        "leanhpo.trial.job's direct imports, cumulative s:", imp["job_direct_imports_cumulative_s"]
    )
    print("\ntrial job timeline (s after process start):")
    for row in job["timeline"]:
        print(f"  {row['t_s']:8.2f}  {row['kind'] or '-':<16} {row['message']}")
    print("same training, val metric per epoch: trial", result["same_training"]["trial_values"])
    print("                                      bare ", result["same_training"]["bare_values"])


if __name__ == "__main__":
    main()
